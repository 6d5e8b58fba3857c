"""Drive a KServe v2 server with NVIDIA perf_analyzer (C++ client: cheap per request).

perf_analyzer is installed by ``bench/perf_analyzer.sh --install-only`` (tritonclient 2.51.0
wheel + its libraries, under ``.cache/tools``) and run here directly; it needs the ModelConfig RPC (and statistics, if allowed), which rnnserve and
PyTriton have and MLServer has not. One perf_analyzer process per concurrency level, in
time windows with a bounded number of trials, under a hard timeout; the CSV it writes gives
throughput and p50/p90/p95/p99 client latency.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from pathlib import Path

from rnnserve.bench.procs import pinned
from rnnserve.bench.procstat import group_cpu_seconds

SCRIPT = Path(__file__).resolve().parent / "perf_analyzer.sh"


def _tools_dir() -> Path:
    """Where bench/perf_analyzer.sh installs (``$RNNSERVE_TOOLS_DIR``, default .cache/tools)."""
    default = SCRIPT.parent.parent / ".cache" / "tools"
    return Path(os.environ.get("RNNSERVE_TOOLS_DIR", default))


def binary() -> Path:
    return _tools_dir() / "perf_analyzer" / "bin" / "perf_analyzer"


def environment() -> dict:
    """The environment perf_analyzer needs: its bundled libcudart and libb64 on the path."""
    base = _tools_dir() / "perf_analyzer"
    extra = [str(base / "lib"), str(base / "b64")]
    current = os.environ.get("LD_LIBRARY_PATH")
    return dict(os.environ, LD_LIBRARY_PATH=":".join(extra + ([current] if current else [])))


def ensure_installed(log_path: Path) -> Path:
    """Install perf_analyzer with bench/perf_analyzer.sh if needed; return the binary."""
    if not binary().exists():
        with log_path.open("ab") as log:
            subprocess.run(["bash", str(SCRIPT), "--install-only"], stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=600)
    return binary()


def write_input_data(corpus: Path, path: Path, limit: int = 1000) -> Path:
    """perf_analyzer ``--input-data`` JSON: one BYTES ``TEXT`` of shape [1] per step."""
    sentences = json.loads(corpus.read_text(encoding="utf-8"))["sentences"][:limit]
    path.write_text(json.dumps({"data": [{"TEXT": [s]} for s in sentences]}), encoding="utf-8")
    return path


def _float(row: dict, *names: str) -> float:
    for name in names:
        if row.get(name) not in (None, ""):
            return float(row[name])
    return math.nan


def parse_csv(path: Path) -> dict:
    """The first data row of perf_analyzer's ``-f`` CSV, latencies in ms."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise RuntimeError(f"perf_analyzer wrote no measurement to {path}")
    row = rows[0]
    us = 1e-3
    return {
        "concurrency": int(float(row["Concurrency"])),
        "throughput_rps": _float(row, "Inferences/Second"),
        "p50_ms": _float(row, "p50 latency") * us,
        "p90_ms": _float(row, "p90 latency") * us,
        "p95_ms": _float(row, "p95 latency") * us,
        "p99_ms": _float(row, "p99 latency") * us,
        "mean_ms": _float(row, "Avg latency") * us,
        "server_queue_ms": _float(row, "Server Queue") * us,
        "server_compute_ms": sum(_float(row, c) for c in (
            "Server Compute Input", "Server Compute Infer", "Server Compute Output")) * us,
    }


def run_levels(*, target: str, model: str, corpus: Path, levels: list[int], cpus: str | None,
               work: Path, log_path: Path, count: int, duration: float,
               server_pgid: int | None = None) -> list[dict]:
    """One bounded perf_analyzer run per concurrency level; returns loadgen-shaped dicts."""
    work.mkdir(parents=True, exist_ok=True)
    pa_binary = ensure_installed(log_path)
    data = write_input_data(corpus, work / "input-data.json")
    tokens = json.loads(corpus.read_text(encoding="utf-8"))["tokens"]
    mean_tokens = sum(tokens) / len(tokens)
    window_ms = max(500, int(duration * 1000 / 3))
    results = []
    for level in levels:
        out_csv = work / f"c{level}.csv"
        stable = True
        cpu0, t0 = group_cpu_seconds(server_pgid), time.monotonic()
        # First ask for a stable measurement; on a noisy machine fall back to three windows
        # accepted as they are (recorded as unstable) rather than no number at all.
        for stability, trials in (("25", "6"), ("1000", "3")):
            argv = pinned([
                str(pa_binary), "-m", model, "-u", target, "-i", "grpc",
                "--input-data", str(data), "--shape", "TEXT:1",
                "--concurrency-range", f"{level}:{level}",
                "--measurement-mode", "time_windows", "--measurement-interval", str(window_ms),
                "--stability-percentage", stability, "--max-trials", trials,
                "--percentile", "99", "-f", str(out_csv),
            ], cpus)
            with log_path.open("ab") as log:
                log.write(f"$ {' '.join(argv)}\n".encode())
                log.flush()
                proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=window_ms / 1000 * 10 + 60, check=False,
                                      env=environment())
            if out_csv.exists():
                break
            stable = False
        cpu1, wall = group_cpu_seconds(server_pgid), time.monotonic() - t0
        if not out_csv.exists():
            raise RuntimeError(f"perf_analyzer exited with {proc.returncode} and no CSV at "
                               f"concurrency {level}; see {log_path}")
        result = parse_csv(out_csv)
        result.update(api="kserve", requests=None, errors=0, exit_code=proc.returncode,
                      stable=stable,
                      tokens_per_s=result["throughput_rps"] * mean_tokens)
        if cpu0 is not None and cpu1 is not None and result["throughput_rps"] > 0:
            # Server CPU over the whole invocation (warm-up included) per request served at
            # the measured rate: an estimate, as perf_analyzer does not report counts.
            result["server_cpu_us_per_request"] = (cpu1 - cpu0) / wall / result[
                "throughput_rps"] * 1e6
        results.append(result)
    return results
