"""Session-wide fixtures: one tiny dataset, one tiny LSTM and GRU, one model repository.

Everything is built once per test session from generated data (no network, no shared/),
small enough to train in seconds on two CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

TINY_MODEL_NAMES = {"lstm": "tiny-lstm", "gru": "tiny-gru"}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A generated SST-2-style TSV (sentence<TAB>label) with a clear sentiment signal."""
    from rnnserve.train.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "tiny.tsv", n=600, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_dataset) -> dict[str, Path]:
    """cell -> checkpoint directory of a tiny trained model (embed 16, hidden 24, 2 layers)."""
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("checkpoints")
    result = {}
    for cell in ("lstm", "gru"):
        config = TrainConfig(
            cell=cell, data=str(tiny_dataset), out=out / cell, embed_dim=16, hidden=24,
            layers=2, epochs=3, batch_size=32, vocab_size=400, seed=0, progress=False,
            num_threads=1, lr=1e-2, **PLAIN_TRAINING,
        )
        result[cell] = train(config).checkpoint_dir
    return result


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoints) -> Path:
    """A Triton-layout repository holding tiny-lstm and tiny-gru (fp32, version 1)."""
    from rnnserve.export.exporter import export_checkpoint

    repo = tmp_path_factory.mktemp("repository")
    for cell, checkpoint in tiny_checkpoints.items():
        export_checkpoint(checkpoint, repository=repo, name=TINY_MODEL_NAMES[cell])
    return repo


@pytest.fixture(scope="session")
def server(tiny_repository):
    """One in-process rnnserve (default settings) shared by every protocol suite.

    Tests may send traffic but must not change its settings or state.
    """
    from serving import start_server

    with start_server(tiny_repository) as handle:
        yield handle


@pytest.fixture(scope="session")
def channel(server):
    with server.channel() as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def native_frontend_binary() -> Path:
    """The native front-end, compiled (server/native_frontend.py). Skips where it cannot be
    built, unless RNNSERVE_REQUIRE_NATIVE=1 (.ci/run sets it): then the test fails."""
    from rnnserve.server.native_frontend import BuildError, binary

    try:
        return binary()
    except BuildError as exc:
        if os.environ.get("RNNSERVE_REQUIRE_NATIVE") == "1":
            raise
        pytest.skip(f"native front-end cannot be built here: {exc}")


@pytest.fixture(scope="session")
def offline(tiny_repository):
    """Offline reference per tiny model: the ONNX graph run directly (tests/offline.py)."""
    from offline import Offline

    return {name: Offline(tiny_repository, name) for name in TINY_MODEL_NAMES.values()}


@pytest.fixture(scope="session")
def demo_outputs(tmp_path_factory) -> Path:
    """A directory after the real ``rnnserve demo --no-serve`` ran in it with its defaults:
    ``runs/demo/{lstm,gru}`` and ``model_repository/{sentiment-lstm,sentiment-gru}``.

    It downloads the demo's corpus on first use and trains for minutes, so only slow tests
    (RNNSERVE_SLOW=1) ask for it; tests/train/test_demo_reviews.py and the docs test share it.
    """
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "rnnserve.cli", "demo", "--no-serve"]
    completed = subprocess.run(command, cwd=work, capture_output=True, text=True,
                               timeout=1200, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return work


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the figures fault tests reported (tests/figures.py), if any ran."""
    from figures import LINES

    if LINES:
        terminalreporter.section("rnnserve fault-test figures")
        for line in LINES:
            terminalreporter.write_line(line)
