"""What the engine answers: a :class:`Prediction` per text or chunk, and a
:class:`SequenceInfo` per open sequence.

A light module (numpy only): front-end processes import it without ONNX Runtime or the
tokenizer, and both travel between processes (server/ipc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    """One answer: the label, softmax probabilities and logits (float32 [labels], read-only
    views into the batch's arrays) and the tokens consumed by this text or chunk."""

    label: str
    probabilities: np.ndarray
    logits: np.ndarray
    tokens: int
    label_index: int = 0
    #: Sequence state snapshot taken right after this chunk, when the chunk asked for one.
    state: bytes | None = None
    #: The model version that answered, when the caller could not know it in advance (a
    #: front-end's request for "the latest version" or "wherever this sequence is open").
    version: str = ""


@dataclass(frozen=True, slots=True)
class SequenceInfo:
    """Running totals of one open sequence (since its start or last reset) and its last
    prediction (None before its first chunk ran)."""

    tokens: int
    chunks: int
    last: Prediction | None = None
