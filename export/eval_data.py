"""Labelled validation texts for the export's accuracy check, tokenized like training does.

Two sources:
- ``--data SOURCE``: anything ``rnnserve.train.data.load_labelled_texts`` understands, read
  with the checkpoint's label names, used whole (subsampled beyond ``limit``);
- otherwise the checkpoint's own validation split, rebuilt from the training config stored
  in its ``metrics.json`` with ``rnnserve.train.trainer.load_splits`` (same data, fraction
  and split seed, hence the same rows the trainer selected the checkpoint on).

Invariants:
- Token ids are ``rnnserve.train.batching.encode_texts`` ids (no special tokens, empty
  encodings become ``[UNK]``, truncated to ``max_length``): exactly what the model saw.
- Class ids index the checkpoint's labels.
- Subsampling (beyond ``limit`` rows) uses a fixed seed, so an export is reproducible.
- Failures raise ExportError saying which source failed and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ExportError

DEFAULT_LIMIT = 5000


@dataclass(frozen=True)
class EvalSet:
    token_lists: list[list[int]]
    labels: list[int]
    source: str


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, as the trainer encodes them (never empty)."""
    from rnnserve.train.batching import encode_texts

    return encode_texts(tokenizer, list(texts), max_length)


def _subsample(texts, labels, limit: int, seed: int):
    if len(texts) <= limit:
        return list(texts), list(labels)
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_eval_set(
    source: str, tokenizer, spec, limit: int = DEFAULT_LIMIT, seed: int = 0
) -> EvalSet:
    """All of ``source`` (up to ``limit`` rows) as validation data for ``spec``'s labels."""
    from rnnserve.train.data import load_labelled_texts

    try:
        data = load_labelled_texts(source, labels=list(spec.labels))
    except ValueError as exc:  # DataError: "path:line: problem"
        raise ExportError(f"--data {source}: {exc}") from None
    texts, labels = _subsample(data.texts, data.labels, limit, seed)
    return EvalSet(encode(tokenizer, texts, spec.max_length), labels, str(source))


def checkpoint_eval_set(
    checkpoint: Path, tokenizer, spec, limit: int = DEFAULT_LIMIT, seed: int = 0
) -> EvalSet:
    """The validation split the checkpoint was selected on (see module docstring)."""
    from rnnserve.train.trainer import TrainConfig, load_splits

    hint = "pass --data with labelled validation data"
    path = Path(checkpoint) / "metrics.json"
    try:
        recorded = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path} ({exc}); {hint}") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        raise ExportError(f"{path} does not record the training config and data; {hint}")
    try:
        config = TrainConfig.model_validate(recorded["config"])
    except ValueError:
        raise ExportError(f"{path}: the recorded training config is not valid; {hint}") from None
    try:
        validation = load_splits(config).validation
    except ValueError as exc:
        raise ExportError(
            f"cannot rebuild the checkpoint's validation split from {config.data!r}: {exc}; {hint}"
        ) from None
    if list(validation.label_names) != list(spec.labels):
        raise ExportError(
            f"the checkpoint's data now has labels {validation.label_names}, the model "
            f"{spec.labels}; {hint}"
        )
    texts, labels = _subsample(validation.texts, validation.labels, limit, seed)
    source = f"validation split of {config.data}"
    return EvalSet(encode(tokenizer, texts, spec.max_length), labels, source)
