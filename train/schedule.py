"""The learning-rate schedules shared by classifier training and language-model pretraining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal


def lr_factor(schedule: Literal["constant", "linear"], total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate after ``step`` optimisation steps.

    ``linear`` decays to 0 at ``total_steps`` and stays there; ``constant`` is always 1.
    """
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: max(0.0, 1.0 - step / max(1, total_steps))
