"""Offline reference for server tests: the exported ONNX graph run directly, one row at a time.

Every protocol test compares what the server answers with this reference, so it
deliberately shares no code with the server (no batching, no state pool).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

LSTM = "tiny-lstm"
GRU = "tiny-gru"

WORDS = ["good", "great", "fine", "awful", "bad", "boring", "fun", "movie", "film", "plot",
         "actors", "the", "a", "and", "but", "not", "very", "really", "loved", "hated",
         "story", "ending", "music"]


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Offline:
    """One model version of a repository run with ORT directly, batch 1, carried state."""

    def __init__(self, repository: Path, name: str, version: str = "1") -> None:
        directory = Path(repository) / name / version
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

    def stream_ids(self, chunks: list[list[int]]) -> list[np.ndarray]:
        """Running logits after each chunk of token ids, state carried between chunks."""
        state = {s.name: np.zeros((1, *s.shape[1:]), dtype=np.float32) for s in self.states}
        names = ["logits"] + [f"{s.name}_out" for s in self.states]
        result = []
        for ids in chunks:
            feeds = {"input_ids": np.asarray([ids], dtype=np.int64),
                     "lengths": np.asarray([len(ids)], dtype=np.int64), **state}
            outputs = self.session.run(names, feeds)
            state = {s.name: out for s, out in zip(self.states, outputs[1:], strict=True)}
            result.append(outputs[0][0])
        return result

    def stream(self, chunks: list[str]) -> list[np.ndarray]:
        """Running logits after each text chunk (each chunk tokenized on its own)."""
        return self.stream_ids([self.ids(chunk) for chunk in chunks])

    def logits_of_ids(self, ids: list[int]) -> np.ndarray:
        return self.stream_ids([ids])[-1]

    def logits(self, text: str) -> np.ndarray:
        return self.logits_of_ids(self.ids(text))
