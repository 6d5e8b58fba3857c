"""One front-end process of ``rnnserve serve --workers N``:
``python -m rnnserve.server.worker FD`` (started by server/workers.py, never by hand).

``FD`` is this process's end of a socketpair to the engine process. The first message on it
is ``("start", settings, index)``; then the front-end serves both APIs on the shared port
(SO_REUSEPORT) with a :class:`~rnnserve.server.remote.RemoteRegistry`, exactly as a
single-process server would, except that inference, sequence state and metrics exposition
live in the engine process.

Invariants:
- It never imports ONNX Runtime or the tokenizer (start-up well under a second of imports).
- SIGTERM drains it like a single server (health NOT_SERVING, streams flushed and ended with
  their state trailer); repeated SIGTERMs and SIGINT change nothing (the supervisor forwards
  the stop and SIGKILLs a front-end that outlives the grace period).
- If the engine process goes away, it stops serving at once and exits 1 (no orphans).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from .app import RnnServer, use_uvloop
from .ipc import receive_blocking
from .logs import configure_logging, log_event
from .remote import RemoteRegistry
from .telemetry import ServerTelemetry

log = logging.getLogger("rnnserve.server.worker")


async def serve_frontend(settings, sock: socket.socket, index: int, multiprocess_dir) -> int:
    telemetry = ServerTelemetry(enabled=settings.metrics_enabled,
                                multiprocess_dir=multiprocess_dir)
    registry = RemoteRegistry(settings, telemetry)
    await registry.link.connect(sock)
    server = RnnServer(settings, registry=registry, telemetry=telemetry, share_port=True)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_sigterm() -> None:      # the supervisor SIGKILLs a front-end that outlives grace
        nonlocal signals
        signals += 1
        server.shutdown()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, lambda: None)    # Ctrl-C is the supervisor's
    starting = loop.create_task(server.start())
    lost = loop.create_task(registry.lost.wait())
    stopped = loop.create_task(server.stopped.wait())
    done, _ = await asyncio.wait({starting, lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done and starting.exception() is not None:
        log_event(log, "startup_failed", level=logging.ERROR, worker=index,
                  error=f"{starting.exception()}")
        return 1
    if lost not in done:            # serving (or draining): until stopped or the engine is gone
        done, _ = await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if lost in done and not server.stopped.is_set():
        log_event(log, "engine_lost", level=logging.ERROR, worker=index)
        starting.cancel()
        await server.abort()
        return 1
    registry.link.close()
    return 0


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    try:
        _, settings, index, multiprocess_dir = receive_blocking(sock)
    except EOFError:
        return 1
    configure_logging(settings.log_format, settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    use_uvloop()
    log_event(log, "worker_started", worker=index, pid=os.getpid())
    return asyncio.run(serve_frontend(settings, sock, index, multiprocess_dir))


class _WorkerField(logging.Filter):
    """Adds ``worker=<index>`` to every log line of this process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            fields.setdefault("worker", self.index)
        return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
