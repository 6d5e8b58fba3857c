"""ModelStreamInfer: one bidirectional stream of independent ModelInferRequests.

Invariants:
- Requests run concurrently (so one stream's requests batch together) with at most
  ``window`` in flight; reading pauses while the window is full.
- Requests start in arrival order and reach the engine without a suspension point, so the
  steps of one sequence are accepted (and answered, by the engine's contract) in order.
- Every request that was read gets exactly one response: its ModelInferResponse, or
  ``error_message`` (plus an infer_response carrying its id) when it failed. A failure never
  ends the stream.
- Drain (server shutdown): reading stops at once, answers to requests already read are
  flushed, then the stream ends with UNAVAILABLE. Client cancel: in-flight work is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2

from .errors import ServingError

log = logging.getLogger(__name__)

_DONE = object()
SHUTDOWN_MESSAGE = ("the server is shutting down; requests sent after the last response were "
                    "not read, resend them to another instance")


class StreamSession:
    """The state of one ModelStreamInfer call."""

    def __init__(self, infer: Callable[[service_pb2.ModelInferRequest],
                                       Awaitable[service_pb2.ModelInferResponse]],
                 window: int) -> None:
        self._infer = infer
        self._window = asyncio.Semaphore(window)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self.drained = False

    async def read(self, requests: AsyncIterator, draining: Callable[[], bool]) -> None:
        """Read and dispatch requests until the client half-closes or a drain stops us,
        then wait for the requests in flight and close the outbox."""
        try:
            await self._dispatch(requests, draining)
        except asyncio.CancelledError:
            if not draining():
                raise
            self.drained = True
        while self._tasks:
            try:
                await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError:
                if not draining():
                    raise
        await self._outbox.put(_DONE)

    async def _dispatch(self, requests: AsyncIterator, draining: Callable[[], bool]) -> None:
        iterator = requests.__aiter__()
        while not draining():
            await self._window.acquire()
            try:
                request = await iterator.__anext__()
            except StopAsyncIteration:
                self._window.release()
                return
            task = asyncio.get_running_loop().create_task(self._one(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.drained = True

    async def _one(self, request) -> None:
        try:
            response = await self._infer(request)
            item = service_pb2.ModelStreamInferResponse(infer_response=response)
        except ServingError as exc:
            item = error_response(request, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed request must not end the stream
            log.exception("kserve stream request failed")
            item = error_response(request, f"internal error: {type(exc).__name__}")
        finally:
            self._window.release()
        await self._outbox.put(item)

    async def responses(self):
        """Responses as they complete, until the reader is finished."""
        while True:
            item = await self._outbox.get()
            if item is _DONE:
                return
            yield item

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def error_response(request, message: str) -> service_pb2.ModelStreamInferResponse:
    """Triton's stream error: the message, plus an infer_response naming the request."""
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id),
    )


async def serve_stream(session: StreamSession, requests, context, readers: set,
                       draining: Callable[[], bool]):
    """Run ``session`` for one call: yields responses; ends with UNAVAILABLE after a drain."""
    reader = asyncio.get_running_loop().create_task(session.read(requests, draining))
    readers.add(reader)
    try:
        async for item in session.responses():
            yield item
        await reader
        if session.drained:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
    finally:
        readers.discard(reader)
        if not reader.done():
            reader.cancel()
        session.cancel()
