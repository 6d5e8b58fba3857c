"""ModelTelemetry on its own: Prometheus exposition and KServe ModelStatistics agree.

Both views are built from the same cumulative numbers, so every identity below is exact
(durations as integer nanoseconds on the statistics side, seconds on the Prometheus side).
"""

from __future__ import annotations

import random
import threading

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.server.telemetry import (
    REQUEST_BUCKETS,
    ModelTelemetry,
    ServerTelemetry,
    prepare_multiprocess_dir,
)

CODES = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED)


def drive(telemetry: ModelTelemetry, seed: int = 0, requests: int = 300) -> dict:
    """A reproducible mixed workload; returns what was sent, for exact comparisons."""
    rng = random.Random(seed)
    sent = {"ok": 0, "fail": 0, "texts_ok": 0, "rows": 0, "executions": 0, "sizes": {},
            "real": 0, "padded": 0}
    for _ in range(requests):
        code = rng.choice(CODES) if rng.random() < 0.2 else grpc.StatusCode.OK
        texts = rng.randint(1, 8)
        telemetry.request_finished(api=rng.choice(("text", "kserve")),
                                   kind=rng.choice(("unary", "stream")), code=code,
                                   seconds=rng.uniform(0.0001, 0.3), texts=texts)
        if code is grpc.StatusCode.OK:
            sent["ok"] += 1
            sent["texts_ok"] += texts
        else:
            sent["fail"] += 1
    for _ in range(requests // 3):
        size = rng.choice((1, 2, 3, 8, 32))
        lengths = [rng.randint(1, 40) for _ in range(size)]
        telemetry.rows_executed(
            queue_seconds=[rng.uniform(0, 0.02) for _ in range(size)],
            tokenize_seconds=rng.uniform(0, 0.001), input_seconds=rng.uniform(0, 0.001),
            infer_seconds=rng.uniform(0.0005, 0.05), output_seconds=rng.uniform(0, 0.001),
            batch_size=size, real_tokens=sum(lengths), padded_tokens=size * max(lengths))
        sent["rows"] += size
        sent["executions"] += 1
        sent["sizes"][size] = sent["sizes"].get(size, 0) + 1
        sent["real"] += sum(lengths)
        sent["padded"] += size * max(lengths)
    for event in ("started", "started", "ended", "expired", "evicted", "restarted"):
        telemetry.sequence_event(event)
    telemetry.set_open_sequences(3, 3 * 2 * 2 * 24 * 4)
    telemetry.set_pending(5)
    return sent


def scrape(server: ServerTelemetry) -> dict[str, list]:
    """name -> samples of the server's exposition, parsed by prometheus_client."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(server.exposition().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(params=["memory", "files"])
def server(request, tmp_path) -> ServerTelemetry:
    """Each test runs in-memory and in multiprocess mode (this process's files only)."""
    if request.param == "memory":
        return ServerTelemetry(process_metrics=False)
    return ServerTelemetry(process_metrics=False,
                           multiprocess_dir=prepare_multiprocess_dir(tmp_path / "mp"))


def test_statistics_match_what_was_sent(server):
    telemetry = server.model("m", 1)
    sent = drive(telemetry)
    stats = telemetry.statistics()
    assert (stats.name, stats.version) == ("m", "1")
    assert stats.inference_stats.success.count == sent["ok"]
    assert stats.inference_stats.fail.count == sent["fail"]
    assert stats.inference_count == sent["texts_ok"]
    assert stats.execution_count == sent["executions"]
    assert stats.inference_stats.queue.count == sent["rows"]
    assert stats.inference_stats.compute_infer.count == sent["rows"]
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == sent["sizes"]
    assert [b.batch_size for b in stats.batch_stats] == sorted(sent["sizes"])
    assert stats.last_inference > 0
    # Triton's charging: every row carries its whole batch's duration.
    assert stats.inference_stats.compute_infer.ns == sum(
        b.batch_size * b.compute_infer.ns for b in stats.batch_stats)


def test_prometheus_agrees_with_statistics(server):
    telemetry = server.model("m", 1)
    sent = drive(telemetry)
    stats = telemetry.statistics()
    s = scrape(server)
    key = {"model": "m", "version": "1"}
    ok = dict(key, code="OK")
    assert total(s, "rnnserve_requests_total", **ok) == stats.inference_stats.success.count
    assert total(s, "rnnserve_requests_total", **key) == sent["ok"] + sent["fail"]
    assert total(s, "rnnserve_request_failures_total", **key) == stats.inference_stats.fail.count
    assert total(s, "rnnserve_request_duration_seconds_count", **ok) == sent["ok"]
    assert total(s, "rnnserve_request_duration_seconds_sum", **ok) == pytest.approx(
        stats.inference_stats.success.ns / 1e9, rel=1e-9)
    assert total(s, "rnnserve_texts_total", **key) == stats.inference_count
    assert total(s, "rnnserve_executions_total", **key) == stats.execution_count
    assert total(s, "rnnserve_batch_size_count", **key) == stats.execution_count
    assert total(s, "rnnserve_batch_size_sum", **key) == sent["rows"]
    assert total(s, "rnnserve_queue_wait_seconds_count", **key) == stats.inference_stats.queue.count
    assert total(s, "rnnserve_queue_wait_seconds_sum", **key) == pytest.approx(
        stats.inference_stats.queue.ns / 1e9, rel=1e-9)
    for phase in ("input", "infer", "output"):
        assert total(s, "rnnserve_compute_seconds_count", phase=phase, **key) == \
            stats.execution_count
        # batch_stats are exactly the per-size counters (seconds rounded to integer ns) ...
        for b in stats.batch_stats:
            size = str(b.batch_size)
            assert getattr(b, f"compute_{phase}").ns == round(1e9 * total(
                s, "rnnserve_batch_compute_seconds_total", phase=phase, batch_size=size, **key))
        # ... whose sum is the histogram's, up to that rounding.
        assert total(s, "rnnserve_compute_seconds_sum", phase=phase, **key) == pytest.approx(
            sum(getattr(b, f"compute_{phase}").ns for b in stats.batch_stats) / 1e9,
            abs=1e-9 * len(stats.batch_stats))
    for b in stats.batch_stats:
        assert total(s, "rnnserve_batch_executions_total", batch_size=str(b.batch_size),
                     **key) == b.compute_infer.count
    assert total(s, "rnnserve_tokens_total", **key) == sent["real"]
    assert total(s, "rnnserve_padded_tokens_total", **key) == sent["padded"]
    assert total(s, "rnnserve_padding_ratio_count", **key) == stats.execution_count
    assert total(s, "rnnserve_sequence_events_total", event="started", **key) == 2
    assert total(s, "rnnserve_sequence_events_total", event="evicted", **key) == 1
    assert total(s, "rnnserve_open_sequences", **key) == 3
    assert total(s, "rnnserve_sequence_state_bytes", **key) == 3 * 2 * 2 * 24 * 4
    assert total(s, "rnnserve_pending_requests", **key) == 5
    assert total(s, "rnnserve_last_inference_timestamp_seconds", **key) == pytest.approx(
        stats.last_inference / 1000)


def test_histogram_buckets_are_cumulative_and_complete(server):
    telemetry = server.model("m", 1)
    for seconds in (0.0001, 0.0005, 0.0006, 0.02, 9.0, 99.0):
        telemetry.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                                   seconds=seconds, texts=1)
    s = scrape(server)
    buckets = [b for b in s["rnnserve_request_duration_seconds_bucket"]
               if b.labels["api"] == "text" and b.labels["kind"] == "unary"]
    assert [float(b.labels["le"]) for b in buckets] == [*REQUEST_BUCKETS, float("inf")]
    by_le = {float(b.labels["le"]): b.value for b in buckets}
    assert by_le[0.0005] == 2          # le is inclusive
    assert by_le[0.001] == 3
    assert by_le[0.025] == 4
    assert by_le[10.0] == 5
    assert by_le[float("inf")] == 6
    values = [b.value for b in buckets]
    assert values == sorted(values)


def test_label_values_are_bounded_and_codes_normalised(server):
    telemetry = server.model("m", 1)
    for code in (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "not_found", 5):
        telemetry.request_finished(api="text", kind="unary", code=code, seconds=0.001, texts=1)
    telemetry.request_finished(api="graphql", kind="bidi", code="BOGUS", seconds=0.001, texts=1)
    s = scrape(server)
    failures = {(x.labels["api"], x.labels["kind"], x.labels["code"]): x.value
                for x in s["rnnserve_request_failures_total"]}
    assert failures == {("text", "unary", "NOT_FOUND"): 4, ("other", "other", "UNKNOWN"): 1}
    assert telemetry.statistics().inference_stats.fail.count == 5


def test_hooks_never_raise(server):
    telemetry = server.model("m", 1)
    telemetry.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                               seconds=None, texts=1)  # type: ignore[arg-type]
    telemetry.rows_executed(queue_seconds=None, tokenize_seconds=0, input_seconds=0,  # type: ignore[arg-type]
                            infer_seconds=0, output_seconds=0, batch_size=1, real_tokens=0,
                            padded_tokens=0)
    telemetry.sequence_event("teleported")
    telemetry.rows_executed(queue_seconds=[0.001], tokenize_seconds=0, input_seconds=0,
                            infer_seconds=0.001, output_seconds=0, batch_size=1, real_tokens=0,
                            padded_tokens=0)  # zero real tokens: no padding ratio, no crash
    assert telemetry.statistics().execution_count == 1
    assert total(scrape(server), "rnnserve_sequence_events_total", event="other") == 1


def test_disabled_metrics_keep_statistics_and_export_nothing():
    enabled, disabled = ServerTelemetry(process_metrics=False), ServerTelemetry(enabled=False)
    on, off = enabled.model("m", 1), disabled.model("m", 1)
    drive(on, seed=3)
    drive(off, seed=3)
    a, b = on.statistics(), off.statistics()
    a.last_inference = b.last_inference = 0
    assert a == b
    assert disabled.exposition() == b""
    # Only what ModelStatistics needs was recorded: no phase histograms, no token counters,
    # and request latency without its buckets.
    recorded = {(s.name, s.labels.get("le")): s.value for s in off.snapshot() if s.value}
    assert not any(name.startswith(("rnnserve_compute_seconds", "rnnserve_tokens",
                                    "rnnserve_padding", "rnnserve_executions"))
                   for name, _ in recorded)
    assert ("rnnserve_request_duration_seconds_bucket", "0.01") not in recorded
    assert ("rnnserve_request_duration_seconds_bucket", "+Inf") in recorded


def test_servers_in_one_process_are_isolated():
    first, second = ServerTelemetry(process_metrics=False), ServerTelemetry(process_metrics=False)
    first.model("m", 1).request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                                         seconds=0.01, texts=1)
    assert total(scrape(first), "rnnserve_requests_total") == 1
    assert total(scrape(second), "rnnserve_requests_total") == 0
    assert first.model("m", "1") is first.model("m", 1)
    first.remove_model("m", 1)
    assert "rnnserve_requests_total" not in scrape(first)
    assert "rnnserve_build_info" in scrape(first)
    assert first.model("m", 1).statistics().inference_stats.success.count == 0  # a fresh start


def test_removed_model_in_multiprocess_mode_keeps_counters_and_zeroes_gauges(tmp_path):
    server = ServerTelemetry(process_metrics=False,
                             multiprocess_dir=prepare_multiprocess_dir(tmp_path))
    model = server.model("m", 1)
    model.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK, seconds=0.01,
                           texts=1)
    model.set_pending(7)
    model.set_open_sequences(2, 100)
    model.set_execution_providers("CPUExecutionProvider")
    server.remove_model("m", 1)
    s = scrape(server)
    assert total(s, "rnnserve_requests_total", model="m") == 1
    assert total(s, "rnnserve_pending_requests", model="m") == 0
    assert total(s, "rnnserve_open_sequences", model="m") == 0
    assert "rnnserve_execution_provider_info" not in s
    assert server.model("m", 1).statistics().inference_stats.success.count == 1  # continues


def test_process_collectors_are_on_the_servers_registry():
    server = ServerTelemetry()
    assert "process_cpu_seconds_total" in scrape(server)


def test_execution_provider_and_load_time(server):
    telemetry = server.model("m", 2)
    telemetry.set_execution_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    telemetry.set_load_seconds(0.25)
    s = scrape(server)
    (info,) = s["rnnserve_execution_provider_info"]
    assert info.labels == {"model": "m", "version": "2", "provider": "CUDAExecutionProvider"}
    assert total(s, "rnnserve_model_load_seconds", version="2") == 0.25
    (build,) = s["rnnserve_build_info"]
    assert {"version", "python", "onnxruntime", "grpcio"} <= set(build.labels)
    telemetry.set_execution_providers(["CPUExecutionProvider"])   # only the new one is shown
    (info,) = scrape(server)["rnnserve_execution_provider_info"]
    assert info.labels["provider"] == "CPUExecutionProvider" and info.value == 1


def test_concurrent_hooks_lose_nothing(server):
    """Hooks run on the event loop thread and ORT worker threads at once."""
    telemetry = server.model("m", 1)
    per_thread, threads = 2000, 4

    def work() -> None:
        for _ in range(per_thread):
            telemetry.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                                       seconds=0.001, texts=2)
            telemetry.rows_executed(queue_seconds=[0.001, 0.002], tokenize_seconds=0.0,
                                    input_seconds=0.0, infer_seconds=0.001, output_seconds=0.0,
                                    batch_size=2, real_tokens=4, padded_tokens=6)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    scrapes = threading.Thread(target=lambda: [server.exposition() for _ in range(20)])
    for worker in [*workers, scrapes]:
        worker.start()
    for worker in [*workers, scrapes]:
        worker.join()
    stats = telemetry.statistics()
    n = per_thread * threads
    assert stats.inference_stats.success.count == n
    assert stats.inference_count == 2 * n
    assert stats.execution_count == n
    assert stats.inference_stats.queue.count == 2 * n
    s = scrape(server)
    assert total(s, "rnnserve_request_duration_seconds_bucket", le="0.001") == n
    assert total(s, "rnnserve_tokens_total") == 4 * n
