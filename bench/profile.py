"""Where a server's time goes under load: py-spy sampling while the load generator runs.

py-spy is a tool, not a dependency: install it into a tools venv
(``python3 -m venv .cache/tools/pyspy && .cache/tools/pyspy/bin/pip install py-spy``) and
pass its path (default: that venv's ``py-spy``). Example, pinned like the suite::

    python -m rnnserve.bench.profile --repository R --model M --api text --concurrency 64 \
        --seconds 10 --out bench-profile

writes ``profile.txt`` (collapsed stacks, flamegraph input) and ``summary.json`` /
``summary.md``: the share of samples by leaf function, by source file and by coarse
category (ONNX Runtime, tokenizer, gRPC, asyncio, protobuf, rnnserve code).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from rnnserve.bench.procs import PLACEMENTS, ServerProcess, free_port, pinned, raise_priority
from rnnserve.bench.procstat import thread_cpu_delta, thread_cpu_seconds

DEFAULT_PYSPY = Path(__file__).resolve().parent.parent / ".cache" / "tools" / "pyspy" / "bin" / "py-spy"

#: Coarse buckets for a frame (first match wins, checked from the leaf upwards).
CATEGORIES = (
    ("onnxruntime", ("onnxruntime",)),
    ("tokenizer", ("tokenizers", "encode_batch", "tokenize.py")),
    ("protobuf", ("google/protobuf", "SerializeToString", "FromString", "_pb2")),
    ("grpc", ("grpc/",)),
    ("numpy", ("numpy/",)),
    ("rnnserve", ("rnnserve/", "/server/")),
    ("asyncio", ("asyncio/",)),
)


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """``frame;frame;...;leaf count`` lines -> (frames root..leaf, samples)."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize(stacks: list[tuple[list[str], int]], top: int = 25) -> dict:
    total = sum(c for _, c in stacks) or 1
    leaves: Counter[str] = Counter()
    files: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, count in stacks:
        leaf = frames[-1]
        leaves[leaf] += count
        start, end = leaf.find("("), leaf.rfind(":")
        files[leaf[start + 1 : end] if 0 <= start < end else leaf] += count
        cats[category(frames)] += count
        threads[frames[0]] += count

    def share(counter: Counter) -> list[dict]:
        return [{"name": k, "samples": v, "share": v / total} for k, v in counter.most_common(top)]

    return {"samples": total, "categories": share(cats), "leaf_functions": share(leaves),
            "files": share(files), "threads": share(threads)}


def summary_markdown(summary: dict, title: str) -> str:
    load = (summary.get("load") or [{}])[0]
    rps = load.get("throughput_rps")
    lines = [f"### {title}", "", (f"{summary['samples']} samples; load {rps or 0:.0f} req/s, "
             f"p50 {load.get('p50_ms', 0):.2f} ms"), ""]
    if summary.get("thread_cpu"):
        seconds = summary["profiled_seconds"]
        lines += ["| server thread | CPU share of a core | µs per request |", "|---|---|---|"]
        lines += [f"| {t['thread']} | {t['cpu_s'] / seconds:.0%} | "
                  f"{t['cpu_s'] / seconds / rps * 1e6 if rps else float('nan'):.0f} |"
                  for t in summary["thread_cpu"]]
        lines.append("")
    lines += ["| category (py-spy) | share |", "|---|---|"]
    lines += [f"| {c['name']} | {c['share']:.1%} |" for c in summary["categories"]]
    lines += ["", "| leaf function | share |", "|---|---|"]
    lines += [f"| `{c['name'][:110]}` | {c['share']:.1%} |" for c in summary["leaf_functions"][:15]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--api", choices=("text", "kserve"), default="text")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--placement", choices=tuple(PLACEMENTS), default="pinned")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--env", action="append", default=[], metavar="RNNSERVE_X=VALUE",
                        help="extra server environment (repeatable), e.g. "
                             "RNNSERVE_MAX_QUEUE_DELAY_US=0")
    parser.add_argument("--nice", type=int, default=None, help="run priority (see suite)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--pyspy", type=Path, default=DEFAULT_PYSPY)
    parser.add_argument("--out", type=Path, default=Path("bench-profile"))
    args = parser.parse_args(argv)

    from rnnserve.bench.data import load_sentences
    from rnnserve.bench.suite import select_models, write_corpus

    if args.nice is not None:
        raise_priority(args.nice)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    placement = PLACEMENTS[args.placement]
    (model,) = select_models(args.repository, [args.model])
    sentences, _ = load_sentences()
    corpus = out / "corpus.json"
    write_corpus(model, sentences, corpus)
    port = free_port()
    env = dict(os.environ, RNNSERVE_REPOSITORY=str(args.repository), RNNSERVE_HOST="127.0.0.1",
               RNNSERVE_PORT=str(port), RNNSERVE_METRICS_PORT="-1", RNNSERVE_DEVICE="cpu",
               RNNSERVE_INTRA_OP_THREADS=str(args.threads), RNNSERVE_LOG_LEVEL="WARNING")
    if args.max_batch_size:
        env["RNNSERVE_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    env.update(item.split("=", 1) for item in args.env)
    server = ServerProcess("rnnserve", [sys.executable, "-m", "rnnserve.cli", "serve"],
                           out / "server.log", port, env=env, cpus=placement.server_cpus)
    with server:
        server.start([args.model])
        load = subprocess.Popen(pinned([
            sys.executable, "-m", "rnnserve.bench.loadgen", "--target", server.target,
            "--api", args.api, "--model", args.model, "--tokens-json", str(corpus),
            "--concurrency", str(args.concurrency), "--count", "10000000",
            "--duration", str(args.seconds + 3), "--warmup", "0",
            "--server-pgid", str(server.pid), "--json", str(out / "load.json"),
        ], placement.client_cpus))
        time.sleep(1.5)
        threads_before = thread_cpu_seconds(server.pid)
        record = [str(args.pyspy), "record", "--pid", str(server.pid), "--duration",
                  str(int(args.seconds)), "--rate", "200", "--format", "raw", "--nonblocking",
                  "-o", str(out / "profile.txt")]
        if args.native:  # C frames too; --nonblocking cannot unwind native stacks
            record = [a for a in record if a != "--nonblocking"] + ["--native"]
        spy = subprocess.run(pinned(record, placement.client_cpus), capture_output=True,
                             text=True, check=False)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr[-2000:]}")
        threads = thread_cpu_delta(threads_before, thread_cpu_seconds(server.pid))
        load.wait(timeout=args.seconds + 120)
    summary = summarize(parse_collapsed((out / "profile.txt").read_text(encoding="utf-8")))
    summary["load"] = json.loads((out / "load.json").read_text(encoding="utf-8"))
    summary["thread_cpu"] = threads
    summary["profiled_seconds"] = args.seconds
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    title = f"{args.model} {args.api} c{args.concurrency} ({placement.describe()})"
    (out / "summary.md").write_text(summary_markdown(summary, title), encoding="utf-8")
    sys.stdout.write(summary_markdown(summary, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
