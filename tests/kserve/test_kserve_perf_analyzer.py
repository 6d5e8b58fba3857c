"""Triton's perf_analyzer against rnnserve, briefly, in stateless and sequence mode.

Skipped unless the binary is installed (``bash bench/perf_analyzer.sh --install-only`` puts
it under .cache/tools; RNNSERVE_TOOLS_DIR moves that). Uses the shipped bench/perf_data JSON
so the run does not depend on /work/shared. The stability threshold is loose on purpose:
this checks that perf_analyzer talks to rnnserve without errors, not performance, and the
test machine may be busy.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("RNNSERVE_TOOLS_DIR", ROOT / ".cache" / "tools"))
BINARY = TOOLS / "perf_analyzer" / "bin" / "perf_analyzer"
SCRIPT = ROOT / "bench" / "perf_analyzer.sh"

pytestmark = pytest.mark.skipif(not BINARY.is_file(),
                                reason=f"perf_analyzer not installed at {BINARY}")


@pytest.mark.parametrize("mode, extra", [
    ("stateless", []),
    ("sequence", []),
    ("sequence", ["--streaming"]),
])
def test_perf_analyzer_runs_clean(kserve_server, mode, extra):
    command = [
        "bash", str(SCRIPT), "--url", kserve_server.address, "--model", "tiny-lstm",
        "--mode", mode, "--concurrency", "1:4:3", "--stability", "1000", "--",
        "--measurement-mode", "count_windows", "--measurement-request-count", "50",
        "--max-trials", "10", *extra,
    ]
    env = {**os.environ, "RNNSERVE_SST2_DEV": "/nonexistent"}  # the shipped JSON
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"error|failed|unstable", output, re.IGNORECASE), output
    for concurrency in (1, 4):
        assert f"Request concurrency: {concurrency}" in output, output
    assert output.count("Successful request count:") == 2, output
    if mode == "sequence":
        assert "Sequence count:" in output, output
