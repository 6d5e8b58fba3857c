"""Every request is reported to telemetry exactly once, with the status it ended with.

Where a request is reported is where it is handled end to end: ``ModelEngine`` in a single
process, the front-end's ``RemoteEngine`` with ``--workers N`` (so the time includes the hop
to the engine process, and the engine is told not to report it again).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from .errors import status_of


def report(telemetry, *, api: str, kind: str, code, started: float, texts: int) -> None:
    """One finished request (``started``: its ``time.perf_counter()`` at arrival)."""
    if telemetry is not None:
        telemetry.request_finished(api=api, kind=kind, code=code,
                                   seconds=time.perf_counter() - started, texts=texts)


def report_when_settled(telemetry, future: asyncio.Future, *, api: str, kind: str,
                        started: float, texts: int) -> None:
    """Report the request when ``future`` settles: OK, its error's status, or CANCELLED."""
    if telemetry is None:
        return

    def settled(f: asyncio.Future) -> None:
        if f.cancelled():
            code = grpc.StatusCode.CANCELLED
        else:
            error = f.exception()
            code = grpc.StatusCode.OK if error is None else status_of(error)
        report(telemetry, api=api, kind=kind, code=code, started=started, texts=texts)

    future.add_done_callback(settled)
