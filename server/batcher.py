"""Dynamic batching on the asyncio loop: one queue of rows per model version.

Stateless texts and stateful sequence chunks are both *rows* (server/execution.py) and share
one queue, so every protocol's traffic is batched together. The worker-thread half
(:class:`~rnnserve.server.execution.BatchExecutor`) runs the batches; this module decides
what goes into them.

Invariants:
- Admission is bounded: ``admit(n)`` raises ResourceExhausted, without waiting, when more than
  ``max_queue_size`` rows would be accepted and unfinished. Every admitted row is eventually
  completed, failed or (cancelled caller) dropped, and then ``release``-d exactly once.
- A batch holds at most ``max_batch_size`` rows and at most one row per sequence (the
  sequence layer submits a sequence's next chunk only after the previous one completed).
- The oldest queued row is always in the next batch, so no row starves. When more rows wait
  than fit, the rest of the batch is the window of rows closest in length to it (within a
  bounded look-ahead), which keeps padding low.
- A worker waits for a fuller batch at most ``max_queue_delay`` after the oldest row arrived.
  With ``adaptive`` it only waits for as many rows as its previous batch had, so a lone client
  never pays the delay while a crowd still gets full batches.
- Rows with tokens left after a step (long texts, long chunks) go back to the front of the
  queue with their carried state and are not re-admitted.
- The loop never blocks on compute: batches run in one thread per instance (ORT releases the
  GIL); only queue bookkeeping and result delivery run on the loop.
- An exception from ORT fails that batch's rows with INTERNAL; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from .composition import LOOKAHEAD_BATCHES, nearest_lengths
from .errors import Aborted, Internal, InvalidArgument, ResourceExhausted, ServingError
from .execution import BatchExecutor, BatchResult, Row
from .logs import log_event
from .prediction import Prediction

log = logging.getLogger("rnnserve.server.batcher")


class BatchRequest:
    """Owner of the rows of one stateless request: completes ``future`` with every
    Prediction in request order once the last row finished, or fails it on the first error."""

    __slots__ = ("future", "labels", "remaining", "results")

    def __init__(self, future: asyncio.Future, n: int, labels: Sequence[str]) -> None:
        self.future = future
        self.labels = labels
        self.remaining = n
        self.results: list[Prediction | None] = [None] * n

    @property
    def abandoned(self) -> bool:
        return self.future.done()

    def complete(self, row: Row, logits: np.ndarray, probabilities: np.ndarray,
                 top: int) -> None:
        self.results[row.index] = Prediction(self.labels[top], probabilities, logits,
                                             row.ids.size, top)
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.results)

    def fail(self, row: Row, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Scheduler:
    """The queue, the admission bound and one worker task per execution instance."""

    def __init__(self, executors: Sequence[BatchExecutor], *, max_batch_size: int,
                 max_queue_delay_s: float, adaptive: bool, max_queue_size: int,
                 telemetry, name: str) -> None:
        self.executors = list(executors)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.adaptive = adaptive
        self.max_queue_size = max_queue_size
        self.telemetry = telemetry
        self.name = name
        self.admitted = 0                 # accepted rows not yet completed/failed/dropped
        self._queue: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._target = 1                  # rows the waiting worker wants before running
        self._last_batch = 1
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._threads: list[_ComputeThread] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # -- admission and submission (event loop) ------------------------------------------

    def admit(self, n: int) -> None:
        """Reserve room for ``n`` rows or raise ResourceExhausted at once."""
        if self.admitted + n > self.max_queue_size:
            raise ResourceExhausted(
                f"model {self.name} is at capacity ({self.admitted} queued rows, limit "
                f"{self.max_queue_size}); retry with backoff or raise --max-queue-size")
        self.admitted += n
        self._idle.clear()
        if self.telemetry is not None:      # the pending gauge follows every change
            self.telemetry.set_pending(self.admitted)

    def release(self, n: int = 1) -> None:
        """Give back ``n`` admitted rows (finished, failed or dropped)."""
        self.admitted -= n
        if self.admitted <= 0:
            self.admitted = 0
            self._idle.set()
        if self.telemetry is not None:
            self.telemetry.set_pending(self.admitted)

    def submit(self, row: Row) -> None:
        """Queue an admitted row (its first step)."""
        row.enqueued = time.perf_counter()
        queue = self._queue
        queue.append(row)
        if len(queue) == 1 or len(queue) >= self._target:
            self._wake.set()

    # -- workers ------------------------------------------------------------------------

    def start(self) -> None:
        for index, executor in enumerate(self.executors):
            thread = _ComputeThread(executor, f"rnnserve-{self.name}-{index}")
            self._threads.append(thread)
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._work(executor, thread), name=f"rnnserve-worker-{self.name}-{index}"))

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every admitted row finished (False on timeout)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the workers after the queue is empty; fail anything still queued."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        error = Aborted(f"model {self.name} was unloaded")
        while self._queue:
            row = self._queue.popleft()
            row.owner.fail(row, error)
            self.release()
        for thread in self._threads:
            thread.stop()

    async def _work(self, executor: BatchExecutor, thread: _ComputeThread) -> None:
        while True:
            rows = await self._next_batch()
            if rows is None:
                return
            dispatched = time.perf_counter()
            try:
                result = await thread.execute(rows)
            except Exception as exc:  # noqa: BLE001 - any ORT failure: fail the batch, keep serving
                log_event(log, "batch_failed", level=logging.ERROR, model=self.name,
                          rows=len(rows), error=f"{type(exc).__name__}: {exc}"[:500])
                error = Internal(f"inference failed in ONNX Runtime for model {self.name} "
                                 f"({type(exc).__name__}); the batch was dropped, the server "
                                 "is still serving")
                for row in rows:
                    row.owner.fail(row, error)
                    self.release()
                continue
            self._finish(rows, result, dispatched)

    async def _next_batch(self) -> list[Row] | None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                if self._closing:
                    return None
                self._wake.clear()
                await self._wake.wait()
                continue
            target = min(self.max_batch_size, self._last_batch) if self.adaptive \
                else self.max_batch_size
            if len(queue) < target and self.max_queue_delay_s > 0 and not self._closing:
                deadline = queue[0].enqueued + self.max_queue_delay_s
                if deadline > time.perf_counter():
                    self._target = target
                    self._wake.clear()
                    timer = loop.call_later(deadline - time.perf_counter(), self._wake.set)
                    await self._wake.wait()
                    timer.cancel()
                    self._target = 1
                    continue
            rows = self._take()
            if rows:
                return rows

    def _take(self) -> list[Row]:
        """Remove and return the next batch (oldest row + its length neighbours)."""
        queue = self._queue
        limit = self.max_batch_size
        if len(queue) <= limit:
            candidates = list(queue)
            queue.clear()
            return self._drop_abandoned(candidates)
        lookahead = min(len(queue), LOOKAHEAD_BATCHES * limit)
        candidates = [queue.popleft() for _ in range(lookahead)]
        chunk = self.executors[0].chunk_length
        chosen = set(nearest_lengths([min(row.remaining, chunk) for row in candidates], limit))
        rows = [candidates[i] for i in sorted(chosen)]
        queue.extendleft(reversed([candidates[i] for i in range(lookahead)
                                   if i not in chosen]))
        return self._drop_abandoned(rows)

    def _drop_abandoned(self, rows: list[Row]) -> list[Row]:
        """Rows whose caller is gone (cancelled) are dropped before costing compute."""
        kept = []
        for row in rows:
            if row.slot < 0 and row.owner.abandoned:
                self.release()
            else:
                kept.append(row)
        return kept

    def _finish(self, rows: Sequence[Row], result: BatchResult, dispatched: float) -> None:
        now = time.perf_counter()
        unfinished = []
        tokenize = result.tokenize_seconds
        queue_seconds = []
        logits, probabilities, top = result.logits, result.probabilities, result.top
        errors = result.errors
        done = 0                      # rows finished here: released together below
        for i, row in enumerate(rows):
            queue_seconds.append(dispatched - row.enqueued)
            tokenize += row.tokenize_seconds
            row.tokenize_seconds = 0.0
            if errors is not None and i in errors:
                row.owner.fail(row, errors[i])
                done += 1
                continue
            if row.offset < row.ids.size:
                unfinished.append(row)
                continue
            try:
                row.owner.complete(row, logits[i], probabilities[i], int(top[i]))
            except Exception as exc:  # noqa: BLE001 - an owner bug must not stop the worker
                log_event(log, "complete_failed", level=logging.ERROR, model=self.name,
                          error=f"{type(exc).__name__}: {exc}")
            done += 1
        if done:
            self.release(done)        # one admission update (and pending gauge) per batch
        if unfinished:
            for row in unfinished:
                row.enqueued = now
            self._queue.extendleft(reversed(unfinished))
            self._wake.set()
        self._last_batch = len(rows)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.rows_executed(
                queue_seconds=queue_seconds, tokenize_seconds=tokenize,
                input_seconds=result.input_seconds, infer_seconds=result.infer_seconds,
                output_seconds=result.output_seconds, batch_size=len(rows),
                real_tokens=result.real_tokens, padded_tokens=result.padded_tokens)


class _ComputeThread:
    """One OS thread that runs one executor's batches; the loop awaits a future per batch.

    Lighter than ``run_in_executor``: one queue put to hand a batch over, one
    ``call_soon_threadsafe`` to hand the result back.
    """

    def __init__(self, executor: BatchExecutor, name: str) -> None:
        self.executor = executor
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def execute(self, rows: list[Row]) -> asyncio.Future:
        future = self._loop.create_future()
        self._inbox.put((rows, future))
        return future

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while (item := self._inbox.get()) is not None:
            rows, future = item
            try:
                result, error = self.executor.execute(rows), None
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting worker
                result, error = None, exc
            self._loop.call_soon_threadsafe(_deliver, future, result, error)


def _deliver(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ChunkOwner:
    """Owner of one sequence chunk's row; hands the outcome to ``on_done``."""

    __slots__ = ("abandoned", "on_done")

    def __init__(self, on_done: Callable) -> None:
        self.on_done = on_done
        self.abandoned = False    # sequence chunks always run: their state must advance

    def complete(self, row: Row, logits, probabilities, top: int) -> None:
        self.on_done(row, (logits, probabilities, top), None)

    def fail(self, row: Row, error: BaseException) -> None:
        self.on_done(row, None, error if isinstance(error, ServingError) else
                     Internal(f"{type(error).__name__}: {error}"))


class _Chunk:
    """One accepted chunk: ``text`` (tokenized by the worker), None for an empty final
    chunk."""

    __slots__ = ("end", "export", "future", "reset", "text")

    def __init__(self, future: asyncio.Future, *, text: str | None, end: bool, reset: bool,
                 export: bool = False) -> None:
        self.text = text
        self.future = future
        self.end = end
        self.reset = reset
        self.export = export

    @property
    def empty(self) -> bool:
        return self.text is None


class SequenceBatcher:
    """Feeds each open sequence's chunks to the shared scheduler one at a time, in order.

    Invariants: a sequence has at most one chunk in the scheduler (``busy``), so batches
    never hold two chunks of one sequence and every chunk sees the state its predecessor
    left; chunks are answered in the order they were submitted; at most ``max_pending``
    chunks of one sequence wait behind the running one. A chunk that fails closes its
    sequence (its state can no longer be trusted) and fails the chunks queued behind it.
    A chunk marked ``export`` is answered with a snapshot of the state it left (taken
    before the next chunk is dispatched, so it is exactly the state after this chunk).
    """

    def __init__(self, scheduler: Scheduler, store, labels: Sequence[str], *,
                 max_pending: int, snapshot: Callable | None = None) -> None:
        self.scheduler = scheduler
        self.store = store
        self.labels = labels
        self.max_pending = max_pending
        self.snapshot = snapshot

    def submit(self, state, future: asyncio.Future, *, text: str | None, end: bool,
               reset: bool, export: bool = False) -> None:
        """Accept one chunk (``text``, or None for an empty final chunk) or raise without
        side effects."""
        if len(state.pending) >= self.max_pending:
            raise ResourceExhausted(
                f"sequence {state.key!r} already has {len(state.pending)} chunks waiting "
                f"(limit {self.max_pending}); wait for responses before sending more")
        self.scheduler.admit(1)
        state.pending.append(_Chunk(future, text=text, end=end, reset=reset, export=export))
        self.store.touch(state)
        if not state.busy:
            self._dispatch(state)

    def cancel_pending(self, state, error: BaseException) -> None:
        """Fail every chunk of ``state`` not yet handed to the scheduler."""
        while state.pending:
            chunk = state.pending.pop(0)
            if not chunk.future.done():
                chunk.future.set_exception(error)
            self.scheduler.release()

    def _dispatch(self, state) -> None:
        while state.pending and not state.busy and not state.closed:
            chunk = state.pending.pop(0)
            if chunk.reset:
                self.store.restart(state)
            if chunk.empty:                  # an empty final chunk: answer from the state
                self.scheduler.release()
                if state.last is None:
                    _set_exception(chunk.future, _empty_first_chunk(state.key))
                else:
                    last = state.last
                    _set_result(chunk.future, Prediction(
                        last.label, last.probabilities, last.logits, 0, last.label_index,
                        self._export(state, chunk)))
                if chunk.end:
                    self.store.close(state, "ended")
                    self._retire(state)
                    return
                continue
            owner = ChunkOwner(lambda row, outcome, error, chunk=chunk:
                               self._done(state, chunk, row, outcome, error))
            row = Row(None, owner, text=chunk.text, slot=state.slot, fresh=state.fresh)
            state.fresh = False
            state.busy = True
            self.scheduler.submit(row)

    def _done(self, state, chunk: _Chunk, row: Row, outcome, error) -> None:
        state.busy = False
        if error is not None:
            _set_exception(chunk.future, error)
            self.store.close(state, "failed")
            self.cancel_pending(state, Aborted(
                f"sequence {state.key!r} was closed after an earlier chunk failed; start a new "
                "sequence"))
        else:
            logits, probabilities, top = outcome
            state.tokens += row.ids.size
            state.chunks += 1
            prediction = Prediction(self.labels[top], probabilities, logits, row.ids.size, top)
            state.last = prediction
            if chunk.export:
                prediction = Prediction(prediction.label, probabilities, logits, row.ids.size,
                                        top, self._export(state, chunk))
            _set_result(chunk.future, prediction)
            if chunk.end:
                self.store.close(state, "ended")
        if state.closed:
            self._retire(state)
        else:
            self.store.touch(state)
            self._dispatch(state)

    def _export(self, state, chunk: _Chunk) -> bytes | None:
        return self.snapshot(state) if chunk.export and self.snapshot is not None else None

    def _retire(self, state) -> None:
        """A closed sequence with no chunk running: fail what is still queued behind its end,
        then free its state slot."""
        self.cancel_pending(state, Aborted(
            f"sequence {state.key!r} was ended before this chunk ran"))
        self.store.release(state)


def _empty_first_chunk(key) -> ServingError:
    return InvalidArgument(f"sequence {key!r}: an empty chunk is only allowed to end a "
                           "sequence that has already seen text; send some text first")


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
