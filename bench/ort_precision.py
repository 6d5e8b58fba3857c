"""ORT CPU throughput of the exported graph per precision (fp32 vs int8, optionally fp16).

A read-only measurement: builds the serving graph of ``rnnserve.export.onnx_graph`` for an
LSTM and a GRU of the trainer's default size with random weights (throughput does not depend
on the values; no torch needed), converts it with ``rnnserve.export.precision``, and times
``session.run`` on padded batches of ``~T`` tokens (lengths uniform in ``[T-4, T+4]``).

Reported per (cell, precision, batch): serialized model size, p10/p50/p90 wall latency of
one call, rows/s = batch / p50, and the median process CPU time per call (``cpu ms``) with
``rows/cpu-s`` = batch / cpu ms. On a shared, oversubscribed machine wall times are
inflated by preemption; p10 and CPU time are the figures closest to an idle machine (with
one intra-op thread, CPU time is the uncontended latency). No asserts.

    python -m rnnserve.bench.ort_precision [--threads 2] [--tokens 20] [--batches 1,32]
        [--precisions fp32,int8] [--layers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

# The trainer's defaults (rnnserve.train.trainer.TrainConfig), repeated here so this
# script imports no torch; --embed/--hidden/--layers/--vocab override them.
DEFAULT_SHAPE = {"vocab": 16000, "embed": 128, "hidden": 256, "layers": 1}


def random_weights(spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from rnnserve.export.onnx_graph import expected_shapes

    scale = 1.0 / np.sqrt(spec.hidden)
    return {
        name: rng.uniform(-scale, scale, size=shape).astype(np.float32)
        for name, shape in expected_shapes(spec).items()
    }


def time_session(
    session, feed: dict, seconds: float, min_calls: int = 20
) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of each ``session.run`` call (after warm-up)."""
    for _ in range(5):
        session.run(None, feed)
    wall: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(wall) < min_calls:
        started, started_cpu = time.perf_counter(), time.process_time()
        session.run(None, feed)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def make_feed(spec, batch: int, tokens: int, rng: np.random.Generator) -> dict:
    lengths = rng.integers(max(1, tokens - 4), tokens + 5, size=batch).astype(np.int64)
    ids = np.zeros((batch, int(lengths.max())), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(2, spec.vocab_size, size=length)
    feed = {"input_ids": ids, "lengths": lengths}
    for state in spec.state_names:
        feed[state] = np.zeros((batch, spec.layers * spec.directions, spec.hidden), np.float32)
    return feed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--tokens", type=int, default=20, help="typical tokens per row (T)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per case")
    for key, value in DEFAULT_SHAPE.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from rnnserve.export.onnx_graph import build_onnx
    from rnnserve.export.precision import to_precision

    from rnnserve.architecture import Architecture

    rng = np.random.default_rng(0)
    results = []
    print(
        f"onnxruntime {ort.__version__} CPU, {args.threads} thread(s), T~{args.tokens}, "
        f"embed {args.embed}, hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}"
        f"{', bidirectional' if args.bidirectional else ''}"
    )
    print(
        f"{'cell':5} {'prec':5} {'MB':>7} {'batch':>5} {'p10 ms':>8} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'rows/s':>9} {'cpu ms':>8} {'rows/cpu-s':>10}"
    )
    for cell in args.cells.split(","):
        spec = Architecture(
            cell=cell,
            vocab_size=args.vocab,
            embed_dim=args.embed,
            hidden=args.hidden,
            layers=args.layers,
            bidirectional=args.bidirectional,
            num_labels=3,
            labels=["negative", "neutral", "positive"],
        )
        fp32 = build_onnx(spec, random_weights(spec, rng))
        for precision in args.precisions.split(","):
            model_bytes = to_precision(fp32, precision).SerializeToString()
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Spinning workers burn CPU while idle, which would inflate the CPU-time figure.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
            for batch in (int(b) for b in args.batches.split(",")):
                feed = make_feed(spec, batch, args.tokens, rng)
                wall, cpu = time_session(session, feed, args.seconds)
                p10, p50, p90 = np.percentile(wall, [10, 50, 90])
                cpu50 = float(np.median(cpu))
                row = {
                    "cell": cell, "precision": precision, "model_bytes": len(model_bytes),
                    "batch": batch, "tokens": args.tokens, "threads": args.threads,
                    "p10_ms": 1e3 * p10, "p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90,
                    "rows_per_s": batch / p50, "cpu_ms": 1e3 * cpu50,
                    "rows_per_cpu_s": batch / cpu50 if cpu50 > 0 else float("nan"),
                    "calls": len(wall),
                }  # fmt: skip
                results.append(row)
                print(
                    f"{cell:5} {precision:5} {len(model_bytes) / 1e6:7.2f} {batch:5d} "
                    f"{row['p10_ms']:8.3f} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} "
                    f"{row['rows_per_s']:9.0f} {row['cpu_ms']:8.3f} {row['rows_per_cpu_s']:10.0f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
