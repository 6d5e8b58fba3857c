"""Server test fixtures: one shared in-process server on the session's tiny repository,
clients, and the offline reference (ONNX Runtime directly, batch 1, zero state)."""

from __future__ import annotations

from pathlib import Path

import pytest
from offline import GRU, LSTM, Offline, random_text  # noqa: F401 (re-exported to tests)
from rnnserve.protos import sentiment_pb2_grpc


@pytest.fixture(scope="session")
def stub(channel):
    return sentiment_pb2_grpc.SentimentStub(channel)


@pytest.fixture(scope="session")
def bidi_repository(tmp_path_factory, tiny_dataset) -> Path:
    """A repository with one tiny *bidirectional* LSTM (trained 1 epoch, exported)."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("bidi")
    config = TrainConfig(cell="lstm", data=str(tiny_dataset), out=out / "ckpt", embed_dim=8,
                         hidden=8, layers=1, epochs=1, batch_size=64, vocab_size=200, seed=0,
                         progress=False, bidirectional=True, **PLAIN_TRAINING)
    repo = out / "repository"
    export_checkpoint(train(config).checkpoint_dir, repository=repo, name="tiny-bilstm")
    return repo
