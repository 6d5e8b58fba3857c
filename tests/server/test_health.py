"""grpc.health.v1: NOT_SERVING until every model is warm, per-model names, NOT_SERVING
again while draining; reflection lists the services."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from offline import GRU, LSTM
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from rnnserve.server.engine import ModelEngine
from serving import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_not_serving_until_warm_then_serving(tiny_repository, monkeypatch):
    gate = threading.Event()
    original = ModelEngine.load

    def slow_load(self):
        gate.wait(20)
        original(self)

    monkeypatch.setattr(ModelEngine, "load", slow_load)
    server = start_server(tiny_repository, wait_ready=False)
    try:
        channel = server.channel()
        for service in ("", "rnnserve.v1.Sentiment", "inference.GRPCInferenceService",
                        f"model/{LSTM}", f"model/{LSTM}/1", f"model/{GRU}"):
            assert _check(channel, service) == NOT_SERVING
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(texts=["good"], model=LSTM))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not ready" in info.value.details()
        gate.set()
        server.wait_ready(60)
        for service in ("", "rnnserve.v1.Sentiment", f"model/{LSTM}", f"model/{GRU}/1"):
            assert _check(channel, service) == SERVING
        with pytest.raises(grpc.RpcError) as info:
            _check(channel, "model/nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        gate.set()
        server.stop()


def test_draining_turns_not_serving(tiny_repository):
    server = start_server(tiny_repository, drain_delay_seconds=1.0)
    channel = server.channel()
    assert _check(channel) == SERVING
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    deadline = time.monotonic() + 0.8
    seen = set()
    while time.monotonic() < deadline:
        seen.add(_check(channel))
        seen.add(_check(channel, f"model/{LSTM}"))
        time.sleep(0.05)
    assert NOT_SERVING in seen
    # still answering during the drain delay
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    stopping.join(10)
    assert not stopping.is_alive()
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(texts=["good"], model=LSTM), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"rnnserve.v1.Sentiment", "inference.GRPCInferenceService",
            "grpc.health.v1.Health"} <= services
    method = database.FindFileContainingSymbol("rnnserve.v1.Sentiment")
    assert method.name == "rnnserve/v1/sentiment.proto"
