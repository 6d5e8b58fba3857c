"""Smoke test of ``rnnserve bench --suite capacity`` (h2load, C client) on the tiny repository.

It checks that the run completes for ``--workers`` 1 and 2 with both front-ends, that
every sampled answer had
``grpc-status: 0`` and the server counted no request other than OK, and that the numbers
are sane; never wall-clock thresholds (CI shares two cores).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None,
                                reason="h2load missing: bash .ci/install-h2load.sh")


def test_capacity_suite_runs_clean(tiny_repository, tmp_path):
    from rnnserve.bench import capacity
    from typer.testing import CliRunner

    from rnnserve.cli import app

    out = tmp_path / "capacity"
    result = CliRunner().invoke(app, [
        "bench", "--suite", "capacity", "--repository", str(tiny_repository),
        "--model", "tiny-lstm", "--out", str(out), "--workers", "1,2",
        "--frontend", "python,native", "--placement", "unpinned",
    ], env={"RNNSERVE_CAPACITY_REQUESTS": "1500"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    results = json.loads((out / "capacity.json").read_text())
    entry = results["placements"]["unpinned"]
    limit = entry["raw_limit_one_core"]
    assert limit["best_batch"] in capacity.RAW_BATCHES and limit["sentences_per_s"] > 0
    assert [(server["frontend"], server["workers"]) for server in entry["servers"]] == [
        ("python", 1), ("python", 2), ("native", 1), ("native", 2)]
    for server in entry["servers"]:
        assert server["grpc_status_sample"] == ["0"] * len(server["grpc_status_sample"])
        assert server["non_ok"] == 0
        for run in server["runs"]:
            assert run["http_failed"] == 0 and run["done"] == run["http_ok"] > 0
            assert math.isfinite(run["req_s"]) and run["req_s"] > 0
            assert run["server_cpu_us_per_request"] > 0
    table = capacity.report(results)
    assert "| unpinned | python | 2 |" in table and "| unpinned | native | 2 |" in table


def test_capacity_suite_measures_streams(tiny_repository, tmp_path):
    """``--chunks K``: every h2load request is a StreamClassify stream of K chunks, answered
    OK on both front-ends, reported per chunk."""
    from rnnserve.bench import capacity
    from rnnserve.protos import sentiment_pb2 as pb
    from typer.testing import CliRunner

    from rnnserve.cli import app

    out = tmp_path / "streams"
    result = CliRunner().invoke(app, [
        "bench", "--suite", "capacity", "--repository", str(tiny_repository),
        "--model", "tiny-lstm", "--out", str(out), "--workers", "1",
        "--frontend", "python,native", "--placement", "unpinned", "--chunks", "4",
    ], env={"RNNSERVE_CAPACITY_REQUESTS": "1000"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    results = json.loads((out / "capacity.json").read_text())
    assert results["chunks"] == 4
    body, messages = (out / "stream.bin").read_bytes(), []
    while body:                                   # gRPC frames: flag, u32 length, message
        size = int.from_bytes(body[1:5], "big")
        messages.append(pb.StreamClassifyRequest.FromString(body[5:5 + size]))
        body = body[5 + size:]
    assert [(m.model, m.end, m.text) for m in messages] == [
        ("tiny-lstm", False, capacity.SENTENCE)] + [("", False, capacity.SENTENCE)] * 2 + [
        ("", True, capacity.SENTENCE)]
    for server in results["placements"]["unpinned"]["servers"]:
        assert server["grpc_status_sample"] == ["0"] * len(server["grpc_status_sample"])
        assert server["non_ok"] == 0
        for run in server["runs"]:
            assert run["http_failed"] == 0 and run["done"] == run["http_ok"] > 0
    table = capacity.report(results)
    assert "chunks/s" in table and "server CPU µs/chunk" in table
