"""One batch through ONNX Runtime: assemble inputs, run, softmax, carry state.

This is the worker-thread half of batching (server/batcher.py is the event-loop half).

Invariants:
- A :class:`Row` handed to :meth:`BatchExecutor.execute` is owned by the worker thread until
  ``execute`` returns: nothing on the event loop reads or writes it meanwhile.
- One step of a row feeds at most ``chunk_length`` of its tokens (``ids[offset:offset+step]``);
  after the step ``offset`` has advanced by ``step`` and the state after those tokens is
  carried: in the sequence's pool slot (``slot >= 0``) or in ``row.state`` (stateless rows
  that still have tokens left). So any text runs in memory bounded by
  ``max_batch_size x chunk_length``.
- A row with ``fresh`` set starts from zero state (never from whatever its slot held);
  ``fresh`` is cleared after its first step.
- Input buffers are preallocated per executor (``max_batch_size x chunk_length`` ids and
  ``max_batch_size`` state rows); a batch uses C-contiguous prefixes of them, so the hot
  path allocates only ORT's outputs.
- With a device state pool (server/state_pool.py) the batch's input and output state are
  per-executor device tensors: gathered from the pool on the device (fresh rows gather the
  pool's zero row), run with ``OnnxModel.run_bound``, scattered back on the device; only the
  state of stateless rows that continue (``row.state``) crosses to the host. Same results
  as the host path (tests/server/test_state_pool.py).
- Every row that reaches ORT has 1 <= step <= T and ids in the model's vocabulary (texts
  are tokenized with the model's own tokenizer, caller-supplied ids are checked upstream,
  a text without tokens is reported instead of run), so nothing malformed reaches ORT.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .composition import CostModel, split_by_length
from .errors import ServingError
from .runtime import OnnxModel
from .state_pool import DeviceTensor, StatePool
from .tokenize import TextEncoder, no_tokens


class Row:
    """One text (stateless) or one chunk of a sequence, possibly spanning several steps.

    A row arrives either tokenized (``ids``) or as ``text``, which the worker tokenizes
    with the rest of its batch (one Rust call for the batch, off the event loop); until
    then ``remaining`` is an estimate from the text's length.
    """

    __slots__ = ("enqueued", "fresh", "ids", "index", "many", "offset", "owner", "slot",
                 "state", "text", "tokenize_seconds")

    def __init__(self, ids: np.ndarray | None, owner, index: int = 0, *, text: str | None = None,
                 slot: int = -1, fresh: bool = True, many: bool = False,
                 tokenize_seconds: float = 0.0) -> None:
        self.ids = ids                  # int64 [n], n >= 1; None until ``text`` is tokenized
        self.text = text
        self.offset = 0                 # tokens already processed
        self.owner = owner              # gets complete()/fail() (server/batcher.py)
        self.index = index              # position in the owner's request
        self.many = many                # the owner's request has several texts
        self.slot = slot                # sequence pool slot, or -1 for stateless rows
        self.fresh = fresh              # next step starts from zero state
        self.state: tuple[np.ndarray, ...] | None = None   # carried state (stateless only)
        self.tokenize_seconds = tokenize_seconds
        self.enqueued = 0.0             # perf_counter() when (re)queued

    @property
    def remaining(self) -> int:
        if self.ids is None:
            return max(1, len(self.text) // CHARS_PER_TOKEN)
        return self.ids.size - self.offset


#: Length estimate of a not-yet-tokenized text (word-level English: ~5 characters a token).
CHARS_PER_TOKEN = 5


@dataclass(slots=True)
class BatchResult:
    logits: np.ndarray          # float32 [B, labels]
    probabilities: np.ndarray   # float32 [B, labels]
    top: np.ndarray             # int64 [B], argmax per row
    real_tokens: int
    padded_tokens: int
    input_seconds: float
    infer_seconds: float
    output_seconds: float
    tokenize_seconds: float = 0.0
    #: Row index -> error for rows that could not run (a text without tokens).
    errors: dict[int, ServingError] | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 [B, labels] (new array). Tiny batches skip numpy's
    per-call overhead, which would otherwise dominate a batch of one."""
    if logits.size <= 16:
        rows = []
        for row in logits.tolist():
            top = max(row)
            exps = [math.exp(value - top) for value in row]
            total = sum(exps)
            rows.append([value / total for value in exps])
        return np.array(rows, dtype=np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class BatchExecutor:
    """Runs batches of rows on one :class:`OnnxModel` (one instance, one thread).

    A batch handed over by the scheduler may run as several ORT calls, one per group of
    rows of similar length (:func:`split_by_length`), when that is cheaper than padding
    every row to the longest one.
    """

    def __init__(self, model: OnnxModel, *, max_batch_size: int, chunk_length: int,
                 pad_id: int, pool: StatePool,
                 cost_model: CostModel | None = None,
                 encoder: TextEncoder | None = None) -> None:
        self.model = model
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.chunk_length = chunk_length
        self.pad_id = pad_id
        self.device_pool = pool.place(model, model.settings.state_pool)   # host or device
        self.cost_model = cost_model
        self._ids = np.empty(max_batch_size * chunk_length, dtype=np.int64)
        self._lengths = np.empty(max_batch_size, dtype=np.int64)
        shape = (max_batch_size, *model.state_shape)
        if self.device_pool is None:
            self.pool = tuple(pool)    # the sequence store's state arrays [slots, L*D, H]
            self._states = tuple(np.empty(shape, dtype=np.float32) for _ in model.state_names)
        else:
            device = (self.device_pool.device, self.device_pool.device_id)
            self._index = np.empty(max_batch_size, dtype=np.int64)
            self._zeros = [DeviceTensor(shape, *device) for _ in model.state_names]
            self._in = [DeviceTensor(shape, *device) for _ in model.state_names]
            self._out = [DeviceTensor(shape, *device) for _ in model.state_names]

    def execute(self, rows: Sequence[Row]) -> BatchResult:
        """One step of every row (1 <= len(rows) <= max_batch_size), in one or more calls.

        Rows still holding text are tokenized first, together; one that yields no token is
        reported in ``errors`` and does not run.
        """
        tokenize, errors = self._tokenize(rows)
        chunk = self.chunk_length
        live = list(range(len(rows))) if errors is None else \
            [i for i in range(len(rows)) if i not in errors]
        steps = [min(rows[i].ids.size - rows[i].offset, chunk) for i in live]
        groups = [[live[k] for k in group] for group in split_by_length(steps, self.cost_model)]
        if len(groups) == 1 and errors is None:
            result = self._run(rows, steps)
            result.tokenize_seconds = tokenize
            return result
        logits = np.zeros((len(rows), self.model.num_labels), dtype=np.float32)
        padded = 0
        timings = [0.0, 0.0, 0.0]
        by_row = dict(zip(live, steps, strict=True))
        for group in groups:
            if not group:
                continue
            part = self._run([rows[i] for i in group], [by_row[i] for i in group])
            logits[group] = part.logits
            padded += part.padded_tokens
            timings[0] += part.input_seconds
            timings[1] += part.infer_seconds
            timings[2] += part.output_seconds
        return BatchResult(logits, softmax(logits), logits.argmax(axis=1), sum(steps),
                           padded, *timings, tokenize_seconds=tokenize, errors=errors)

    def _tokenize(self, rows: Sequence[Row]) -> tuple[float, dict[int, ServingError] | None]:
        pending = [i for i, row in enumerate(rows) if row.ids is None]
        if not pending:
            return 0.0, None
        started = time.perf_counter()
        encoded = self.encoder.encode([rows[i].text for i in pending])
        errors = None
        for i, ids in zip(pending, encoded, strict=True):
            row = rows[i]
            row.ids = ids
            row.text = None
            if ids.size == 0:
                errors = errors or {}
                errors[i] = no_tokens(row.index, row.many)
        return time.perf_counter() - started, errors

    def _run(self, rows: Sequence[Row], steps: Sequence[int]) -> BatchResult:
        """One ORT call for one step of ``rows``."""
        started = time.perf_counter()
        batch = len(rows)
        width = max(steps)
        ids = self._ids[: batch * width].reshape(batch, width)
        ids.fill(self.pad_id)
        for i, row in enumerate(rows):
            ids[i, : steps[i]] = row.ids[row.offset: row.offset + steps[i]]
        lengths = self._lengths[:batch]
        lengths[:] = steps

        if self.device_pool is not None:
            assembled, inferred, logits = self._run_on_device(rows, steps, ids, lengths)
        else:
            states = self._gather(rows, batch)
            want_state = False
            for row, step in zip(rows, steps, strict=True):
                if row.slot >= 0 or step < row.ids.size - row.offset:
                    want_state = True
                    break

            assembled = time.perf_counter()
            logits, out_states = self.model.run(ids, lengths, states, want_state=want_state)
            inferred = time.perf_counter()
            if want_state:
                self._scatter(rows, steps, out_states)

        probabilities = softmax(logits)
        top = logits.argmax(axis=1)
        for row, step in zip(rows, steps, strict=True):
            row.offset += step
            row.fresh = False
        finished = time.perf_counter()
        return BatchResult(logits, probabilities, top, sum(steps), batch * width,
                           assembled - started, inferred - assembled, finished - inferred)

    def _gather(self, rows: Sequence[Row], batch: int) -> tuple[np.ndarray, ...] | None:
        """Input state for the batch, or None when every row starts from zeros."""
        slot_rows: list[int] = []
        slots: list[int] = []
        carried: list[int] = []
        for i, row in enumerate(rows):
            if row.fresh:
                continue
            if row.slot >= 0:
                slot_rows.append(i)
                slots.append(row.slot)
            elif row.state is not None:
                carried.append(i)
        if not slot_rows and not carried:
            return None
        states = tuple(buffer[:batch] for buffer in self._states)
        for buffer in states:
            buffer.fill(0.0)
        if slot_rows:
            for buffer, pool in zip(states, self.pool, strict=True):
                buffer[slot_rows] = pool[slots]
        for i in carried:
            for buffer, value in zip(states, rows[i].state, strict=True):
                buffer[i] = value
        return states

    def _scatter(self, rows: Sequence[Row], steps: Sequence[int],
                 out_states: tuple[np.ndarray, ...]) -> None:
        slot_rows: list[int] = []
        slots: list[int] = []
        for i, row in enumerate(rows):
            if row.slot >= 0:
                slot_rows.append(i)
                slots.append(row.slot)
            elif steps[i] < row.ids.size - row.offset:
                row.state = tuple(out[i].copy() for out in out_states)
            else:
                row.state = None
        if slot_rows:
            for pool, out in zip(self.pool, out_states, strict=True):
                pool[slots] = out[slot_rows]

    def _run_on_device(self, rows: Sequence[Row], steps: Sequence[int], ids: np.ndarray,
                       lengths: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Gather, run and scatter with the state on the device pool's device; returns
        (assembled, inferred, logits) like the host path's timings."""
        pool = self.device_pool
        batch = len(rows)
        index = self._index[:batch]
        carried: list[int] = []
        stateful = False
        for i, row in enumerate(rows):
            if not row.fresh and row.slot >= 0:
                index[i] = row.slot
                stateful = True
            else:
                index[i] = pool.zero_row
                if not row.fresh and row.slot < 0 and row.state is not None:
                    carried.append(i)
        inputs = self._zeros
        if stateful or carried:
            inputs = self._in
            pool.gather(pool.tensors, index, self._in)
            if carried:
                positions = np.array(carried, dtype=np.int64)
                values = [np.stack([rows[i].state[k] for i in carried])
                          for k in range(len(self._in))]
                pool.scatter(self._in, positions, values,
                             np.arange(len(carried), dtype=np.int64), target_rows=batch)
        assembled = time.perf_counter()
        logits = self.model.run_bound(ids, lengths, inputs, self._out)
        inferred = time.perf_counter()
        slot_rows = [i for i, row in enumerate(rows) if row.slot >= 0]
        if slot_rows:
            slots = np.array([rows[i].slot for i in slot_rows], dtype=np.int64)
            pool.scatter(pool.tensors, slots, self._out, np.array(slot_rows, dtype=np.int64))
        going_on = [i for i, row in enumerate(rows)
                    if row.slot < 0 and steps[i] < row.ids.size - row.offset]
        continuing = set(going_on)
        if going_on:
            host = pool.gather_to_host(self._out, np.array(going_on, dtype=np.int64))
            for j, i in enumerate(going_on):
                rows[i].state = tuple(array[j] for array in host)
        for i, row in enumerate(rows):
            if row.slot < 0 and i not in continuing:
                row.state = None
        return assembled, inferred, logits
