"""Peer servers (PyTriton, MLServer) as ``ServerProcess``es, each in its own venv.

The venvs live under ``.cache/peers/<name>`` (override with ``RNNSERVE_PEERS_DIR``) and are
created by ``bench/peers/install_<name>.sh``. The peer scripts in ``bench/peers/`` run with the
venv's interpreter; they only import numpy, onnxruntime, tokenizers and the peer itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from rnnserve.bench.procs import ServerProcess, free_port

PEERS = ("pytriton", "mlserver")
#: bench/peers/ in a source checkout (the peers are benchmarked from a checkout only).
PEERS_SRC = Path(__file__).resolve().parent / "peers"


def peers_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache" / "peers"
    return Path(os.environ.get("RNNSERVE_PEERS_DIR", default))


def venv_python(peer: str) -> Path:
    return peers_dir() / peer / "bin" / "python"


def peer_server(peer: str, *, model_dir: Path, name: str, threads: int, max_batch_size: int,
                cpus: str | None, log_path: Path, work: Path,
                mlserver_max_batch_time: float = 0.0005) -> ServerProcess:
    """The ServerProcess for ``peer`` serving ``model_dir`` as ``name`` on free ports."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    common = ["--model-dir", str(model_dir), "--name", name, "--grpc-port", str(grpc_port),
              "--http-port", str(http_port), "--metrics-port", str(metrics_port),
              "--threads", str(threads), "--max-batch-size", str(max_batch_size)]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # One thread for numpy/BLAS in the peer, like the ORT session: no oversubscription.
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if peer == "pytriton":
        script = PEERS_SRC / "pytriton_server.py"
        argv = [str(venv_python(peer)), str(script), *common, "--queue-delay-us", "0"]
    elif peer == "mlserver":
        script = PEERS_SRC / "mlserver_server.py"
        argv = [str(venv_python(peer)), str(script), *common, "--workdir", str(work),
                "--max-batch-time", str(mlserver_max_batch_time)]
    else:
        raise ValueError(f"unknown peer {peer!r}: {PEERS}")
    return ServerProcess(peer, argv, log_path, grpc_port, env=env, cpus=cpus)
