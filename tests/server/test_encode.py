"""Hand-encoded responses are byte-identical to the generated classes' serialization."""

from __future__ import annotations

import numpy as np
import pytest
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.server.batcher import Prediction
from rnnserve.server.encode import ResponseEncoder, varint

LABELS = ["negative", "positive", "ñeutral"]


def _prediction(index: int, tokens: int) -> Prediction:
    logits = np.array([0.5, -1.25, 3.0 + index], dtype=np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum()
    return Prediction(LABELS[index], probabilities.astype(np.float32), logits, tokens, index)


def _message(prediction: Prediction) -> pb.Prediction:
    return pb.Prediction(label=prediction.label, label_index=prediction.label_index,
                         probabilities=prediction.probabilities.tolist(),
                         logits=prediction.logits.tolist(), tokens=prediction.tokens)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_classify_response_bytes(count):
    encoder = ResponseEncoder("tiny-lstm", "12", LABELS)
    predictions = [_prediction(i % 3, i * 70) for i in range(count)]
    expected = pb.ClassifyResponse(model="tiny-lstm", version="12", labels=LABELS,
                                   predictions=[_message(p) for p in predictions])
    assert encoder.classify(predictions) == expected.SerializeToString()


@pytest.mark.parametrize(("header", "end", "index", "total", "state"),
                         [(True, False, 1, 3, None), (False, True, 200, 100_000, b"\x00" * 300),
                          (False, False, 0, 0, b""), (True, True, 2, 5, b"RNSQ\x01")])
def test_stream_response_bytes(header, end, index, total, state):
    encoder = ResponseEncoder("m", "1", LABELS)
    base = _prediction(2, 0)
    prediction = Prediction(base.label, base.probabilities, base.logits, 0, 2, state)
    expected = pb.StreamClassifyResponse(prediction=_message(prediction), chunk_index=index,
                                         total_tokens=total, sequence_id="stream-9", end=end,
                                         state=state or b"")
    if header:
        expected.model, expected.version = "m", "1"
        expected.labels.extend(LABELS)
    got = encoder.stream(prediction, chunk_index=index, total_tokens=total,
                         sequence_id="stream-9", end=end, header=header)
    assert got == expected.SerializeToString()


def test_varint():
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        message = pb.StreamClassifyResponse(chunk_index=value)
        assert message.SerializeToString() == (b"\x10" + varint(value) if value else b"")
