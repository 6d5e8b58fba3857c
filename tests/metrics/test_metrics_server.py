"""A real server's /metrics and its KServe ModelStatistics agree; metrics off keeps statistics.

Runs without the prometheus binary (the endpoint is read and parsed directly), so these
checks hold on any machine; test_metrics_prometheus.py repeats them through Prometheus.
"""

from __future__ import annotations

import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

GRU = "tiny-gru"
TEXTS = ["a great film with fine actors", "the plot was boring", "loved it"]


def traffic(channel: grpc.Channel, calls: int = 7) -> None:
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    for i in range(calls):
        stub.Classify(pb.ClassifyRequest(texts=TEXTS[: 1 + i % 3], model=GRU), timeout=30)


def statistics(channel: grpc.Channel) -> service_pb2.ModelStatistics:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=GRU),
                                timeout=10).model_stats[0]


def samples(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model", GRU) == GRU:
                found.setdefault(sample.name, []).append(sample)
    return found


def total(found: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in found.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_endpoint_matches_model_statistics(tiny_repository):
    with start_server(tiny_repository, metrics_host="127.0.0.1", metrics_port=0) as server:
        assert server.server.metrics_port
        with server.channel() as channel:
            traffic(channel)
            stats = statistics(channel)
        found = samples(f"http://127.0.0.1:{server.server.metrics_port}/metrics")
        provider = server.registry.get(GRU).provider
    assert stats.inference_stats.success.count == 7
    assert total(found, "rnnserve_requests_total", code="OK") == 7
    assert total(found, "rnnserve_requests_total", api="text", kind="unary", code="OK") == 7
    assert stats.inference_count == total(found, "rnnserve_texts_total") == 1 + 2 + 3 + 1 + 2 + 3 + 1
    assert stats.execution_count == total(found, "rnnserve_executions_total") > 0
    assert stats.inference_stats.queue.count == total(found, "rnnserve_queue_wait_seconds_count")
    assert abs(stats.inference_stats.success.ns / 1e9 - total(
        found, "rnnserve_request_duration_seconds_sum", code="OK")) < 1e-6
    assert total(found, "rnnserve_request_duration_seconds_bucket", le="+Inf") == 7
    (info,) = found["rnnserve_execution_provider_info"]
    assert info.labels["provider"] == provider and provider.endswith("ExecutionProvider")


def test_metrics_off_keeps_kserve_statistics(tiny_repository):
    with start_server(tiny_repository, metrics_port=-1) as server:
        telemetry = server.server.telemetry
        assert not telemetry.enabled and telemetry.exposition() == b""
        with server.channel() as channel:
            traffic(channel, calls=4)
            stats = statistics(channel)
    assert stats.inference_stats.success.count == 4
    assert stats.inference_count == 1 + 2 + 3 + 1
    assert stats.execution_count > 0
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == \
        stats.inference_stats.compute_infer.count


def test_no_metrics_switch_starts_no_endpoint_but_keeps_statistics(tiny_repository):
    """``metrics_enabled=False`` (``--no-metrics``): no /metrics port, KServe statistics exact."""
    from offline import LSTM
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc
    from serving import start_server

    with start_server(tiny_repository, metrics_port=0, metrics_enabled=False) as handle:
        assert handle.server.metrics_port is None
        with handle.channel() as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            stub.Classify(pb.ClassifyRequest(texts=["a fine film", "bad"], model=LSTM))
        stats = handle.registry.get(LSTM).telemetry.statistics()
        assert stats.inference_stats.success.count == 1
        assert stats.inference_count == 2


def test_requests_no_model_took_are_counted(tiny_repository):
    """An unknown model or version on either API is refused before any engine and counted in
    rnnserve_unrouted_requests_total{api, kind, code}; metadata calls are not requests."""
    with start_server(tiny_repository, metrics_host="127.0.0.1", metrics_port=0) as server:
        with server.channel() as channel:
            text = sentiment_pb2_grpc.SentimentStub(channel)
            kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for call in (
                lambda: text.Classify(pb.ClassifyRequest(texts=["good"], model="nope")),
                lambda: text.Classify(pb.ClassifyRequest(texts=["good"], model=GRU,
                                                         version="9")),
                lambda: list(text.StreamClassify(iter([pb.StreamClassifyRequest(
                    text="good", model="nope")]))),
                lambda: kserve.ModelInfer(service_pb2.ModelInferRequest(model_name="nope")),
                lambda: text.GetModelMetadata(pb.GetModelMetadataRequest(model="nope")),
            ):
                try:
                    call()
                    raise AssertionError("an unknown model was answered")
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
        found = samples(f"http://127.0.0.1:{server.server.metrics_port}/metrics")
    name = "rnnserve_unrouted_requests_total"
    assert total(found, name, api="text", kind="unary", code="NOT_FOUND") == 2
    assert total(found, name, api="text", kind="stream", code="NOT_FOUND") == 1
    assert total(found, name, api="kserve", kind="unary", code="NOT_FOUND") == 1
    assert total(found, name) == 4
