"""Multiprocess telemetry for real: separate Python processes record into one directory and
any of them (here: the test process) exposes the totals and ModelStatistics over all of them.

The roles mirror ``rnnserve serve --workers N``: front-end processes only finish requests,
one engine process runs batches and owns the gauges. Each child records known numbers and
exits; the test then checks the merged exposition, ``statistics()``, that
``mark_process_dead`` drops only the dead process's live gauges, and (when the binary is
installed) that a real Prometheus scraping the merged endpoint stores the totals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.bench.prometheus_runner import PrometheusRunner, free_port, prometheus_binary
from rnnserve.server.metrics_http import start_metrics_server
from rnnserve.server.telemetry import (
    ServerTelemetry,
    mark_process_dead,
    prepare_multiprocess_dir,
)

#: One recording process. argv: directory, role, index. Prints its pid as JSON.
CHILD = r"""
import json, os, sys
import grpc
from rnnserve.server.telemetry import ServerTelemetry

directory, role, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = ServerTelemetry(multiprocess_dir=directory).model("m", 1)
if role == "frontend":
    # index + 1 OK text calls of 2 texts, 10 ms each; one INVALID_ARGUMENT kserve call.
    for _ in range(index + 1):
        model.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                               seconds=0.01, texts=2)
    model.request_finished(api="kserve", kind="unary", code=grpc.StatusCode.INVALID_ARGUMENT,
                           seconds=0.002, texts=1)
elif role == "engine":
    for size in (1, 4, 4):
        model.rows_executed(queue_seconds=[0.001] * size, tokenize_seconds=0.0001,
                            input_seconds=0.0002, infer_seconds=0.003, output_seconds=0.0001,
                            batch_size=size, real_tokens=10 * size, padded_tokens=12 * size)
    model.sequence_event("started")
    model.set_open_sequences(2, 4096)
    model.set_pending(5)
    model.set_load_seconds(0.5)
    model.set_execution_providers(["CPUExecutionProvider"])
elif role == "fork":
    # Values recorded after a fork go to the child's own file, never into the parent's.
    model.request_finished(api="text", kind="stream", code=grpc.StatusCode.OK, seconds=0.001,
                           texts=1)
    child = os.fork()
    if child == 0:
        for _ in range(2):
            model.request_finished(api="text", kind="stream", code=grpc.StatusCode.OK,
                                   seconds=0.001, texts=1)
        os._exit(0)
    os.waitpid(child, 0)
    model.request_finished(api="text", kind="stream", code=grpc.StatusCode.OK, seconds=0.001,
                           texts=1)
    print(json.dumps({"child": child}))
elif role == "env":
    # PROMETHEUS_MULTIPROC_DIR is set for this process (pointing at `directory`), yet
    # servers without multiprocess_dir stay in memory and separate.
    first, second = ServerTelemetry(), ServerTelemetry()
    first.model("solo", 1).request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                                            seconds=0.01, texts=1)
    assert first.model("solo", 1).statistics().inference_stats.success.count == 1
    assert second.model("solo", 1).statistics().inference_stats.success.count == 0
    model.set_pending(1)
print(json.dumps({"pid": os.getpid()}))
"""


def record(directory: Path, role: str, index: int = 0, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(directory), role, str(index)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    found: dict = {}
    for line in result.stdout.splitlines():
        found.update(json.loads(line))
    return found


def parse(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture()
def directory(tmp_path) -> Path:
    return prepare_multiprocess_dir(tmp_path / "metrics")


def test_prepare_empties_the_directory(tmp_path):
    directory = tmp_path / "a" / "b"
    prepare_multiprocess_dir(directory)
    (directory / "counter_1.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    prepare_multiprocess_dir(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


def test_totals_over_processes(directory):
    frontends = [record(directory, "frontend", i)["pid"] for i in range(2)]
    engine = record(directory, "engine")["pid"]
    # This process records too: one more OK request, its files are merged with the rest.
    server = ServerTelemetry(multiprocess_dir=directory, process_metrics=False)
    model = server.model("m", 1)
    model.request_finished(api="text", kind="unary", code=grpc.StatusCode.OK, seconds=0.01,
                           texts=2)
    model.set_pending(3)

    s = parse(server.exposition().decode())
    key = {"model": "m", "version": "1"}
    ok = (1 + 2) + 1                                   # frontends 0 and 1, and this process
    assert total(s, "rnnserve_requests_total", code="OK", **key) == ok
    assert total(s, "rnnserve_request_failures_total", **key) == 2
    assert total(s, "rnnserve_request_duration_seconds_count", code="OK", **key) == ok
    assert total(s, "rnnserve_request_duration_seconds_bucket", code="OK", le="0.01",
                 **key) == ok
    assert total(s, "rnnserve_texts_total", **key) == 2 * ok
    assert total(s, "rnnserve_executions_total", **key) == 3
    assert total(s, "rnnserve_batch_size_sum", **key) == 9
    assert total(s, "rnnserve_batch_executions_total", batch_size="4", **key) == 2
    assert total(s, "rnnserve_queue_wait_seconds_count", **key) == 9
    assert total(s, "rnnserve_tokens_total", **key) == 90
    assert total(s, "rnnserve_sequence_events_total", event="started", **key) == 1
    assert total(s, "rnnserve_pending_requests", **key) == 5 + 3      # summed over processes
    assert total(s, "rnnserve_open_sequences", **key) == 2
    assert total(s, "rnnserve_sequence_state_bytes", **key) == 4096
    assert total(s, "rnnserve_model_load_seconds", **key) == 0.5
    (provider,) = s["rnnserve_execution_provider_info"]
    assert provider.labels == dict(key, provider="CPUExecutionProvider")
    assert "rnnserve_build_info" in s
    assert not any(name.startswith("process_") for name in s)

    stats = model.statistics()
    assert stats.inference_stats.success.count == ok
    assert stats.inference_stats.success.ns == round(
        1e9 * total(s, "rnnserve_request_duration_seconds_sum", code="OK", **key))
    assert stats.inference_stats.fail.count == 2
    assert stats.inference_count == 2 * ok
    assert stats.execution_count == 3
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {1: 1, 4: 2}
    assert stats.inference_stats.compute_infer.count == 9
    assert stats.inference_stats.queue.count == 9
    assert stats.last_inference == round(
        1000 * total(s, "rnnserve_last_inference_timestamp_seconds", **key))
    # Any process reading the directory sees the same totals.
    other = ServerTelemetry(multiprocess_dir=directory, process_metrics=False)
    assert other.model("m", 1).statistics() == stats

    # The engine exits: its live gauges leave the totals, its counters stay.
    mark_process_dead(engine, directory)
    mark_process_dead(frontends[0], directory)
    after = parse(server.exposition().decode())
    assert total(after, "rnnserve_pending_requests", **key) == 3
    assert total(after, "rnnserve_open_sequences", **key) == 0
    assert "rnnserve_execution_provider_info" not in after
    assert total(after, "rnnserve_model_load_seconds", **key) == 0
    assert total(after, "rnnserve_executions_total", **key) == 3
    assert total(after, "rnnserve_requests_total", code="OK", **key) == ok
    assert model.statistics() == stats


def test_a_forked_child_records_into_its_own_file(directory):
    pids = record(directory, "fork")
    assert sorted(p.name for p in directory.glob("counter_*.db")) == sorted(
        [f"counter_{pids['pid']}.db", f"counter_{pids['child']}.db"])
    server = ServerTelemetry(multiprocess_dir=directory, process_metrics=False)
    stats = server.model("m", 1).statistics()
    assert stats.inference_stats.success.count == 4
    mark_process_dead(pids["child"], directory)
    assert server.model("m", 1).statistics().inference_stats.success.count == 4


def test_the_environment_variable_changes_nothing(directory):
    record(directory, "env", env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    server = ServerTelemetry(multiprocess_dir=directory, process_metrics=False)
    s = parse(server.exposition().decode())
    assert total(s, "rnnserve_pending_requests", model="m") == 1
    assert "solo" not in {x.labels.get("model") for x in s["rnnserve_requests_total"]}


@pytest.mark.skipif(prometheus_binary() is None,
                    reason="prometheus not installed (.ci/install-prometheus.sh)")
def test_prometheus_scrapes_the_totals(directory, tmp_path):
    for i in range(3):
        record(directory, "frontend", i)
    record(directory, "engine")
    server = ServerTelemetry(multiprocess_dir=directory, process_metrics=False)
    endpoint = start_metrics_server(server, host="127.0.0.1", port=free_port())
    prometheus = PrometheusRunner([f"127.0.0.1:{endpoint.port}"],
                                  tmp_path / "prometheus").start()
    try:
        prometheus.wait_for('sum(rnnserve_requests_total{model="m", code="OK"})',
                            lambda v: v == 1 + 2 + 3, timeout=30)
        stats = server.model("m", 1).statistics()
        assert prometheus.scalar('sum(rnnserve_texts_total{model="m"})') == \
            stats.inference_count == 12
        assert prometheus.scalar('rnnserve_executions_total{model="m"}') == \
            stats.execution_count == 3
        assert prometheus.scalar('rnnserve_pending_requests{model="m"}') == 5
        (info,) = prometheus.query('rnnserve_execution_provider_info{model="m"}')
        assert info["metric"]["provider"] == "CPUExecutionProvider"
    finally:
        prometheus.stop()
        endpoint.stop()
