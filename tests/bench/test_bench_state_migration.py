"""Smoke test of bench/state_migration.py on the tiny repository: two real server
processes, sequences moved from one to the other, numbers sane and the move exact."""

from __future__ import annotations

import json
import math


def test_state_migration_bench_moves_sequences_exactly(tiny_repository, capsys):
    from rnnserve.bench.state_migration import main

    assert main(["--repository", str(tiny_repository), "--sequences", "12",
                 "--stream-chunks", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    results = {r["model"]: r for r in report["results"]}
    assert set(results) == {"tiny-lstm", "tiny-gru"}
    for r in results.values():
        assert r["sequences"] == 12 and r["parity_checks"] == 2
        assert r["max_abs_logit_diff_after_move"] == 0.0     # bit-identical continuation
        assert r["snapshot_bytes"] > 0 and r["stream_state_bytes"] > 0
        for key in ("export_ms_p50", "import_ms_p50", "move_ms_p50", "stream_chunk_ms_p50",
                    "stream_chunk_export_state_ms_p50"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["export_ms_p50"] <= r["export_ms_p99"]
    # the LSTM carries h and c, the GRU only h: the LSTM snapshot holds twice the state
    assert results["tiny-lstm"]["snapshot_bytes"] > results["tiny-gru"]["snapshot_bytes"]
