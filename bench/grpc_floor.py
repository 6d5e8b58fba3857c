"""The cost of a gRPC call itself: an empty unary handler, measured with h2load.

Four servers answer the same empty method on one pinned core (h2load on another):
grpcio's sync server (a thread pool), grpc.aio on asyncio's default loop, grpc.aio on
uvloop, and grpc's C++ callback server (bench/grpc_floor.cc, compiled like the native
front-end; skipped when it cannot be built). The numbers bound what each can answer per
core, and decided which one rnnserve runs on (docs/architecture.md §4 and §5).

``python -m rnnserve.bench.grpc_floor [--server-cpu 1 --client-cpu 0 --requests 30000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

from rnnserve.bench.capacity import grpc_frame, h2load
from rnnserve.bench.procs import free_port, pinned

KINDS = ("sync", "aio", "aio-uvloop", "cxx")
CXX_SOURCE = Path(__file__).with_name("grpc_floor.cc")
_REPLY = b"\x0a\x03abc"


def _identity(data: bytes) -> bytes:
    return data


def _handler(kind: str):
    import grpc

    if kind == "sync":
        def answer(request, context):
            return _REPLY
    else:
        async def answer(request, context):
            return _REPLY
    return grpc.method_handlers_generic_handler("floor.Empty", {
        "Call": grpc.unary_unary_rpc_method_handler(answer, request_deserializer=_identity,
                                                    response_serializer=_identity)})


def serve(kind: str, port: int) -> None:
    """Run one empty server until killed."""
    import grpc

    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[_handler(kind)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return
    if kind == "aio-uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_handler(kind)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--client-cpu", default="0")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "empty.bin"
        data.write_bytes(grpc_frame(b"\x0a\x03abc"))
        for kind in KINDS:
            port = free_port()
            if kind == "cxx":
                from rnnserve.server.native_frontend import BuildError, binary

                try:
                    command = [str(binary(source=CXX_SOURCE)), str(port)]
                except BuildError as exc:
                    print(f"cxx         skipped: {exc}", flush=True)
                    continue
            else:
                command = [sys.executable, "-m", "rnnserve.bench.grpc_floor", "--serve", kind,
                           str(port)]
            server = subprocess.Popen(pinned(command, args.server_cpu))
            try:
                time.sleep(2.0)
                h2load(port, data, requests=2000, concurrency=args.concurrency,
                       cpus=args.client_cpu, path="/floor.Empty/Call")
                run = h2load(port, data, requests=args.requests,
                             concurrency=args.concurrency, cpus=args.client_cpu,
                             path="/floor.Empty/Call")
            finally:
                server.kill()
                server.wait()
            results[kind] = {"req_s": run["req_s"], "us_per_call": 1e6 / run["req_s"]}
            print(f"{kind:11s} {run['req_s']:9,.0f} calls/s  {1e6 / run['req_s']:6.1f} µs/call",
                  flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
