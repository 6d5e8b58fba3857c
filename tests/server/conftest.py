"""Server test fixtures: one shared in-process server on the session's tiny repository,
clients, and the offline reference (ONNX Runtime directly, batch 1, zero state)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tokenizers import Tokenizer

LSTM = "tiny-lstm"
GRU = "tiny-gru"

WORDS = ["good", "great", "fine", "awful", "bad", "boring", "fun", "movie", "film", "plot",
         "actors", "the", "a", "and", "but", "not", "very", "really", "loved", "hated",
         "story", "ending", "music"]


class Offline:
    """Reference logits: the exported ONNX model run directly, one text at a time."""

    def __init__(self, repository: Path, name: str) -> None:
        directory = Path(repository) / name / "1"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.states = [i for i in self.session.get_inputs() if i.name.startswith("state_")]

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def logits_of_ids(self, ids: list[int]) -> np.ndarray:
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64),
                 "lengths": np.asarray([len(ids)], dtype=np.int64)}
        for state in self.states:
            feeds[state.name] = np.zeros((1, *state.shape[1:]), dtype=np.float32)
        return self.session.run(["logits"], feeds)[0][0]

    def logits(self, text: str) -> np.ndarray:
        return self.logits_of_ids(self.ids(text))


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))


@pytest.fixture(scope="session")
def server(tiny_repository):
    """The shared in-process server (default batching; tests must not change its state)."""
    with start_server(tiny_repository) as handle:
        yield handle


@pytest.fixture(scope="session")
def channel(server):
    with server.channel() as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return sentiment_pb2_grpc.SentimentStub(channel)


@pytest.fixture(scope="session")
def offline(tiny_repository):
    return {name: Offline(tiny_repository, name) for name in (LSTM, GRU)}


@pytest.fixture(scope="session")
def bidi_repository(tmp_path_factory, tiny_dataset) -> Path:
    """A repository with one tiny *bidirectional* LSTM (trained 1 epoch, exported)."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("bidi")
    config = TrainConfig(cell="lstm", data=str(tiny_dataset), out=out / "ckpt", embed_dim=8,
                         hidden=8, layers=1, epochs=1, batch_size=64, vocab_size=200, seed=0,
                         progress=False, bidirectional=True)
    repo = out / "repository"
    export_checkpoint(train(config).checkpoint_dir, repository=repo, name="tiny-bilstm")
    return repo
