"""The stateful flavour (<model>-stream): sequence_id/start/end over ModelInfer and
ModelStreamInfer, interleaved sequences, parity with the text API's StreamClassify."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from kserve_support import GRU, LSTM, TOLERANCE, request, text_input
from rnnserve.protos import sentiment_pb2 as pb

CHUNKS = ["the film was", "really great fun", "but the ending", "was awful"]
OTHER = ["hated the story", "loved the music", "fine actors"]


def _step(client, model, text, sequence_id, start=False, end=False):
    result = client.infer(f"{model}-stream", [text_input([text])], sequence_id=sequence_id,
                          sequence_start=start, sequence_end=end)
    return result.as_numpy("LOGITS")[0]


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_sequence_matches_offline_and_text_stream(client, text_stub, offline, model):
    got = [
        _step(client, model, chunk, 101, start=i == 0, end=i == len(CHUNKS) - 1)
        for i, chunk in enumerate(CHUNKS)
    ]
    expected = offline[model].stream(CHUNKS)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=TOLERANCE, rtol=0)

    requests = [pb.StreamClassifyRequest(text=c, model=model, end=i == len(CHUNKS) - 1)
                for i, c in enumerate(CHUNKS)]
    text = [r.prediction.logits for r in text_stub.StreamClassify(iter(requests), timeout=30)]
    np.testing.assert_allclose(np.stack(got), np.asarray(text), atol=TOLERANCE, rtol=0)


def test_interleaved_sequences_int_and_string_ids(client, offline):
    ids = [7, "seven", 8]
    texts = {7: CHUNKS, "seven": OTHER, 8: CHUNKS[::-1]}
    got: dict = {i: [] for i in ids}
    for step in range(4):
        for sid in ids:
            chunks = texts[sid]
            if step < len(chunks):
                got[sid].append(_step(client, LSTM, chunks[step], sid, start=step == 0,
                                      end=step == len(chunks) - 1))
    for sid in ids:
        np.testing.assert_allclose(np.stack(got[sid]), np.stack(offline[LSTM].stream(texts[sid])),
                                   atol=TOLERANCE, rtol=0)


def test_ended_sequence_is_gone_and_start_restarts(client, offline, kstub):
    _step(client, LSTM, "fine", 55, start=True, end=True)
    with pytest.raises(triton.InferenceServerException) as error:
        _step(client, LSTM, "more", 55)
    assert error.value.status() == "StatusCode.NOT_FOUND"
    # A repeated START on an open id restarts it from zero state (as Triton does).
    _step(client, LSTM, "the film was awful", 56, start=True)
    restarted = _step(client, LSTM, CHUNKS[0], 56, start=True)
    np.testing.assert_allclose(restarted, offline[LSTM].stream(CHUNKS[:1])[0],
                               atol=TOLERANCE, rtol=0)
    _step(client, LSTM, "", 56, end=True)  # an empty final chunk just ends it


def _stream(kserve_server, requests):
    """Send ``requests`` (kwargs of async_stream_infer) on one stream; return the results."""
    responses: queue.Queue = queue.Queue()
    with triton.InferenceServerClient(kserve_server.address) as c:
        c.start_stream(callback=lambda result, error: responses.put((result, error)))
        for kwargs in requests:
            c.async_stream_infer(**kwargs)
        out = [responses.get(timeout=30) for _ in requests]
        c.stop_stream()
    return out


def test_stream_interleaved_sequences_and_stateless(kserve_server, offline):
    plan = []
    for step in range(max(len(CHUNKS), len(OTHER))):
        for sid, chunks in ((31, CHUNKS), (32, OTHER)):
            if step < len(chunks):
                plan.append({
                    "model_name": f"{GRU}-stream", "inputs": [text_input([chunks[step]])],
                    "request_id": f"{sid}:{step}", "sequence_id": sid,
                    "sequence_start": step == 0, "sequence_end": step == len(chunks) - 1})
        plan.append({"model_name": GRU, "inputs": [text_input(OTHER[:2])],
                     "request_id": f"plain:{step}"})
    results = _stream(kserve_server, plan)
    got: dict = {}
    for result, error in results:
        assert error is None, error
        rid = result.get_response().id
        got[rid] = result.as_numpy("LOGITS")
    assert len(got) == len(plan)
    for sid, chunks in ((31, CHUNKS), (32, OTHER)):
        expected = offline[GRU].stream(chunks)
        for step in range(len(chunks)):
            np.testing.assert_allclose(got[f"{sid}:{step}"][0], expected[step],
                                       atol=TOLERANCE, rtol=0)
    reference = np.stack([offline[GRU].logits(t) for t in OTHER[:2]])
    np.testing.assert_allclose(got["plain:0"], reference, atol=TOLERANCE, rtol=0)


def test_stream_errors_do_not_end_the_stream(kserve_server, kstub):
    def messages():
        bad = request(LSTM, ["x"], datatype="FP32")
        bad.id = "bad"
        yield bad
        unknown = request("nope", ["x"])
        unknown.id = "unknown"
        yield unknown
        good = request(LSTM, ["loved it"])
        good.id = "good"
        yield good

    responses = list(kstub.ModelStreamInfer(messages(), timeout=30))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"bad", "unknown", "good"}
    assert "data-type is 'FP32'" in by_id["bad"].error_message
    assert "Request for unknown model: 'nope' is not found" in by_id["unknown"].error_message
    assert not by_id["good"].error_message
    assert list(by_id["good"].infer_response.outputs[0].shape) == [1, 2]
