"""MLServer peer launcher: writes settings for one model and runs ``mlserver start``.

Run with the MLServer venv's interpreter (bench/peers/install_mlserver.sh)::

    .cache/peers/mlserver/bin/python bench/peers/mlserver_server.py --model-dir REPO/M/1 \
        --name M --grpc-port 8201 --http-port 8200 --metrics-port 8202 --workdir /tmp/mls

Tuning (for its best showing on two cores): ``parallel_workers: 0`` (inference in the server
process; a separate worker process only adds IPC and a process competing for the cores),
adaptive batching with the same max batch size as rnnserve and a short ``max_batch_time``
(``--max-batch-time``, seconds), the same ORT threads, Prometheus metrics endpoint off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description="MLServer peer for rnnserve benchmarks")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, default=8201)
    parser.add_argument("--http-port", type=int, default=8200)
    parser.add_argument("--metrics-port", type=int, default=8202)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-time", type=float, default=0.0005)
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()

    here = Path(__file__).resolve().parent
    workdir = args.workdir
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / args.name).mkdir(parents=True)
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "metrics_port": args.metrics_port,
        "metrics_endpoint": None,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": args.name,
        "implementation": "mlserver_runtime.OnnxTextRuntime",
        "max_batch_size": args.max_batch_size,
        "max_batch_time": args.max_batch_time,
        "parameters": {"uri": str(args.model_dir.resolve()), "extra": {"threads": args.threads}},
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=1))
    (workdir / args.name / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here), env.get("PYTHONPATH")) if p)
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execve(str(mlserver), [str(mlserver), "start", str(workdir)], env)


if __name__ == "__main__":
    main()
