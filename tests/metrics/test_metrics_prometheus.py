"""A real Prometheus scrapes a real rnnserve: the numbers it stores are the ones we sent.

The test starts Debian's ``prometheus`` binary itself (free port, temp TSDB, 1 s scrapes, the
deploy recording rules), then a server on the tiny repository with its metrics port pointing
there, drives text-API (unary + stream) and KServe traffic, and queries Prometheus' HTTP API.
It also checks KServe ``ModelStatistics`` against what Prometheus stored, and that every query
of the Grafana dashboard evaluates. Skipped only when the binary is absent
(``.ci/install-prometheus.sh`` installs it).
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from rnnserve.bench.prometheus_runner import PrometheusRunner, free_port, prometheus_binary
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.skipif(prometheus_binary() is None,
                                reason="prometheus not installed (.ci/install-prometheus.sh)")

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rnnserve.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "rnnserve.json"
LSTM = "tiny-lstm"
SENTENCES = ["a great film with fine actors", "the plot was boring and the ending awful",
             "not very good but the music was fun", "loved it", "hated the story , bad movie"]


def kserve_request(texts: list[str]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=LSTM)
    tensor = request.inputs.add(name="TEXT", datatype="BYTES")
    tensor.shape.extend([len(texts), 1])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def drive(channel: grpc.Channel) -> dict[str, int]:
    """Known traffic to tiny-lstm; returns request and text counts by series."""
    text = sentiment_pb2_grpc.SentimentStub(channel)
    kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    rng = np.random.default_rng(0)
    batches = [[SENTENCES[i] for i in rng.integers(0, len(SENTENCES), size=int(n))]
               for n in rng.integers(1, 4, size=24)]
    with ThreadPoolExecutor(8) as pool:  # concurrent, so some calls share a batch
        list(pool.map(lambda texts: text.Classify(pb.ClassifyRequest(texts=texts, model=LSTM),
                                                  timeout=30), batches))
        pairs = [[SENTENCES[i % 5], SENTENCES[(i + 1) % 5]] for i in range(6)]
        list(pool.map(lambda texts: kserve.ModelInfer(kserve_request(texts), timeout=30),
                      pairs))
    with pytest.raises(grpc.RpcError) as failed:
        text.Classify(pb.ClassifyRequest(texts=[], model=LSTM), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    chunks = [pb.StreamClassifyRequest(text="a great film", model=LSTM),
              pb.StreamClassifyRequest(text="with a boring plot"),
              pb.StreamClassifyRequest(text="but fine actors", end=True)]
    assert len(list(text.StreamClassify(iter(chunks), timeout=30))) == 3
    return {"text_unary_ok": len(batches), "text_texts": sum(map(len, batches)),
            "kserve_ok": 6, "kserve_texts": 12, "invalid": 1, "stream": 3,
            "total": len(batches) + 6 + 1 + 3}


def value(prometheus: PrometheusRunner, expr: str) -> float:
    result = prometheus.scalar(expr)
    assert result is not None, f"no data for {expr}"
    return result


def test_prometheus_stores_what_the_server_did(tiny_repository, tmp_path):
    metrics_port = free_port()
    prometheus = PrometheusRunner([f"127.0.0.1:{metrics_port}"], tmp_path / "prometheus",
                                  rule_files=[RULES]).start()
    try:
        with start_server(tiny_repository, metrics_host="127.0.0.1",
                          metrics_port=metrics_port) as server:
            # A first scrape before the traffic, so rate() has a baseline.
            prometheus.wait_for('up{job="rnnserve"}', lambda v: v == 1, timeout=20)
            with server.channel() as channel:
                sent = drive(channel)
                stats = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                    service_pb2.ModelStatisticsRequest(name=LSTM), timeout=10).model_stats[0]
            m = f'model="{LSTM}"'
            prometheus.wait_for(f"sum(rnnserve_requests_total{{{m}}})",
                                lambda v: v == sent["total"], timeout=15)
            check_counts(prometheus, m, sent)
            check_statistics_agree(prometheus, m, stats, sent)
            check_latency_and_batching(prometheus, m)
            prometheus.wait_for(f'model_api:rnnserve_request_duration_seconds:p99_1m{{{m}}}',
                                lambda v: math.isfinite(v) and v > 0, timeout=10)
            check_dashboard_queries(prometheus)
    finally:
        prometheus.stop()


def check_counts(prometheus: PrometheusRunner, m: str, sent: dict[str, int]) -> None:
    def requests(labels: str) -> float:
        return value(prometheus, f"sum(rnnserve_requests_total{{{m}, {labels}}})")

    assert requests('api="text", kind="unary", code="OK"') == sent["text_unary_ok"]
    assert requests('api="kserve", kind="unary", code="OK"') == sent["kserve_ok"]
    assert requests('api="text", kind="stream", code="OK"') == sent["stream"]
    assert value(prometheus, f'sum(rnnserve_request_failures_total{{{m}}})') == sent["invalid"]
    failures = prometheus.query(f"rnnserve_request_failures_total{{{m}}}")
    assert [(r["metric"]["api"], r["metric"]["kind"], r["metric"]["code"]) for r in failures] \
        == [("text", "unary", "INVALID_ARGUMENT")]
    assert value(prometheus, f'sum(rnnserve_texts_total{{{m}, api="text"}})') == \
        sent["text_texts"] + sent["stream"]
    assert value(prometheus, f'sum(rnnserve_texts_total{{{m}, api="kserve"}})') == \
        sent["kserve_texts"]
    assert value(prometheus, f'rnnserve_sequence_events_total{{{m}, event="started"}}') == 1
    assert value(prometheus, f'rnnserve_sequence_events_total{{{m}, event="ended"}}') == 1
    assert value(prometheus, f"rnnserve_open_sequences{{{m}}}") == 0
    (provider,) = prometheus.query(f"rnnserve_execution_provider_info{{{m}}}")
    assert provider["metric"]["provider"].endswith("ExecutionProvider")
    assert value(prometheus, f"rnnserve_model_load_seconds{{{m}}}") > 0
    (build,) = prometheus.query("rnnserve_build_info")
    assert build["metric"]["version"] and build["metric"]["onnxruntime"] != "unknown"


def check_statistics_agree(prometheus: PrometheusRunner, m: str, stats, sent) -> None:
    """KServe ModelStatistics (read right after the traffic) = what Prometheus stored."""
    success = stats.inference_stats.success
    assert success.count == sent["total"] - sent["invalid"]
    assert success.count == value(prometheus, f'sum(rnnserve_requests_total{{{m}, code="OK"}})')
    assert stats.inference_stats.fail.count == sent["invalid"]
    assert stats.inference_count == value(prometheus, f"sum(rnnserve_texts_total{{{m}}})")
    assert stats.execution_count == value(prometheus, f"rnnserve_executions_total{{{m}}}")
    assert stats.execution_count == value(prometheus, f"rnnserve_batch_size_count{{{m}}}")
    assert stats.inference_stats.queue.count == value(
        prometheus, f"rnnserve_queue_wait_seconds_count{{{m}}}")
    assert stats.inference_stats.queue.ns / 1e9 == pytest.approx(
        value(prometheus, f"rnnserve_queue_wait_seconds_sum{{{m}}}"), rel=1e-6)
    assert success.ns / 1e9 == pytest.approx(value(
        prometheus, f'sum(rnnserve_request_duration_seconds_sum{{{m}, code="OK"}})'), rel=1e-6)
    assert sum(b.compute_infer.ns for b in stats.batch_stats) / 1e9 == pytest.approx(
        value(prometheus, f'rnnserve_compute_seconds_sum{{{m}, phase="infer"}}'), rel=1e-6)
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == value(
        prometheus, f"rnnserve_batch_size_sum{{{m}}}")


def check_latency_and_batching(prometheus: PrometheusRunner, m: str) -> None:
    for q in (0.5, 0.99):
        p = value(prometheus, f"histogram_quantile({q}, sum by (le) "
                              f'(rnnserve_request_duration_seconds_bucket{{{m}, code="OK"}}))')
        assert math.isfinite(p) and 0 < p < 10
    for name in ("queue_wait_seconds", "tokenize_seconds"):
        assert value(prometheus, f"rnnserve_{name}_count{{{m}}}") > 0
    p99 = value(prometheus, f'histogram_quantile(0.99, rnnserve_compute_seconds_bucket{{{m}, '
                            f'phase="infer"}})')
    assert math.isfinite(p99) and p99 > 0
    mean_batch = value(prometheus, f"rnnserve_batch_size_sum{{{m}}} / "
                                   f"rnnserve_batch_size_count{{{m}}}")
    assert mean_batch >= 1
    padding = value(prometheus, f"rnnserve_padding_ratio_sum{{{m}}} / "
                                f"rnnserve_padding_ratio_count{{{m}}}")
    assert padding >= 1
    assert value(prometheus, f"rnnserve_tokens_total{{{m}}}") > 0


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) with Grafana's variables replaced as Grafana would."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            queries.append((panel["title"], re.sub(r"\$(model|api)\b", ".*", expr)))
    return queries


def check_dashboard_queries(prometheus: PrometheusRunner) -> None:
    """Every dashboard query parses and evaluates; the core panels have data."""
    empty = []
    for title, expr in dashboard_queries():
        if not prometheus.query(expr):
            empty.append(title)
    # No errors/evictions/pending in this traffic: those panels may legitimately be empty.
    allowed_empty = {"Errors by gRPC status", "Error ratio", "Sequence events/s",
                     "Pending requests"}
    assert set(empty) <= allowed_empty, empty
