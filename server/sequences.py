"""Open sequences of one model version: id -> state slot, expiry, cap, restart, end.

Memory: the recurrent state of every possible sequence lives in a preallocated
:class:`~.state_pool.StatePool`, one slot array per state tensor, of shape
``[max_sequences, layers*dirs, hidden]`` float32. A sequence owns one slot (row) of them,
i.e. ``layers*dirs*hidden*4`` bytes per state tensor (x2 for LSTM's h and c), plus one small
:class:`Sequence` object and its dict entry. On the host the pool is allocated with
``np.zeros`` (lazily committed by the OS), so resident memory follows the slots actually
used; freed slots are reused last-in-first-out to keep that set small. When the model serves
on CUDA the pool moves to device memory (``state_pool`` setting; server/state_pool.py) behind
the same ``pool[k][slot]`` interface.

Invariants (all on the event loop; no locks):
- A slot is owned by at most one open sequence. It returns to the free list only when its
  sequence is closed *and* has no chunk queued in the scheduler or running (``busy``), so
  the worker never writes state into a slot somebody else owns.
- A newly opened sequence never sees another sequence's state: its slot is zeroed on
  allocation, and its first step is marked ``fresh`` (runs from zero state, not the slot).
- A sequence with a chunk in flight or queued is never expired or evicted.
- Ids are compared exactly (``5`` and ``"5"`` are different sequences).
- Each open sequence holds one unit of its client's ``SequenceQuota``, taken by ``open`` and
  given back by the first ``close`` (whatever the reason).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from rnnserve.architecture import STATE_ITEM_BYTES

from .errors import AlreadyExists, NotFound, ResourceExhausted
from .quota import ANONYMOUS, SequenceQuota
from .state_pool import StatePool

#: How many recently expired/ended ids are remembered to explain a NOT_FOUND.
RECENT_IDS = 4096


class SequenceState:
    """One open sequence (id, slot, pending chunks, running totals)."""

    __slots__ = ("busy", "chunks", "client", "closed", "fresh", "key", "last", "last_used",
                 "pending", "slot", "tokens")

    def __init__(self, key: Hashable, slot: int, now: float, client: str = ANONYMOUS) -> None:
        self.key = key
        self.client = client
        self.slot = slot
        self.last_used = now
        self.pending: list = []         # chunks accepted but not yet submitted (FIFO)
        self.busy = False               # one chunk is queued in the scheduler or running
        self.closed = False
        self.fresh = True               # the next step starts from zero state
        self.tokens = 0                 # tokens since start / last reset
        self.chunks = 0                 # chunks since start / last reset
        self.last = None                # last Prediction (answers an empty final chunk)


class SequenceStore:
    """Table of open sequences over a preallocated state pool."""

    def __init__(self, *, capacity: int, state_count: int, state_shape: tuple[int, int],
                 idle_seconds: float, evict_idle: bool = False, telemetry=None,
                 quota: SequenceQuota | None = None) -> None:
        self.capacity = capacity
        self.quota = quota if quota is not None else SequenceQuota()
        self.idle_seconds = idle_seconds
        self.evict_idle = evict_idle
        self.telemetry = telemetry
        self.pool = StatePool(state_count, capacity, state_shape)
        self.state_bytes = state_count * state_shape[0] * state_shape[1] * STATE_ITEM_BYTES
        self._open: OrderedDict[Hashable, SequenceState] = OrderedDict()   # LRU first
        self._free = list(range(capacity - 1, -1, -1))                     # pop() -> 0, 1, ...
        self._recent: OrderedDict[Hashable, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def open_state_bytes(self) -> int:
        return len(self._open) * self.state_bytes

    # -- lifecycle ----------------------------------------------------------------------

    def open(self, key: Hashable, client: str = ANONYMOUS) -> SequenceState:
        """Open a new sequence for ``client``; AlreadyExists if ``key`` is open,
        ResourceExhausted if the pool or the client's quota is full."""
        if key in self._open:
            raise AlreadyExists(f"sequence {key!r} is already open; continue it without start, "
                                "end it first, or start it with restart to reset its state")
        self.quota.acquire(client)
        if not self._free:
            self.expire()
        if not self._free and self.evict_idle:
            self._evict_one()
        if not self._free:
            self.quota.release(client)
            raise ResourceExhausted(
                f"{self.capacity} sequences are open (the limit); end finished sequences, or "
                f"wait for idle ones to expire after {self.idle_seconds:g} s")
        slot = self._free.pop()
        for array in self.pool:
            array[slot] = 0.0
        state = SequenceState(key, slot, time.monotonic(), client)
        self._open[key] = state
        self._recent.pop(key, None)
        self._event("started")
        return state

    def get(self, key: Hashable) -> SequenceState:
        """The open sequence ``key``; NotFound (saying why, when known) otherwise."""
        state = self._open.get(key)
        if state is None:
            why = self._recent.get(key)
            reason = f"it {why}" if why else "it was never started on this server"
            raise NotFound(f"sequence {key!r} is not open ({reason}); start it again with "
                           "sequence_start=true")
        return state

    def find(self, key: Hashable) -> SequenceState | None:
        return self._open.get(key)

    def touch(self, state: SequenceState) -> None:
        state.last_used = time.monotonic()
        self._open.move_to_end(state.key)

    def restart(self, state: SequenceState) -> None:
        """Forget the sequence's history (counts, last prediction); its next dispatched chunk
        starts from zero state."""
        state.fresh = True
        state.tokens = state.chunks = 0
        state.last = None
        self._event("restarted")

    def close(self, state: SequenceState, why: str = "ended") -> None:
        """Remove from the table now (the id may be reused at once); free the slot as soon
        as no chunk of it is in flight."""
        if state.closed:
            return
        state.closed = True
        self.quota.release(state.client)
        if self._open.get(state.key) is state:
            del self._open[state.key]
        self._remember(state.key, why)
        self._event(why if why in ("ended", "expired", "evicted", "exported") else "ended")
        if not state.busy:
            self.release(state)

    def release(self, state: SequenceState) -> None:
        """Return the slot of a closed, idle sequence to the free list (once)."""
        if state.slot >= 0 and state.closed and not state.busy:
            self._free.append(state.slot)
            state.slot = -1
            self._report()

    def expire(self, now: float | None = None) -> int:
        """Close sequences idle longer than ``idle_seconds``; returns how many."""
        now = time.monotonic() if now is None else now
        horizon = now - self.idle_seconds
        expired = [s for s in self._idle_candidates() if s.last_used < horizon]
        for state in expired:
            self.close(state, "expired")
        return len(expired)

    def _idle_candidates(self):
        for state in self._open.values():   # least recently used first
            if state.busy or state.pending:
                continue
            yield state

    def _evict_one(self) -> None:
        for state in self._idle_candidates():
            self.close(state, "evicted")
            return

    def close_all(self, why: str = "ended") -> Sequence[SequenceState]:
        states = list(self._open.values())
        for state in states:
            self.close(state, why)
        return states

    # -- bookkeeping --------------------------------------------------------------------

    def _remember(self, key: Hashable, why: str) -> None:
        self._recent[key] = {"expired": f"expired after {self.idle_seconds:g} s idle",
                             "evicted": "was evicted to make room for a new sequence",
                             "failed": "was closed after an inference failure",
                             "cancelled": "was cancelled by its client",
                             "exported": "was exported and released (resume it from the "
                                         "snapshot with ImportSequence)"}.get(why, "was ended")
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _event(self, event: str) -> None:
        if self.telemetry is not None:
            self.telemetry.sequence_event(event)
            self._report()

    def _report(self) -> None:
        if self.telemetry is not None:
            self.telemetry.set_open_sequences(len(self._open), self.open_state_bytes)
