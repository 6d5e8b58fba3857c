"""Quick server numbers: throughput and latency vs raw ONNX Runtime, stream chunk latency by
position, and memory per open sequence. Not a test; prints a table (and ``--json``).

    python -m rnnserve.bench.server_quick [--repository DIR --model NAME] [--seconds 5]

- Raw ORT: the same SST-2 dev sentences, tokenized the same way, run directly through an
  ORT session (server's session options) at batch sizes 1..64 in arrival order; the best
  texts/s is the reference. Batch-1 latency is the reference for concurrency 1.
- Server: ``python -m rnnserve.server`` in a child process (optionally pinned with
  ``--server-cpus``); a closed-loop grpc.aio client in this process keeps ``c`` single-text
  Classify calls in flight (requests pre-serialized). Client and server share the machine.
- Streams: one StreamClassify stream, one chunk in flight at a time; latency of chunks
  around position 10 vs around position 1000 (state is carried, so they should match).
- Sequences: open N streams that each send one chunk and stay open; the server's RSS growth
  per open sequence, next to the state bytes (pool slot) and the engine's Python overhead
  per sequence (tracemalloc of SequenceStore.open).

Repository: ``--repository``, else the newest repository under ``runs/``, else a serving-size
LSTM trained briefly on SST-2 (cached under ``.cache/server_quick``; see
``build_fallback_model``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from rnnserve.bench.data import SST2_DIR

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = SST2_DIR / "dev.tsv"
SST2_TRAIN = SST2_DIR / "train.tsv"


# -- inputs ---------------------------------------------------------------------------------


def find_repository(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    candidates = sorted((p.parent.parent for p in (ROOT / "runs").glob("**/config.pbtxt")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    if candidates:
        return candidates[0]
    cache = ROOT / ".cache" / "server_quick"
    repo = cache / "repository"
    if not any(repo.glob("*/config.pbtxt")):
        build_fallback_model(cache, repo)
    return repo


def build_fallback_model(cache: Path, repo: Path) -> None:
    """A serving-size LSTM (embed 128, hidden 256, 1 layer: the trainer's defaults) trained
    for one epoch on 4000 SST-2 training sentences -- quality is irrelevant here, shapes
    are what cost time; without SST-2, the tiny synthetic model of the test fixtures."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.trainer import TrainConfig, train

    cache.mkdir(parents=True, exist_ok=True)
    if SST2_TRAIN.exists():
        lines = SST2_TRAIN.read_text(encoding="utf-8").splitlines()
        data = cache / "sst2-4000.tsv"
        data.write_text("\n".join(lines[:4001]) + "\n", encoding="utf-8")
        config = TrainConfig(cell="lstm", data=str(data), out=cache / "ckpt", epochs=1,
                             vocab_size=8000, seed=0, progress=False,
                             **PLAIN_TRAINING)
        name = "sst2-lstm"
    else:
        from rnnserve.train.synthetic import write_synthetic_dataset

        data = write_synthetic_dataset(cache / "tiny.tsv", n=600, seed=0)
        config = TrainConfig(cell="lstm", data=str(data), out=cache / "ckpt", embed_dim=16,
                             hidden=24, layers=2, epochs=3, batch_size=32, vocab_size=400,
                             seed=0, progress=False, **PLAIN_TRAINING)
        name = "tiny-lstm"
    export_checkpoint(train(config).checkpoint_dir, repository=repo, name=name)


def load_texts(limit: int) -> list[str]:
    if SST2_DEV.exists():
        header, *lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
        names = header.split("\t")
        column = next(names.index(n) for n in ("sentence", "content", "text") if n in names)
        texts = [line.split("\t")[column] for line in lines if line.strip()]
    else:
        rng = np.random.default_rng(0)
        words = ["good", "bad", "movie", "plot", "the", "a", "fun", "boring", "great", "awful"]
        texts = [" ".join(rng.choice(words, int(rng.integers(3, 40)))) for _ in range(800)]
    return texts[:limit]


def parse_cpus(text: str) -> set[int]:
    """``"1"``, ``"0,2"``, ``"2-3"`` -> CPU numbers (taskset's list syntax)."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- raw ONNX Runtime -----------------------------------------------------------------------


def raw_ort(model_dir: Path, texts: list[str], seconds: float) -> dict:
    import onnxruntime as ort
    from rnnserve.server.runtime import session_options
    from rnnserve.server.settings import ServerSettings
    from rnnserve.server.tokenize import TextEncoder

    from rnnserve.repository import RepositoryMetadata

    meta = RepositoryMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                   sess_options=session_options(ServerSettings()),
                                   providers=["CPUExecutionProvider"])
    encoder = TextEncoder(model_dir / "tokenizer.json", vocab_size=meta.vocab_size)
    rows = [ids if ids.size else np.ones(1, np.int64) for ids in encoder.encode(texts)]
    state_shape = meta.state_shape

    def run(batch: list[np.ndarray]) -> None:
        width = max(r.size for r in batch)
        ids = np.full((len(batch), width), meta.pad_id, dtype=np.int64)
        for i, r in enumerate(batch):
            ids[i, : r.size] = r
        feeds = {"input_ids": ids, "lengths": np.array([r.size for r in batch], np.int64)}
        for name in meta.state_names:
            feeds[name] = np.zeros((len(batch), *state_shape), np.float32)
        session.run(["logits"], feeds)

    result = {"texts_per_s": {}, "batch1_latency_ms": {}}
    for size in (1, 8, 16, 32, 64):
        done = 0
        latencies = []
        started = time.perf_counter()
        index = 0
        while time.perf_counter() - started < seconds:
            batch = [rows[(index + k) % len(rows)] for k in range(size)]
            index += size
            t0 = time.perf_counter()
            run(batch)
            latencies.append(time.perf_counter() - t0)
            done += size
        result["texts_per_s"][size] = done / (time.perf_counter() - started)
        if size == 1:
            result["batch1_latency_ms"] = {"p50": percentile(latencies, 50) * 1e3,
                                           "p99": percentile(latencies, 99) * 1e3}
    best = max(result["texts_per_s"], key=result["texts_per_s"].get)
    result["best_batch"] = best
    result["best_texts_per_s"] = result["texts_per_s"][best]
    result["state_bytes_per_sequence"] = meta.state_bytes
    return result


# -- the server -----------------------------------------------------------------------------


def start_server(repository: Path, cpus: str | None, extra: dict[str, str]):
    env = dict(os.environ, RNNSERVE_REPOSITORY=str(repository), RNNSERVE_PORT="0",
               RNNSERVE_HOST="127.0.0.1", RNNSERVE_METRICS_PORT="-1",
               RNNSERVE_LOG_FORMAT="json", PYTHONUNBUFFERED="1", **extra)
    command = [sys.executable, "-m", "rnnserve.server"]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    for line in process.stdout:
        if '"event": "ready"' in line:
            return process, json.loads(line)["port"]
        if '"startup_failed"' in line:
            break
    process.kill()
    raise RuntimeError("server did not start")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def closed_loop(address: str, model: str, texts: list[str], concurrency: int,
                      seconds: float) -> dict:
    import grpc
    from rnnserve.protos import sentiment_pb2 as pb

    payloads = [pb.ClassifyRequest(texts=[t], model=model).SerializeToString() for t in texts]
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, concurrency // 32))]
    calls = [ch.unary_unary("/rnnserve.v1.Sentiment/Classify") for ch in channels]
    for call in calls:                                  # connect before timing
        await call(payloads[0])
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        k = index
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call(payloads[k % len(payloads)])
            latencies.append(time.perf_counter() - t0)
            k += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return {"texts_per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "requests": len(latencies)}


async def stream_positions(address: str, model: str, texts: list[str], chunks: int) -> dict:
    import grpc
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        call = stub.StreamClassify()
        latencies = []
        for index in range(chunks):
            words = texts[index % len(texts)].split()[:6] or ["good"]
            request = pb.StreamClassifyRequest(text=" ".join(words), model=model if index == 0
                                               else "", end=index == chunks - 1)
            t0 = time.perf_counter()
            await call.write(request)
            response = await call.read()
            latencies.append(time.perf_counter() - t0)
            assert response.chunk_index == index + 1
        await call.done_writing()
    near = lambda p: latencies[max(0, p - 6): p + 5]
    return {"chunk_ms_at_10": statistics.median(near(10)) * 1e3,
            "chunk_ms_at_1000": statistics.median(near(min(1000, chunks) - 5)) * 1e3,
            "total_tokens": response.total_tokens}


async def hold_sequences(address: str, model: str, count: int, pid: int) -> dict:
    import grpc
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 90))]
    stubs = [sentiment_pb2_grpc.SentimentStub(ch) for ch in channels]
    for stub in stubs:
        await stub.ListModels(pb.ListModelsRequest())
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    calls = []
    for index in range(count):
        call = stubs[index % len(stubs)].StreamClassify()
        await call.write(pb.StreamClassifyRequest(text="a good movie", model=model))
        calls.append(call)
    for call in calls:
        await call.read()
    await asyncio.sleep(0.5)
    after = rss_bytes(pid)
    for call in calls:                  # half-close: the server ends each sequence
        await call.done_writing()
    for call in calls:
        while await call.read() is not grpc.aio.EOF:
            pass
    for channel in channels:
        await channel.close()
    return {"open_sequences": count, "server_rss_growth_bytes": after - before,
            "server_rss_bytes_per_sequence": (after - before) / count}


def store_overhead(state_shape: tuple[int, int], state_count: int, count: int) -> float:
    """Python bytes per open sequence beyond its pool slot (object, dict entry, deque)."""
    from rnnserve.server.sequences import SequenceStore

    store = SequenceStore(capacity=count, state_count=state_count, state_shape=state_shape,
                          idle_seconds=60)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for index in range(count):
        store.open(index + 10**9)       # ints beyond the small-int cache, like real ids
    grown = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = grown.compare_to(base, "filename")
    return sum(s.size_diff for s in stats) / count


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository")
    parser.add_argument("--model", help="model name (default: the first in the repository)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--texts", type=int, default=872)
    parser.add_argument("--stream-chunks", type=int, default=1000)
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--server-cpus", help="pin the server (and the raw ORT run) to these "
                        "CPUs, e.g. 1; the client then runs on the other CPUs")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra server setting, e.g. --set max_queue_delay_us=200")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    repository = find_repository(args.repository)
    from rnnserve.repository import list_models, list_versions

    model = args.model or list_models(repository)[0]
    model_dir = repository / model / list_versions(repository / model)[-1]
    texts = load_texts(args.texts)
    print(f"repository {repository}  model {model}  texts {len(texts)}", flush=True)

    results: dict = {"model": model, "repository": str(repository),
                     "server_cpus": args.server_cpus, "load_average": os.getloadavg()}
    everything = os.sched_getaffinity(0)
    pinned = parse_cpus(args.server_cpus) if args.server_cpus else None
    if pinned:          # raw ORT runs on the server's CPUs, the client on the others
        os.sched_setaffinity(0, pinned)
    results["raw"] = raw = raw_ort(model_dir, texts, args.seconds / 2)
    if pinned:
        os.sched_setaffinity(0, (everything - pinned) or everything)
    extra = {f"RNNSERVE_{k.upper()}": v for k, v in (s.split("=", 1) for s in args.set)}
    process, port = start_server(repository, args.server_cpus, extra)
    address = f"127.0.0.1:{port}"

    async def client() -> None:       # one event loop for every gRPC phase
        results["server"] = {}
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            results["server"][concurrency] = await closed_loop(address, model, texts,
                                                               concurrency, args.seconds)
        await asyncio.sleep(1.0)        # let the previous phase's connections wind down
        results["stream"] = await stream_positions(address, model, texts, args.stream_chunks)
        results["sequences"] = await hold_sequences(address, model, args.sequences,
                                                    process.pid)

    try:
        asyncio.run(client())
    finally:
        process.terminate()
        process.wait(30)
    from rnnserve.repository import RepositoryMetadata

    meta = RepositoryMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    results["sequences"]["state_bytes_per_sequence"] = meta.state_bytes
    results["sequences"]["engine_overhead_bytes_per_sequence"] = store_overhead(
        meta.state_shape, len(meta.state_names), 10_000)

    best = raw["best_texts_per_s"]
    print(f"\nload average {results['load_average'][0]:.1f}; server CPUs "
          f"{args.server_cpus or 'all'}")
    print(f"raw ORT: best {best:,.0f} texts/s at batch {raw['best_batch']}; batch-1 p50 "
          f"{raw['batch1_latency_ms']['p50']:.3f} ms  "
          f"({', '.join(f'b{b}: {v:,.0f}' for b, v in raw['texts_per_s'].items())})")
    print(f"{'concurrency':>11} {'texts/s':>10} {'vs raw':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for concurrency, row in results["server"].items():
        print(f"{concurrency:>11} {row['texts_per_s']:>10,.0f} {row['texts_per_s'] / best:>7.1%}"
              f" {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}")
    stream = results["stream"]
    print(f"stream chunk latency: position 10 {stream['chunk_ms_at_10']:.3f} ms, position "
          f"{args.stream_chunks} {stream['chunk_ms_at_1000']:.3f} ms")
    seq = results["sequences"]
    print(f"open sequences {seq['open_sequences']}: state {seq['state_bytes_per_sequence']} "
          f"B/seq (pool slot), engine overhead "
          f"{seq['engine_overhead_bytes_per_sequence']:.0f} B/seq, server RSS growth "
          f"{seq['server_rss_bytes_per_sequence']:.0f} B/seq (incl. gRPC stream buffers)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
