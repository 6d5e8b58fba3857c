"""What goes into a batch, and how a batch runs: rnnserve's one batch-composition policy.

Both decisions group rows by length, because a recurrent model's cost is its longest row's
steps times the rows in the call (padding is paid work):

1. Which rows run together (:func:`nearest_lengths`, called by the scheduler on the event
   loop, server/batcher.py): the oldest queued row always goes (no row starves); when more
   rows wait than fit, the rest of the batch is the window of ``limit`` rows closest in
   length to it among the first ``LOOKAHEAD_BATCHES x limit`` queued. Lengths here are
   estimates for rows not tokenized yet (tokenizing happens off the loop).
2. How that batch runs (:func:`split_by_length`, called by the executor in its thread,
   server/execution.py, with exact token counts): as one ORT call, or as up to
   ``2 ** MAX_SPLIT_DEPTH`` calls over groups of similar length when the measured
   :class:`CostModel` says the groups cost less than one padded call.

Nothing else decides batch membership or call grouping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: How many queued rows (in multiples of max_batch_size) are considered when grouping by length.
LOOKAHEAD_BATCHES = 4


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds of one ORT call over ``rows`` rows padded to ``steps`` time steps:
    ``call + steps * (step + row_step * rows)`` -- a per-call overhead, a per-time-step
    overhead (small-matrix inefficiency) and the per-row work. Measured at load
    (:meth:`OnnxModel.calibrate`); only the ratios matter."""

    call: float
    step: float
    row_step: float

    def cost(self, rows: int, steps: int) -> float:
        return self.call + steps * (self.step + self.row_step * rows)


def nearest_lengths(steps: Sequence[int], limit: int) -> list[int]:
    """Indices of the ``limit`` rows (of ``len(steps) > limit`` candidates, oldest first)
    whose lengths are closest to the oldest row's, the oldest included: the window of the
    length-sorted rows around row 0 that pads least."""
    count = len(steps)
    order = sorted(range(count), key=steps.__getitem__)
    sorted_steps = [steps[i] for i in order]
    oldest = order.index(0)
    prefix = [0]
    for step in sorted_steps:
        prefix.append(prefix[-1] + step)
    best, best_cost = 0, None
    for start in range(max(0, oldest - limit + 1), min(oldest, count - limit) + 1):
        end = start + limit
        cost = sorted_steps[end - 1] * limit - (prefix[end] - prefix[start])
        if best_cost is None or cost < best_cost:
            best, best_cost = start, cost
    return order[best: best + limit]


#: Splits are nested at most this deep, so a batch runs as at most 2**depth ORT calls
#: (padding efficiency gains flatten out quickly, per-call overheads do not).
MAX_SPLIT_DEPTH = 2


def split_by_length(steps: Sequence[int], model: CostModel | None) -> list[list[int]]:
    """Partition row indices into groups of similar length (one ORT call each) when the
    modelled cost of the groups is lower than one padded call.

    Recursive best single split over the rows sorted by length (O(n) per level, at most
    ``MAX_SPLIT_DEPTH`` levels); one group whenever splitting would not pay.
    """
    order = sorted(range(len(steps)), key=steps.__getitem__)
    if model is None or len(order) < 2 or steps[order[0]] == steps[order[-1]]:
        return [order]
    lengths = [steps[i] for i in order]
    groups: list[list[int]] = []

    def split(lo: int, hi: int, depth: int) -> None:   # rows order[lo:hi], ascending
        if depth == MAX_SPLIT_DEPTH:
            groups.append(order[lo:hi])
            return
        best, best_cost = -1, model.cost(hi - lo, lengths[hi - 1])
        for cut in range(lo + 1, hi):
            if lengths[cut - 1] == lengths[cut]:
                continue
            cost = model.cost(cut - lo, lengths[cut - 1]) + model.cost(hi - cut,
                                                                        lengths[hi - 1])
            if cost < best_cost:
                best, best_cost = cut, cost
        if best < 0:
            groups.append(order[lo:hi])
        else:
            split(lo, best, depth + 1)
            split(best, hi, depth + 1)

    split(0, len(order), 0)
    return groups
