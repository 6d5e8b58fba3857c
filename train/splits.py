"""Deterministic, stratified train/validation splits.

Invariant: ``split_train_validation(data, fraction, seed)`` depends only on the data's labels,
``fraction`` and ``seed``; every class with at least two examples keeps at least one in each
part, so validation accuracy is defined for every class that can be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rnnserve.train.data import LabelledTexts


@dataclass
class Splits:
    """The training and validation parts; both share ``label_names``."""

    train: LabelledTexts
    validation: LabelledTexts

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names


def split_train_validation(data: LabelledTexts, fraction: float, seed: int) -> Splits:
    """Hold out ``fraction`` of each class (at least one where the class has two or more)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    train_indices, validation_indices = [], []
    for label in range(len(data.label_names)):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        held = round(len(members) * fraction)
        if len(members) >= 2:
            held = min(max(held, 1), len(members) - 1)
        validation_indices.extend(members[:held].tolist())
        train_indices.extend(members[held:].tolist())
    if not validation_indices or not train_indices:
        raise ValueError(f"{data.source}: too few examples ({len(data)}) to split")
    return Splits(
        train=data.subset(sorted(train_indices)), validation=data.subset(sorted(validation_indices))
    )
