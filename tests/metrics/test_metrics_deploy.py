"""deploy/prometheus and deploy/grafana are valid and use only metric names rnnserve exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from rnnserve.server.telemetry import ServerTelemetry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "rnnserve.json"
NAME = re.compile(r"(?<![\w:])(rnnserve_[a-z_]+)(?![\w:])")
RECORDED = re.compile(r"\b([a-z_]+:rnnserve_[a-z_]+:[a-z0-9_]+)\b")

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None,
                                    reason="promtool not installed (.ci/install-prometheus.sh)")


def exported_names() -> set[str]:
    """Every sample name a populated server exposes."""
    server = ServerTelemetry(process_metrics=False)
    model = server.model("m", 1)
    model.request_finished(api="text", kind="unary", code=grpc.StatusCode.INTERNAL,
                           seconds=0.1, texts=1)
    model.rows_executed(queue_seconds=[0.001], tokenize_seconds=0.001, input_seconds=0.001,
                        infer_seconds=0.001, output_seconds=0.001, batch_size=1,
                        real_tokens=2, padded_tokens=2)
    model.set_load_seconds(1.0)
    model.set_execution_providers("CPUExecutionProvider")
    return set(re.findall(r"^([a-z_:]+)[{ ]", server.exposition().decode(), re.MULTILINE))


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def recorded_names() -> set[str]:
    text = (PROMETHEUS_DIR / "rnnserve.rules.yml").read_text()
    return set(re.findall(r"record:\s*(\S+)", text))


@needs_promtool
def test_prometheus_config_and_rules_are_valid():
    for args in (["check", "config", "prometheus.yml"],
                 ["check", "rules", "rnnserve.rules.yml"],
                 ["test", "rules", "rnnserve.rules.test.yml"]):
        result = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_use_exported_names():
    exported = exported_names()
    rules = (PROMETHEUS_DIR / "rnnserve.rules.yml").read_text()
    recorded = recorded_names()
    for source in [rules, *dashboard_exprs()]:
        for name in NAME.findall(source):
            assert name in exported, f"{name} is not exported by rnnserve"
        for name in RECORDED.findall(source):
            assert name in recorded, f"{name} is not a recording rule"


def test_dashboard_covers_the_operator_questions():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for title in ("Throughput", "Latency p50 / p95 / p99", "Queue wait vs compute (mean)",
                  "Batch size", "Padding ratio", "Open sequences and state memory",
                  "Errors by gRPC status"):
        assert title in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "model"}
