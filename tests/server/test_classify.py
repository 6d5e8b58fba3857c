"""Classify: concurrent clients get exactly the offline logits; long texts run in chunks."""

from __future__ import annotations

import numpy as np
import pytest
from offline import GRU, LSTM, random_text
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

TOLERANCE = 1e-5


def _check(response, texts, reference, model):
    assert response.model == model and response.version == "1"
    assert list(response.labels) == ["negative", "positive"]
    assert len(response.predictions) == len(texts)
    for prediction, text in zip(response.predictions, texts, strict=True):
        expected = reference.logits(text)
        np.testing.assert_allclose(prediction.logits, expected, atol=TOLERANCE, rtol=0)
        probabilities = np.exp(expected - expected.max())
        probabilities /= probabilities.sum()
        np.testing.assert_allclose(prediction.probabilities, probabilities, atol=TOLERANCE)
        assert prediction.label == response.labels[int(np.argmax(expected))]
        assert prediction.label_index == int(np.argmax(expected))
        assert prediction.tokens == len(reference.ids(text))


def test_200_concurrent_clients_get_offline_logits(stub, offline, server):
    rng = np.random.default_rng(1)
    calls = []
    for i in range(200):
        model = LSTM if i % 2 else GRU
        texts = [random_text(rng, 1, 60) for _ in range(int(rng.integers(1, 4)))]
        request = pb.ClassifyRequest(texts=texts, model=model)
        calls.append((stub.Classify.future(request, timeout=60), texts, model))
    for future, texts, model in calls:
        _check(future.result(), texts, offline[model], model)
    executed = server.registry.get(LSTM).telemetry.snapshot()
    assert executed is not None


def test_batches_really_merge_requests(tiny_repository, offline):
    """With a generous queue delay, concurrent single-text calls share ORT calls."""
    with start_server(tiny_repository, max_queue_delay_us=200_000,
                      adaptive_queue_delay=False, max_batch_size=16) as server:
        engine = server.registry.get(LSTM)
        seen = []
        original = engine.scheduler.executors[0].execute

        def spy(rows):
            seen.append(len(rows))
            return original(rows)

        engine.scheduler.executors[0].execute = spy
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        rng = np.random.default_rng(2)
        texts = [random_text(rng, 1, 20) for _ in range(32)]
        futures = [stub.Classify.future(pb.ClassifyRequest(texts=[t], model=LSTM))
                   for t in texts]
        for future, text in zip(futures, texts, strict=True):
            _check(future.result(timeout=30), [text], offline[LSTM], LSTM)
        assert max(seen) > 1 and max(seen) <= 16
        assert sum(seen) == 32


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_long_text_in_chunks_equals_whole(tiny_repository, offline, model):
    """chunk_length 7: a 300-token text runs in 43 steps with carried state, and its
    logits equal one offline pass over the whole text."""
    rng = np.random.default_rng(3)
    texts = [random_text(rng, 300, 300), random_text(rng, 5, 5), random_text(rng, 20, 40)]
    with start_server(tiny_repository, chunk_length=7, max_batch_size=4) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        response = stub.Classify(pb.ClassifyRequest(texts=texts, model=model), timeout=60)
    _check(response, texts, offline[model], model)


def test_default_model_and_explicit_version(tiny_repository, offline):
    with start_server(tiny_repository, default_model=GRU) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        response = stub.Classify(pb.ClassifyRequest(texts=["great fun"]))
        assert response.model == GRU
        response = stub.Classify(pb.ClassifyRequest(texts=["great fun"], model=LSTM,
                                                    version="1"))
        _check(response, ["great fun"], offline[LSTM], LSTM)


def test_list_models_and_metadata(stub):
    listing = stub.ListModels(pb.ListModelsRequest())
    assert {(m.name, m.version, m.ready, m.latest) for m in listing.models} == {
        (LSTM, "1", True, True), (GRU, "1", True, True)}
    meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=LSTM))
    assert meta.cell == "lstm" and meta.layers == 2 and meta.hidden == 24
    assert meta.state_bytes_per_sequence == 2 * 24 * 4 * 2
    assert meta.streaming and meta.precision == "fp32" and list(meta.versions) == ["1"]
    assert meta.execution_provider == "CPUExecutionProvider"
    gru = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=GRU, version="1"))
    assert gru.state_bytes_per_sequence == 2 * 24 * 4
