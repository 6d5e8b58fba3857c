"""Smoke test of ``rnnserve bench --suite quick`` on the tiny repository (no peers).

It asserts that the run completes and its numbers are sane (positive, finite, ordered, counts
that match); never wall-clock thresholds, which would flake on a shared two-core machine.
"""

from __future__ import annotations

import json
import math
import time

import pytest

QUICK_BUDGET_S = 60


def _finite_positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _check_latencies(level: dict) -> None:
    assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
    assert all(_finite_positive(level[k]) for k in ("p50_ms", "p95_ms", "p99_ms"))


@pytest.fixture(scope="module")
def quick_run(tiny_repository, tmp_path_factory):
    from typer.testing import CliRunner

    from rnnserve.cli import app

    out = tmp_path_factory.mktemp("bench")
    started = time.monotonic()
    result = CliRunner().invoke(app, [
        "bench", "--suite", "quick", "--repository", str(tiny_repository),
        "--model", "tiny-lstm", "--out", str(out),
    ])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((out / "results.json").read_text()), out, elapsed


def test_quick_suite_completes_without_errors(quick_run):
    results, out, elapsed = quick_run
    assert results["errors"] == [], results["errors"]
    assert results["suite"] == "quick"
    assert (out / "report.md").read_text().startswith("# rnnserve benchmark report")
    for name in ("bench_throughput.png", "bench_latency.png", "bench_chunk_latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Informational: the budget is for CI's sake, asserted loosely so noise cannot flake it.
    assert elapsed < QUICK_BUDGET_S * 3


def test_raw_limit_is_sane(quick_run):
    results, _, _ = quick_run
    (raw,) = results["raw_limit"]
    assert raw["model"] == "tiny-lstm" and raw["threads"] >= 1
    assert _finite_positive(raw["sentences_per_s"]) and _finite_positive(raw["tokens_per_s"])
    assert raw["tokens_per_s"] >= raw["sentences_per_s"]  # every sentence has >= 1 token
    assert raw["best_batch"] in [s["batch"] for s in raw["sweep"]]
    for point in raw["sweep"]:
        assert point["ort"]["calls"] >= 3 and point["padding_ratio"] >= 1
        _check_latencies(point["ort"])


def test_unary_levels_are_sane(quick_run):
    results, _, _ = quick_run
    options = results["options"]
    runs = {(u["system"], u["api"]): u for u in results["unary"]}
    assert {("rnnserve", "text"), ("rnnserve", "kserve"), ("rnnserve-nobatch", "text")} <= set(runs)
    for (system, _), entry in runs.items():
        expected = options["nobatch_concurrency"] if system == "rnnserve-nobatch" else \
            options["concurrency"]
        assert [lv["concurrency"] for lv in entry["levels"]] == expected
        for level in entry["levels"]:
            assert level["errors"] == 0, level["error_samples"]
            assert 0 < level["requests"] <= options["count"]
            # Every checked response answered exactly the one text its request carried.
            assert level["checked_texts"] == level["checked_responses"] > 0
            assert _finite_positive(level["throughput_rps"])
            assert level["tokens_per_s"] >= level["throughput_rps"]
            _check_latencies(level)


def test_streaming_is_sane(quick_run):
    results, _, _ = quick_run
    options = results["options"]
    (run,) = results["streaming"]
    assert [lv["streams"] for lv in run["levels"]] == options["stream_levels"]
    for level in run["levels"]:
        assert level["errors"] == 0, level["error_samples"]
        assert level["opened"] == level["streams"]
        assert 0 < level["chunks"] <= options["stream_chunks"]
        assert _finite_positive(level["chunks_per_s"])
        _check_latencies(level)
    by_position = run["positions"]["by_position"]
    assert sorted(int(p) for p in by_position) == options["positions"]
    assert all(p["samples"] > 0 for p in by_position.values())
    sequences = run["kserve_sequences"]
    assert sequences["errors"] == 0 and sequences["opened"] == sequences["sequences"]


def test_targets_are_evaluated(quick_run):
    results, _, _ = quick_run
    assert results["targets"]
    assert all(row["met"] in (True, False, None) for row in results["targets"])
