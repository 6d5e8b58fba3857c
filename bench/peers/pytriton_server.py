"""PyTriton peer: Triton server + ONNX Runtime Python model with dynamic batching.

Run with the PyTriton venv's interpreter (bench/peers/install_pytriton.sh)::

    .cache/peers/pytriton/bin/python bench/peers/pytriton_server.py --model-dir REPO/M/1 \
        --name M --grpc-port 8101 --http-port 8100 --metrics-port 8102

Tuning (for its best showing): one model instance with the same ORT threads as rnnserve,
``max_queue_delay_microseconds=0`` (batches form from whatever is queued while the previous
batch runs, so concurrency 1 pays no delay), the same max batch size as rnnserve's
config.pbtxt, and ``TritonSecurityConfig(restricted_endpoints=[])`` so perf_analyzer may call
the statistics RPC. Triton's binary links against libpython: the script re-executes itself
with ``LD_LIBRARY_PATH`` pointing at the interpreter's LIBDIR when that is missing.
Prints ``READY`` on stdout once the model is served.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path


def _ensure_libpython_on_path() -> None:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(p for p in (libdir, current) if p))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTriton peer for rnnserve benchmarks")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, default=8101)
    parser.add_argument("--http-port", type=int, default=8100)
    parser.add_argument("--metrics-port", type=int, default=8102)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--queue-delay-us", type=int, default=0)
    args = parser.parse_args()
    _ensure_libpython_on_path()

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from text_model import OnnxTextClassifier

    classifier = OnnxTextClassifier(args.model_dir, threads=args.threads)
    classifier(["warm up"])

    @batch
    def infer(TEXT):
        texts = [row[0].decode("utf-8") for row in TEXT]
        logits, probabilities = classifier(texts)
        return {"LOGITS": logits, "PROBABILITIES": probabilities}

    config = TritonConfig(
        grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        grpc_address="127.0.0.1", http_address="127.0.0.1", log_verbose=0,
    )
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="LOGITS", dtype=np.float32, shape=(-1,)),
                Tensor(name="PROBABILITIES", dtype=np.float32, shape=(-1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        print("READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
