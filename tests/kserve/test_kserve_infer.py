"""ModelInfer on the stateless flavour: parity with the text API and offline ORT, raw and
typed contents, output selection, classification, the aio client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from kserve_support import (
    GRU,
    LSTM,
    SENTENCES,
    TOLERANCE,
    bytes_output,
    fp32_output,
    request,
    softmax,
    text_input,
)
from rnnserve.protos import sentiment_pb2 as pb


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_matches_text_api_and_offline(client, text_stub, offline, model):
    result = client.infer(model, [text_input(SENTENCES)], request_id="r-1")
    response = result.get_response()
    assert response.model_name == model and response.model_version == "1"
    assert response.id == "r-1"
    assert len(response.raw_output_contents) == 3  # outputs come back raw, like Triton
    logits = result.as_numpy("LOGITS")
    probabilities = result.as_numpy("PROBABILITIES")
    labels = result.as_numpy("LABEL")
    assert logits.shape == probabilities.shape == (len(SENTENCES), 2)
    assert logits.dtype == probabilities.dtype == np.float32
    assert labels.shape == (len(SENTENCES), 1)

    text = text_stub.Classify(pb.ClassifyRequest(texts=SENTENCES, model=model), timeout=30)
    reference = np.stack([offline[model].logits(t) for t in SENTENCES])
    for row, prediction in enumerate(text.predictions):
        np.testing.assert_allclose(logits[row], prediction.logits, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(probabilities[row], prediction.probabilities,
                                   atol=TOLERANCE, rtol=0)
        assert labels[row, 0].decode() == prediction.label
    np.testing.assert_allclose(logits, reference, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(probabilities, softmax(reference), atol=TOLERANCE, rtol=0)
    assert [x[0].decode() for x in labels] == [
        ["negative", "positive"][i] for i in reference.argmax(axis=1)]


def test_typed_contents_equal_raw(kstub):
    texts = SENTENCES[:4]
    raw = kstub.ModelInfer(request(LSTM, texts, raw=True), timeout=30)
    typed = kstub.ModelInfer(request(LSTM, texts, raw=False), timeout=30)
    np.testing.assert_array_equal(fp32_output(raw, "LOGITS"), fp32_output(typed, "LOGITS"))
    assert bytes_output(raw, "LABEL") == bytes_output(typed, "LABEL")


def test_unicode_and_single_row(client, offline):
    text = "le film était génial — really great fun ✨"
    result = client.infer(LSTM, [text_input([text])])
    np.testing.assert_allclose(result.as_numpy("LOGITS")[0], offline[LSTM].logits(text),
                               atol=TOLERANCE, rtol=0)


def test_requested_outputs_subset_in_request_order(client):
    outputs = [triton.InferRequestedOutput("LABEL"), triton.InferRequestedOutput("LOGITS")]
    response = client.infer(LSTM, [text_input(SENTENCES[:2])], outputs=outputs).get_response()
    assert [o.name for o in response.outputs] == ["LABEL", "LOGITS"]
    assert [o.datatype for o in response.outputs] == ["BYTES", "FP32"]
    assert len(response.raw_output_contents) == 2


@pytest.mark.parametrize("k", [1, 2, 5])
def test_classification_extension(client, k):
    outputs = [triton.InferRequestedOutput("PROBABILITIES", class_count=k)]
    result = client.infer(LSTM, [text_input(SENTENCES[:3])], outputs=outputs)
    plain = client.infer(LSTM, [text_input(SENTENCES[:3])]).as_numpy("PROBABILITIES")
    classes = result.as_numpy("PROBABILITIES")
    assert classes.shape == (3, min(k, 2))
    for row in range(3):
        order = np.argsort(-plain[row], kind="stable")
        for rank, item in enumerate(classes[row]):
            value, index, label = item.decode().split(":")
            assert int(index) == order[rank]
            assert label == ["negative", "positive"][int(index)]
            assert abs(float(value) - plain[row, int(index)]) < 1e-6


def test_aio_client_concurrent_requests(kserve_server, offline):
    rng = np.random.default_rng(3)
    batches = [[SENTENCES[i] for i in rng.integers(0, len(SENTENCES), size=int(n))]
               for n in rng.integers(1, 5, size=24)]

    async def run():
        async with triton_aio.InferenceServerClient(kserve_server.address) as aio:
            assert await aio.is_server_ready()
            calls = [aio.infer(GRU if i % 2 else LSTM, [text_input(texts)])
                     for i, texts in enumerate(batches)]
            return await asyncio.gather(*calls)

    results = asyncio.run(run())
    for i, (texts, result) in enumerate(zip(batches, results, strict=True)):
        model = GRU if i % 2 else LSTM
        reference = np.stack([offline[model].logits(t) for t in texts])
        np.testing.assert_allclose(result.as_numpy("LOGITS"), reference, atol=TOLERANCE,
                                   rtol=0)
