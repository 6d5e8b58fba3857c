"""The bidirectional calls of both APIs: one pump from the request stream to the answers,
and one drain for server shutdown.

``StreamClassify`` (text API) and ``ModelStreamInfer`` (KServe v2) differ in what one
message means (a chunk of one sequence / an independent request), not in how a stream is
read, bounded, drained or cancelled; :class:`StreamPump` is that common part.

Invariants of a pump:
- Requests are read and submitted one at a time, in arrival order; ``submit`` runs to the
  engine without another request in between, so the steps of one sequence are accepted in
  order.
- At most ``window`` submitted requests are unanswered; reading pauses beyond that (HTTP/2
  flow control then pushes back on the client).
- ``ordered``: outcomes come out in submission order (a text stream's chunks), and a
  failure ends the stream after the outcomes before it. Unordered: each request's work runs
  as its own task and its outcome comes out when it completes (KServe); such work reports
  its own failures as outcomes, so one failed request never ends the stream.
- A ServingError raised by ``submit`` ends the stream after the outcomes already owed; any
  other exception there is a bug, logged and answered INTERNAL.
- Drain (:meth:`Drain.begin`): reading stops at once; every request already read is still
  answered, then :meth:`StreamPump.outcomes` raises :data:`DRAINED`. Client cancel (the
  caller stops iterating): reading stops and unordered work in flight is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .errors import Internal, ServingError, Unavailable

log = logging.getLogger(__name__)

#: What ``outcomes`` raises once a drain stopped the stream and everything read was
#: answered; each API turns it into its own UNAVAILABLE message.
DRAINED = Unavailable("the server is shutting down")

#: ``submit(request)`` -> (meta, work): ``meta`` comes back with the outcome; ``work`` is
#: awaited for the outcome (ordered) or run as a task (unordered: a coroutine).
Submit = Callable[[Any], Awaitable[tuple[Any, Awaitable]]]


class Drain:
    """Server shutdown as the servicers see it: a flag, the readers of open streams and how
    many stream calls are open (:meth:`track`), so that the server can wait for every
    drained stream to have ended before it stops accepting calls (server/app.py)."""

    def __init__(self) -> None:
        self.active = False
        self._readers: set[asyncio.Task] = set()
        self._open = 0
        self._none_open = asyncio.Event()
        self._none_open.set()
        self._begun = asyncio.Event()

    def track(self, context) -> None:
        """Count a stream call as open until grpc reports it done (its status sent, or the
        call cancelled)."""
        self._open += 1
        self._none_open.clear()
        context.add_done_callback(self._call_done)

    @property
    def open_streams(self) -> int:
        """Stream calls counted open (:meth:`track`) and not done yet."""
        return self._open

    def _call_done(self, _context) -> None:
        self._open -= 1
        if not self._open:
            self._none_open.set()

    async def streams_ended(self, timeout: float) -> bool:
        """Wait until no stream call is open; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._none_open.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True

    def begin(self) -> None:
        """Stop reading every open stream (each flushes its answers, then ends UNAVAILABLE);
        unary calls already accepted complete normally."""
        self.active = True
        self._begun.set()
        for reader in list(self._readers):
            reader.cancel()

    async def begun(self) -> None:
        """Return once :meth:`begin` has been called."""
        await self._begun.wait()

    def start_reader(self, reading: Awaitable) -> asyncio.Task:
        """Run one stream's reader; cancelled at once when the drain has begun."""
        reader = asyncio.ensure_future(reading)
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        if self.active:
            reader.cancel()
        return reader


class StreamPump:
    """One bidirectional call: see the module's invariants."""

    def __init__(self, submit: Submit, *, window: int, drain: Drain, ordered: bool) -> None:
        self._submit = submit
        self._window = asyncio.Semaphore(window)
        self._drain = drain
        self._ordered = ordered
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()

    async def outcomes(self, requests: AsyncIterator) -> AsyncIterator[tuple[Any, Any]]:
        """(meta, outcome) per request read; raises the error that ended the stream, or
        DRAINED after a drain."""
        reader = self._drain.start_reader(self._read(requests))
        try:
            while True:
                kind, meta, value = await self._outbox.get()
                if kind == "wait":                 # ordered: the next outcome in line
                    outcome = await value
                    self._window.release()
                    yield meta, outcome
                elif kind == "done":               # unordered: an outcome as it completed
                    yield meta, value
                elif kind == "error":
                    raise value
                else:                               # "end": value says whether drained
                    if value:
                        raise DRAINED
                    return
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def _read(self, requests: AsyncIterator) -> None:
        iterator = requests.__aiter__()
        try:
            while True:
                await self._window.acquire()
                try:
                    request = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                try:
                    meta, work = await self._submit(request)
                except ServingError as error:
                    self._outbox.put_nowait(("error", None, error))
                    return
                except Exception as exc:  # a bug: answer INTERNAL instead of hanging
                    log.exception("stream_submit_failed")
                    self._outbox.put_nowait(("error", None, Internal(
                        f"{type(exc).__name__} while reading the stream")))
                    return
                if self._ordered:
                    self._outbox.put_nowait(("wait", meta, work))
                else:
                    task = asyncio.ensure_future(work)
                    self._tasks.add(task)
                    task.add_done_callback(lambda done, meta=meta: self._completed(meta, done))
        except asyncio.CancelledError:
            if not self._drain.active:
                raise
            await self._finish(drained=True)
            return
        await self._finish(drained=False)

    def _completed(self, meta, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._window.release()
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._outbox.put_nowait(("done", meta, task.result()))
        else:                      # unordered work reports its own failures; this is a bug
            log.error("stream_work_failed", exc_info=error)
            self._outbox.put_nowait(("error", None, Internal(
                f"{type(error).__name__} while answering the stream")))

    async def _finish(self, *, drained: bool) -> None:
        """Close the outbox once the unordered work in flight has delivered (ordered work
        is awaited by the writer)."""
        while self._tasks:
            try:
                await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError:
                if not self._drain.active:
                    raise
        self._outbox.put_nowait(("end", None, drained))
