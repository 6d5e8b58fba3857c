"""Classification metrics computed from a confusion matrix (numpy only).

``confusion[i, j]`` counts examples whose true class is ``i`` and predicted class is ``j``.
Macro-F1 averages the per-class F1 over all classes, a class with no true and no predicted
examples counting as F1 = 0 (as scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], num_labels: int) -> np.ndarray:
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    denominator = predicted + actual
    return np.divide(
        2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )


def macro_f1(confusion: np.ndarray) -> float:
    return float(per_class_f1(confusion).mean())
