"""The cost of a gRPC call itself: an empty unary handler, measured with h2load.

Five servers answer the same empty method on one pinned core (h2load on another):
grpcio's sync server (a thread pool), grpc.aio on asyncio's default loop, grpc.aio on
uvloop, grpc's C++ callback server (bench/grpc_floor.cc, compiled like the native
front-end), and rnnserve's calls route: the native front-end handing each call over its
calls socket to a Python ``CallEndpoint`` on uvloop, as ``--frontend native`` does, with
the empty handler in place of the servicers. The C++ kinds are skipped when they cannot be
built. The numbers bound what each can answer per core, and decided which one rnnserve
runs on (docs/architecture.md §4 and §5); ``calls`` is the floor under every request the
native front-end serves.

``python -m rnnserve.bench.grpc_floor [--kinds sync,aio,aio-uvloop,cxx,calls]
[--server-cpu 1 --client-cpu 0 --requests 30000]``
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

from rnnserve.bench.capacity import grpc_frame, grpc_status_sample, h2load
from rnnserve.bench.procs import free_port, pinned

KINDS = ("sync", "aio", "aio-uvloop", "cxx", "calls")
METHOD = "/floor.Empty/Call"
CXX_SOURCE = Path(__file__).with_name("grpc_floor.cc")
_REPLY = b"\x0a\x03abc"


def _identity(data: bytes) -> bytes:
    return data


def _method(kind: str):
    """The empty unary method (sync for the thread-pool server, async for the others)."""
    import grpc

    if kind == "sync":
        def answer(request, context):
            return _REPLY
    else:
        async def answer(request, context):
            return _REPLY
    return grpc.unary_unary_rpc_method_handler(answer, request_deserializer=_identity,
                                               response_serializer=_identity)


def _handler(kind: str):
    import grpc

    return grpc.method_handlers_generic_handler("floor.Empty", {"Call": _method(kind)})


def serve(kind: str, port: int) -> None:
    """Run one empty server until killed."""
    import grpc

    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[_handler(kind)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return
    if kind in ("aio-uvloop", "calls"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if kind == "calls":
        asyncio.run(_serve_calls(port))
        return

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_handler(kind)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def _serve_calls(port: int) -> None:
    """The native front-end on ``port`` with the empty handler as its only routed method,
    until SIGTERM (then the front-end stops and its socket directory is removed)."""
    import signal

    from rnnserve.server.native_frontend import NativeFrontend

    frontend = NativeFrontend({METHOD: _method("calls")}, listen=f"127.0.0.1:{port}",
                              options=[], grace=1.0)
    await frontend.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    frontend.begin_shutdown()
    await frontend.wait_stopped(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--client-cpu", default="0")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated servers to measure, of {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown --kinds {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(KINDS)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "empty.bin"
        data.write_bytes(grpc_frame(b"\x0a\x03abc"))
        for kind in kinds:
            port = free_port()
            if kind in ("cxx", "calls"):
                from rnnserve.server.native_frontend import BuildError, binary

                try:
                    built = binary(source=CXX_SOURCE) if kind == "cxx" else binary()
                except BuildError as exc:
                    print(f"{kind:11s} skipped: {exc}", flush=True)
                    continue
            if kind == "cxx":
                command = [str(built), str(port)]
            else:
                command = [sys.executable, "-m", "rnnserve.bench.grpc_floor", "--serve", kind,
                           str(port)]
            server = subprocess.Popen(pinned(command, args.server_cpu))
            try:
                time.sleep(2.0)
                statuses = grpc_status_sample(port, data, samples=3, path=METHOD)
                if any(status != "0" for status in statuses):
                    raise RuntimeError(f"{kind}: the empty call is not answered OK: "
                                       f"{statuses}")
                h2load(port, data, requests=2000, concurrency=args.concurrency,
                       cpus=args.client_cpu, path=METHOD)
                run = h2load(port, data, requests=args.requests,
                             concurrency=args.concurrency, cpus=args.client_cpu, path=METHOD)
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            if run["http_ok"] != run["done"] or run["done"] == 0:
                raise RuntimeError(f"{kind}: {run['http_failed']} of {run['done']} calls "
                                   "failed")
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
