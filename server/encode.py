"""Hand-encoded response messages of the text API (the hot path's serializer).

A response is mostly constant per model version (model, version, labels) plus a few numbers
per prediction. Building protobuf objects field by field and serializing them costs more
than the rest of the request path, so responses are assembled as bytes: constant parts are
encoded once per engine, probabilities and logits are float32 arrays whose little-endian
bytes *are* the packed ``repeated float`` encoding.

Invariant: ``encode_*`` returns exactly ``message.SerializeToString()`` of the equivalent
``rnnserve.v1`` message (proto3 rules: fields in number order, zero/empty scalars omitted,
packed repeated floats); tests/server/test_encode.py checks it against the generated
classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .prediction import Prediction

_SMALL = [bytes([n]) for n in range(128)]


def varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(tag: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return bytes([tag]) + varint(len(data)) + data if data else b""


def _floats(tag: int, values: np.ndarray) -> bytes:
    data = values.astype("<f4", copy=False).tobytes()
    return bytes([tag]) + varint(len(data)) + data if data else b""


class ResponseEncoder:
    """Encodes Classify / StreamClassify responses for one model version."""

    def __init__(self, name: str, version: str, labels: Sequence[str]) -> None:
        labels_bytes = b"".join(_string(0x1A, label) for label in labels)
        # ClassifyResponse: model=1, version=2, labels=3 (then predictions=4)
        self.classify_prefix = _string(0x0A, name) + _string(0x12, version) + labels_bytes
        # StreamClassifyResponse: model=4, version=5, labels=6
        self.stream_header = (_string(0x22, name) + _string(0x2A, version)
                              + b"".join(_string(0x32, label) for label in labels))
        # Prediction: label=1, label_index=2
        self._label = [_string(0x0A, label) + (b"\x10" + varint(index) if index else b"")
                       for index, label in enumerate(labels)]

    def prediction(self, prediction: Prediction) -> bytes:
        """``rnnserve.v1.Prediction`` bytes."""
        tokens = prediction.tokens
        return b"".join((self._label[prediction.label_index],
                         _floats(0x1A, prediction.probabilities),
                         _floats(0x22, prediction.logits),
                         b"\x28" + varint(tokens) if tokens else b""))

    def classify(self, predictions: Sequence[Prediction]) -> bytes:
        """``rnnserve.v1.ClassifyResponse`` bytes."""
        parts = [self.classify_prefix]
        for prediction in predictions:
            body = self.prediction(prediction)
            parts.append(b"\x22" + varint(len(body)) + body)
        return b"".join(parts)

    def stream(self, prediction: Prediction, *, chunk_index: int, total_tokens: int,
               sequence_id: str, end: bool, header: bool) -> bytes:
        """``rnnserve.v1.StreamClassifyResponse`` bytes (model/version/labels if header)."""
        body = self.prediction(prediction)
        parts = [b"\x0a" + varint(len(body)) + body]
        if chunk_index:
            parts.append(b"\x10" + varint(chunk_index))
        if total_tokens:
            parts.append(b"\x18" + varint(total_tokens))
        if header:
            parts.append(self.stream_header)
        parts.append(_string(0x3A, sequence_id))
        if end:
            parts.append(b"\x40\x01")
        if prediction.state:                # state=9, bytes
            parts.append(b"\x4a" + varint(len(prediction.state)) + prediction.state)
        return b"".join(parts)
