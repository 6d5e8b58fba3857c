"""Server capacity with a C client: h2load against rnnserve at ``--workers`` 1..N and with
each ``--frontend``, beside the raw tokenize + ONNX Runtime limit on the same sentence, in
one run.

Why a C client: a Python gRPC client spends 150-450 µs of CPU per request, as much as the
server; h2load (Debian's ``nghttp2-client``) sends pre-framed gRPC requests for ~10 µs each,
so on a small machine the numbers are the server's, not the client's.

For every placement and every server setup (each ``--frontend`` at each ``--workers``;
``auto`` is what ``rnnserve serve`` picks by default: python at one worker, native above):

- ``pinned``: the server (all its processes) on the cores after the first, h2load on core 0;
  ``unpinned``: nobody pinned;
- the raw limit: one ORT session, 1 intra-op thread, the same sentence tokenized and run in
  batches of 1..128 on one core (best batch reported), i.e. what one core can do at best;
- rnnserve (``--intra-op-threads 1``): h2load at each concurrency on the text API's
  ``Classify`` with one sentence per request; req/s, and the server's CPU time per request
  (every process of the server, from /proc). With ``--chunks K`` each request is instead a
  ``StreamClassify`` stream of K chunks (the sentence each time, sent at once, the last
  with ``end``): a stateful sequence per request, reported in chunks/s and CPU per chunk;
- before measuring, a sample of answers is checked for ``grpc-status: 0`` with ``nghttp``
  (h2load counts HTTP statuses only, and gRPC errors travel in HTTP 200 trailers), and
  after the runs the server's own ``rnnserve_requests_total`` says how many requests
  ended other than OK (``non_ok``: must be 0).

``python -m rnnserve.bench.capacity --repository R --model M --out DIR`` (``--help``). Needs
``h2load`` and ``nghttp`` (``apt-get install nghttp2-client``; ``--install`` does it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rnnserve.bench.procs import ServerProcess, free_port, pinned
from rnnserve.bench.procstat import group_cpu_seconds

from rnnserve import repository as repo_contract

#: ~20 tokens, the length of a typical SST-2 sentence.
SENTENCE = ("a gripping , funny and moving film that rewards patience with a wonderful "
            "ending and fine performances .")
CLASSIFY_PATH = "/rnnserve.v1.Sentiment/Classify"
STREAM_PATH = "/rnnserve.v1.Sentiment/StreamClassify"
RAW_BATCHES = (1, 8, 16, 32, 64, 128)


def ensure_tools(install: bool) -> None:
    missing = [tool for tool in ("h2load", "nghttp") if shutil.which(tool) is None]
    if missing and install:
        subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=True,
                       stdout=subprocess.DEVNULL)
        missing = [tool for tool in ("h2load", "nghttp") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install nghttp2-client "
                         "(or pass --install)")


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def classify_request(model: str, sentence: str) -> bytes:
    from rnnserve.protos import sentiment_pb2 as pb

    return grpc_frame(pb.ClassifyRequest(texts=[sentence], model=model).SerializeToString())


def stream_request(model: str, sentence: str, chunks: int) -> bytes:
    """A whole ``StreamClassify`` request stream: ``chunks`` messages of ``sentence``, the
    first naming the model, the last ending the sequence."""
    from rnnserve.protos import sentiment_pb2 as pb

    return b"".join(grpc_frame(pb.StreamClassifyRequest(
        text=sentence, model=model if i == 0 else "", end=i == chunks - 1).SerializeToString())
        for i in range(chunks))


def raw_limit(repository: Path, model: str, sentence: str, seconds: float = 1.5) -> dict:
    """Tokenize + ORT on one core (this process; pin it), best over RAW_BATCHES."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    versions = repo_contract.list_versions(repo_contract.model_dir(repository, model))
    directory = repo_contract.version_dir(repository, model, versions[-1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(directory / repo_contract.ONNX_FILE), options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(directory / repo_contract.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    states = [i for i in session.get_inputs() if i.name.startswith("state_")]
    result = {}
    for batch in RAW_BATCHES:
        zeros = {s.name: np.zeros((batch, *s.shape[1:]), np.float32) for s in states}
        texts = [sentence] * batch
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            encoded = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            width = max(len(e.ids) for e in encoded)
            ids = np.zeros((batch, width), np.int64)
            lengths = np.empty(batch, np.int64)
            for row, encoding in enumerate(encoded):
                ids[row, :len(encoding.ids)] = encoding.ids
                lengths[row] = len(encoding.ids)
            session.run(["logits"], {"input_ids": ids, "lengths": lengths, **zeros})
            done += batch
        result[batch] = done / (time.perf_counter() - started)
    best = max(result, key=result.get)
    return {"per_batch": result, "best_batch": best, "sentences_per_s": result[best],
            "tokens": len(tokenizer.encode(sentence, add_special_tokens=False).ids)}


def h2load(port: int, data: Path, *, requests: int, concurrency: int,
           cpus: str | None, path: str = CLASSIFY_PATH) -> dict:
    """h2load posting the pre-framed request in ``data`` to ``path`` (at most 64
    connections, the rest as concurrent streams on them)."""
    connections = min(concurrency, 64)
    streams = max(1, concurrency // connections)
    argv = pinned(["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams),
                   "-d", str(data), "-H", "content-type: application/grpc", "-H",
                   "te: trailers", f"http://127.0.0.1:{port}{path}"], cpus)
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", output)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed", output)
    if not rate or not counts:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    seconds = float(rate.group(1)) / (1000 if rate.group(2) == "ms" else 1)
    return {"seconds": seconds, "req_s": float(rate.group(3)),
            "done": int(counts.group(2)), "http_ok": int(counts.group(3)),
            "http_failed": int(counts.group(4)), "connections": connections,
            "streams": streams}


def grpc_status_sample(port: int, data: Path, samples: int = 5,
                       path: str = CLASSIFY_PATH) -> list[str]:
    """``grpc-status`` of a few answers to the same pre-framed request (nghttp -v)."""
    statuses = []
    for _ in range(samples):
        output = subprocess.run(
            ["nghttp", "-v", "-d", str(data), "-H", "content-type: application/grpc",
             "-H", "te: trailers", f"http://127.0.0.1:{port}{path}"],
            capture_output=True, timeout=30, check=False).stdout.decode("latin-1")
        found = re.search(r"grpc-status: (\d+)", output)
        statuses.append(found.group(1) if found else "missing")
    return statuses


def server_argv(repository: Path, port: int, metrics_port: int, workers: int,
                device: str = "cpu", frontend: str = "python",
                instances: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "rnnserve.server", "--repository", str(repository),
            "--port", str(port), "--metrics-port", str(metrics_port), "--workers",
            str(workers), "--frontend", frontend, "--intra-op-threads", "1", "--device",
            device, "--log-format", "kv"]
    return argv + (["--instances", str(instances)] if instances else [])


def setups(frontends: str, workers: str) -> list[tuple[str, int]]:
    """(front-end, workers) pairs to measure, in order."""
    return [(frontend, count) for frontend in frontends.split(",")
            for count in (int(w) for w in workers.split(","))]


def non_ok_requests(metrics_port: int) -> int:
    """Requests the server answered with a status other than OK (its own counter)."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return int(sum(float(value) for value in re.findall(
        rb'^rnnserve_requests_total\{[^}]*code="(?!OK")[^}]*\} (\S+)$', body, re.MULTILINE)))


def measure_server(repository: Path, model: str, data: Path, *, workers: int,
                   concurrencies: list[int], requests: int, server_cpus: str | None,
                   client_cpus: str | None, out: Path, device: str = "cpu",
                   frontend: str = "python", instances: int | None = None,
                   path: str = CLASSIFY_PATH) -> dict:
    port, metrics_port = free_port(), free_port()
    name = f"rnnserve-{frontend}-w{workers}"
    server = ServerProcess(name, server_argv(repository, port, metrics_port, workers, device,
                                             frontend, instances),
                           out / f"{name}.log", port, cpus=server_cpus)
    rows = []
    with server.start([model]):
        time.sleep(1.0)
        statuses = grpc_status_sample(port, data, path=path)
        if any(status != "0" for status in statuses):
            raise RuntimeError(f"the benchmark request is not answered OK: {statuses}")
        h2load(port, data, requests=max(1000, requests // 10), concurrency=max(concurrencies),
               cpus=client_cpus, path=path)                        # warm-up
        for concurrency in concurrencies:
            cpu_before = group_cpu_seconds(server.pid)
            row = h2load(port, data, requests=requests, concurrency=concurrency,
                         cpus=client_cpus, path=path)
            cpu = group_cpu_seconds(server.pid) - cpu_before
            row.update(concurrency=concurrency, server_cpu_us_per_request=1e6 * cpu / row["done"])
            rows.append(row)
        non_ok = non_ok_requests(metrics_port)
    return {"frontend": frontend, "workers": workers, "grpc_status_sample": statuses,
            "non_ok": non_ok, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--frontend", default="python",
                        help="comma-separated front-ends: python, native, auto")
    parser.add_argument("--instances", type=int, default=None,
                        help="the server's --instances (ORT sessions; default: its own)")
    parser.add_argument("--placement", default="pinned,unpinned")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--requests", type=int,
                        default=int(os.environ.get("RNNSERVE_CAPACITY_REQUESTS", "30000")))
    parser.add_argument("--sentence", default=SENTENCE)
    parser.add_argument("--chunks", type=int, default=0,
                        help="measure StreamClassify: each request a stream of this many "
                             "chunks (default 0: unary Classify)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/capacity"))
    parser.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw req/s vs workers")
    parser.add_argument("--install", action="store_true", help="apt-get install h2load")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every setup this many times, in turn (this VM's speed "
                             "drifts between minutes: compare setups within a round)")
    args = parser.parse_args(argv)
    ensure_tools(args.install)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.chunks > 0:
        data, path = args.out / "stream.bin", STREAM_PATH
        data.write_bytes(stream_request(args.model, args.sentence, args.chunks))
    else:
        data, path = args.out / "classify.bin", CLASSIFY_PATH
        data.write_bytes(classify_request(args.model, args.sentence))
    cores = len(os.sched_getaffinity(0))
    results = {"model": args.model, "sentence": args.sentence, "cores": cores,
               "instances": args.instances, "chunks": args.chunks, "placements": {}}
    for placement in args.placement.split(","):
        client_cpus = "0" if placement == "pinned" else None
        server_cpus = (f"1-{cores - 1}" if cores > 2 else "1") if placement == "pinned" else None
        limit = _raw_limit_subprocess(args, "1" if placement == "pinned" else None)
        entry = {"raw_limit_one_core": limit, "servers": []}
        for round_ in range(1, args.rounds + 1):
            for frontend, workers in setups(args.frontend, args.workers):
                server = measure_server(
                    args.repository, args.model, data, workers=workers,
                    concurrencies=[int(c) for c in args.concurrency.split(",")],
                    requests=args.requests, server_cpus=server_cpus, client_cpus=client_cpus,
                    out=args.out, device=args.device, frontend=frontend,
                    instances=args.instances, path=path)
                entry["servers"].append({**server, "round": round_})
                print(json.dumps(entry["servers"][-1]), flush=True)
        results["placements"][placement] = entry
    (args.out / "capacity.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    if args.plot is not None:
        plot(results, args.plot)
    return 0


def plot(results: dict, path: Path) -> None:
    """req/s and server CPU µs per request against --workers, per placement and concurrency
    (the mean of the rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, cost) = plt.subplots(1, 2, figsize=(10, 4))
    per, unit = _unit(results)
    for placement, entry in results["placements"].items():
        concurrencies = sorted({run["concurrency"] for s in entry["servers"] for run in s["runs"]})
        frontends = list(dict.fromkeys(s.get("frontend", "python") for s in entry["servers"]))
        for frontend in frontends:
            for concurrency in concurrencies:
                by_workers: dict[int, list[dict]] = {}     # every round's run, averaged
                for server in entry["servers"]:
                    if server.get("frontend", "python") == frontend:
                        by_workers.setdefault(server["workers"], []).extend(
                            run for run in server["runs"] if run["concurrency"] == concurrency)
                workers = sorted(by_workers)
                label = f"{placement}, {frontend}, c={concurrency}"
                style = "o-" if frontend == "python" else "s--"
                rate.plot(workers, [np.mean([r["req_s"] * per for r in by_workers[w]])
                                    for w in workers], style, label=label)
                cost.plot(workers, [np.mean([r["server_cpu_us_per_request"] / per
                                             for r in by_workers[w]]) for w in workers],
                          style, label=label)
        rate.axhline(entry["raw_limit_one_core"]["sentences_per_s"], linestyle=":",
                     color="grey", label=f"raw tokenize+ORT, 1 core ({placement})")
    rate.set(xlabel="--workers", ylabel=f"{unit}s/s (h2load)",
             title="StreamClassify capacity" if results.get("chunks") else "Classify capacity")
    cost.set(xlabel="--workers", ylabel=f"server CPU µs / {unit}", title=f"Cost per {unit}")
    workers = sorted({s["workers"] for e in results["placements"].values() for s in e["servers"]})
    for axis in (rate, cost):
        axis.set_xticks(workers)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _raw_limit_subprocess(args, cpus: str | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run(pinned([sys.executable, "-m", "rnnserve.bench.capacity", "--raw-only",
                               str(args.repository), args.model, args.sentence, handle.name],
                              cpus), check=True)
        return json.loads(Path(handle.name).read_text())


def _unit(results: dict) -> tuple[int, str]:
    """Sentences per h2load request and what one is called: a request, or a stream chunk."""
    chunks = results.get("chunks") or 0
    return (chunks, "chunk") if chunks else (1, "request")


def report(results: dict) -> str:
    """Markdown table of a capacity run (per chunk with ``--chunks``)."""
    per, unit = _unit(results)
    header = (f"| placement | front-end | workers | concurrency | {unit}s/s | × first setup "
              f"| of raw limit (1 core) | server CPU µs/{unit} |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for placement, entry in results["placements"].items():
        limit = entry["raw_limit_one_core"]["sentences_per_s"]
        base = {}
        rounds = max(server.get("round", 1) for server in entry["servers"])
        for server in entry["servers"]:
            where = placement if rounds == 1 else f"{placement}, round {server['round']}"
            for run in server["runs"]:
                key = (server.get("round", 1), run["concurrency"])    # within one round
                rate = run["req_s"] * per
                base.setdefault(key, rate)
                lines.append(
                    f"| {where} | {server.get('frontend', 'python')} | {server['workers']} | "
                    f"{run['concurrency']} | "
                    f"{rate:,.0f} | {rate / base[key]:.2f} | {rate / limit:.2f} | "
                    f"{run['server_cpu_us_per_request'] / per:.0f} |")
        lines.append(f"| {placement} | raw limit | | best batch "
                     f"{entry['raw_limit_one_core']['best_batch']} | {limit:,.0f} | | 1.00 | |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-only":
        repository, model, sentence, out = sys.argv[2:6]
        Path(out).write_text(json.dumps(raw_limit(Path(repository), model, sentence)))
        sys.exit(0)
    sys.exit(main())
