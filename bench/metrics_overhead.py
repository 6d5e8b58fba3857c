"""What do metrics cost? Throughput at saturation with metrics on vs off, in the same run.

Two rnnserve processes serve the same repository: ``on`` (metrics enabled, its /metrics
scraped every ``--scrape-interval`` seconds, as Prometheus would) and ``off``
(``RNNSERVE_METRICS_PORT=-1``: telemetry without histograms, no endpoint; KServe statistics
still kept). Each measurement is a
closed-loop run of ``rnnserve.bench.loadgen`` at a saturating concurrency.

- ``--mode simultaneous`` (default): both servers are loaded at the same time, pinned to the
  same server core(s), so the scheduler alternates between them every few milliseconds and any
  noise (other tenants, frequency changes) hits both alike. With equal CPU shares the
  throughput ratio is the inverse of the CPU-cost ratio.
- ``--mode alternate``: one after the other, rounds ordered on/off, off/on, ...

Reported: on/off ratios of median throughput, of total requests over all rounds, and of the
server's CPU time per request::

    python -m rnnserve.bench.metrics_overhead --repository model_repository --model sst2-lstm \
        --concurrency 64 --duration 8 --rounds 4 --json runs/metrics_overhead.json

``--tiny`` trains and exports the test suite's tiny LSTM into a temp dir first (no data
needed). ``--hooks`` instead times the telemetry hooks alone, in this process (metrics on,
off, and in multiprocess mode).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Self

from rnnserve.bench.procs import PLACEMENTS, ServerProcess, free_port, run_module_json


def corpus_file(repository: Path, model: str, path: Path, limit: int = 512) -> Path:
    """Sentences (SST-2 dev if present, else generated) and their token counts."""
    from rnnserve.bench.data import load_sentences
    from tokenizers import Tokenizer

    from rnnserve.repository import TOKENIZER_FILE, list_versions

    sentences, _ = load_sentences(limit=limit)
    version = list_versions(repository / model)[-1]
    tokenizer = Tokenizer.from_file(str(repository / model / version / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokens = [max(1, len(e.ids)) for e in tokenizer.encode_batch(sentences,
                                                                 add_special_tokens=False)]
    path.write_text(json.dumps({"sentences": sentences, "tokens": tokens}), encoding="utf-8")
    return path


def tiny_repository(directory: Path) -> tuple[Path, str]:
    """The tests' tiny LSTM (trained on generated data in seconds), exported to ``directory``."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.synthetic import write_synthetic_dataset
    from rnnserve.train.trainer import TrainConfig, train

    data = write_synthetic_dataset(directory / "tiny.tsv", n=600, seed=0)
    config = TrainConfig(cell="lstm", data=str(data), out=directory / "ckpt", embed_dim=16,
                         hidden=24, layers=2, epochs=1, batch_size=32, vocab_size=400, seed=0,
                         progress=False, **PLAIN_TRAINING)
    checkpoint = train(config).checkpoint_dir
    export_checkpoint(checkpoint, repository=directory / "repository", name="tiny-lstm")
    return directory / "repository", "tiny-lstm"


class Scraper:
    """GET /metrics every ``interval`` seconds in a thread (what Prometheus costs the server);
    ``interval`` <= 0: never."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scraper")

    def _run(self) -> None:
        if self.interval <= 0:
            return
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.scrapes += 1
            except OSError:
                pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def start_server(name: str, repository: Path, model: str, work: Path, *, metrics: bool,
                 cpus: str | None, threads: int) -> tuple[ServerProcess, int | None]:
    port, metrics_port = free_port(), (free_port() if metrics else -1)
    env = dict(os.environ)
    env.update({"RNNSERVE_REPOSITORY": str(repository), "RNNSERVE_HOST": "127.0.0.1",
                "RNNSERVE_PORT": str(port), "RNNSERVE_METRICS_HOST": "127.0.0.1",
                "RNNSERVE_METRICS_PORT": str(metrics_port), "RNNSERVE_DEVICE": "cpu",
                "RNNSERVE_INTRA_OP_THREADS": str(threads), "RNNSERVE_LOG_LEVEL": "WARNING"})
    server = ServerProcess(name, [sys.executable, "-m", "rnnserve.cli", "serve"],
                           work / f"{name}.log", port, env=env, cpus=cpus)
    server.start([model])
    return server, (metrics_port if metrics else None)


def measure(args: argparse.Namespace, work: Path, log=print) -> dict:
    """``args.rounds`` rounds; each starts a fresh pair of servers (which one starts first
    alternates, so start order cannot favour one side), measures both, and stops them."""
    placement = PLACEMENTS[args.placement]
    corpus = corpus_file(args.repository, args.model, work / "corpus.json")
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    scrapes = 0
    for round_index in range(args.rounds):
        order = ("on", "off") if round_index % 2 == 0 else ("off", "on")
        servers: dict[str, ServerProcess] = {}
        try:
            metrics_port = None
            for which in order:
                # --aa: both servers without metrics, to measure the harness' own bias.
                metrics = which == "on" and not args.aa
                servers[which], port = start_server(
                    f"metrics-{which}-{round_index}", args.repository, args.model, work,
                    metrics=metrics, cpus=placement.server_cpus, threads=args.threads)
                metrics_port = port if metrics else metrics_port
            scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics",
                              args.scrape_interval if metrics_port else 0)
            with scraper:
                if args.mode == "simultaneous":
                    results = _parallel({which: (lambda s=servers[which], t=f"{which}-{round_index}":
                                                 _loadgen(args, s, corpus, work, placement, t))
                                         for which in order})
                else:
                    results = {which: _loadgen(args, servers[which], corpus, work, placement,
                                               f"{which}-{round_index}") for which in order}
            scrapes += scraper.scrapes
        finally:
            for server in servers.values():
                server.stop()
        for which in order:
            result = results[which]
            runs[which].append(result)
            log(f"[metrics-overhead] round {round_index} {which:>3}: "
                f"{result['throughput_rps']:8.1f} req/s, server "
                f"{result.get('server_cpu_us_per_request', float('nan')):7.1f} "
                f"CPU us/req, errors {result['errors']}")
    summary = summarize(runs, args, placement.describe())
    summary["scrapes_of_on"] = scrapes
    return summary


def _loadgen(args: argparse.Namespace, server: ServerProcess, corpus: Path, work: Path,
             placement, tag: str) -> dict:
    """One closed-loop loadgen run (its own process) against ``server``."""
    loadgen_args = ["--target", server.target, "--api", args.api, "--model", args.model,
                    "--tokens-json", str(corpus), "--concurrency", str(args.concurrency),
                    "--count", str(10**9), "--duration", str(args.duration),
                    "--warmup", str(args.concurrency * 4), "--server-pgid", str(server.pid)]
    (result,) = run_module_json("rnnserve.bench.loadgen", loadgen_args,
                                cpus=placement.client_cpus, out_json=work / f"loadgen-{tag}.json",
                                log_path=work / f"loadgen-{tag}.log",
                                timeout=args.duration * 3 + 120)
    return result


def _parallel(jobs: dict) -> dict:
    """Run the callables at the same time (threads around subprocesses); their results."""
    results: dict = {}
    errors: list[BaseException] = []

    def run(key, job) -> None:
        try:
            results[key] = job()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace, placement: str) -> dict:
    def median(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which] if key in r)

    paired = [a["throughput_rps"] / b["throughput_rps"]
              for a, b in zip(runs["on"], runs["off"], strict=True)]
    summary = {
        "model": args.model, "api": args.api, "concurrency": args.concurrency,
        "mode": args.mode, "scrape_interval_s": args.scrape_interval, "aa": args.aa,
        "duration_s": args.duration, "rounds": args.rounds, "placement": placement,
        "throughput_on_rps": median("on", "throughput_rps"),
        "throughput_off_rps": median("off", "throughput_rps"),
        "paired_ratios": paired,
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
        "runs": runs,
    }
    summary["throughput_ratio"] = summary["throughput_on_rps"] / summary["throughput_off_rps"]
    summary["requests_ratio_total"] = (sum(r["requests"] for r in runs["on"])
                                       / sum(r["requests"] for r in runs["off"]))
    try:
        summary["server_cpu_us_per_request_on"] = median("on", "server_cpu_us_per_request")
        summary["server_cpu_us_per_request_off"] = median("off", "server_cpu_us_per_request")
        summary["server_cpu_ratio"] = (summary["server_cpu_us_per_request_on"]
                                       / summary["server_cpu_us_per_request_off"])
    except statistics.StatisticsError:
        pass
    return summary


def hooks(repeat: int = 200_000) -> dict:
    """Nanoseconds per hook call (one request of one text, and one batch of 8 rows per 8
    requests) for: ``on`` (metrics enabled, in memory), ``off`` (metrics disabled: only what
    ModelStatistics needs) and ``multiprocess`` (enabled, values written to
    ``multiprocess_dir`` files as with ``serve --workers N``); plus one scrape's cost."""
    import grpc
    from rnnserve.server.telemetry import ServerTelemetry, prepare_multiprocess_dir

    result = {}
    with tempfile.TemporaryDirectory(prefix="rnnserve-hooks-") as tmp:
        directory = prepare_multiprocess_dir(Path(tmp))
        servers = {"on": ServerTelemetry(process_metrics=False),
                   "off": ServerTelemetry(enabled=False),
                   "multiprocess": ServerTelemetry(process_metrics=False,
                                                   multiprocess_dir=directory)}
        for label, server in servers.items():
            telemetry = server.model("m", "1")
            ok = grpc.StatusCode.OK
            waits = [0.001] * 8

            def request(t=telemetry, ok=ok) -> None:
                t.request_finished(api="text", kind="unary", code=ok, seconds=0.004, texts=1)

            def batch(t=telemetry, waits=waits) -> None:
                t.rows_executed(queue_seconds=waits, tokenize_seconds=0.0001,
                                input_seconds=0.0001, infer_seconds=0.002,
                                output_seconds=0.0001, batch_size=8, real_tokens=160,
                                padded_tokens=200)

            def pending(t=telemetry) -> None:   # the batcher: one admit + one release per text
                t.set_pending(1)

            per_request = min(timeit.repeat(request, number=repeat, repeat=3)) / repeat * 1e9
            per_batch = min(timeit.repeat(batch, number=repeat // 8, repeat=3)) \
                / (repeat // 8) * 1e9
            per_pending = min(timeit.repeat(pending, number=repeat, repeat=3)) / repeat * 1e9
            result[label] = {"request_finished_ns": per_request, "rows_executed_ns": per_batch,
                             "set_pending_ns": per_pending,
                             "per_request_ns": per_request + per_batch / 8 + 2 * per_pending}
        result["scrape_ms_one_model"] = _scrape_ms(servers["on"])
        result["scrape_ms_one_model_multiprocess"] = _scrape_ms(servers["multiprocess"])
    return result


def _scrape_ms(server, repeat: int = 50) -> float:
    """Milliseconds to render /metrics for one busy model (every series populated)."""
    import grpc

    telemetry = server.model("busy", "1")
    for i in range(2000):
        telemetry.request_finished(api=("text", "kserve")[i % 2], kind=("unary", "stream")[i % 3 % 2],
                                   code=grpc.StatusCode.OK, seconds=i / 20000, texts=1)
        telemetry.rows_executed(queue_seconds=[0.001] * 4, tokenize_seconds=0.0001,
                                input_seconds=0.0001, infer_seconds=0.001, output_seconds=0.0001,
                                batch_size=1 + i % 64, real_tokens=30, padded_tokens=40)
    return min(timeit.repeat(server.exposition, number=repeat, repeat=5)) / repeat * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default=None, help="model name (default: the first one)")
    parser.add_argument("--tiny", action="store_true",
                        help="train + export the tests' tiny LSTM into a temp dir and use it")
    parser.add_argument("--api", choices=("text", "kserve"), default="text")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs (alternating)")
    parser.add_argument("--placement", choices=sorted(PLACEMENTS), default="pinned")
    parser.add_argument("--mode", choices=("simultaneous", "alternate"), default="simultaneous",
                        help="simultaneous: both servers loaded at once, sharing the server "
                             "core(s), so noise hits both alike (default); alternate: one "
                             "after the other, on/off then off/on")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--scrape-interval", type=float, default=5.0,
                        help="seconds between scrapes of the 'on' server (deploy/prometheus "
                             "uses 5; 0 = never scraped)")
    parser.add_argument("--hooks", action="store_true", help="time the hooks only")
    parser.add_argument("--aa", action="store_true",
                        help="calibration: both servers without metrics (ratio should be ~1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.hooks:
        summary = hooks()
        for label in ("on", "off", "multiprocess"):
            print(f"[metrics-overhead] hooks {label:>12}: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in summary[label].items()))
        print(f"[metrics-overhead] one scrape of a busy model: "
              f"{summary['scrape_ms_one_model']:.2f} ms in memory, "
              f"{summary['scrape_ms_one_model_multiprocess']:.2f} ms from files")
    else:
        with tempfile.TemporaryDirectory(prefix="rnnserve-metrics-overhead-") as tmp:
            work = Path(tmp)
            if args.tiny:
                args.repository, args.model = tiny_repository(work)
            if args.model is None:
                from rnnserve.repository import list_models

                args.model = list_models(args.repository)[0]
            started = time.monotonic()
            summary = measure(args, work)
            summary["wall_s"] = time.monotonic() - started
        print(f"[metrics-overhead] {args.model} {args.api} c={args.concurrency} "
              f"({summary['placement']}): on {summary['throughput_on_rps']:.1f} req/s, "
              f"off {summary['throughput_off_rps']:.1f} req/s, "
              f"ratio on/off {summary['throughput_ratio']:.4f} (median), "
              f"{summary['requests_ratio_total']:.4f} (all rounds)"
              + (f", server CPU/request ratio {summary['server_cpu_ratio']:.4f}"
                 if "server_cpu_ratio" in summary else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
