"""Fixtures for the export tests: untrained checkpoints of any shape, built in milliseconds.

The session fixtures in tests/conftest.py give *trained* tiny models (needed for accuracy
checks); parity, bidirectional and error cases only need weights of the right shapes, so
they use ``make_checkpoint`` with random weights and a tokenizer trained on a few sentences.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SENTENCES = [
    "a great film with a lovely cast",
    "a terrible boring mess of a movie",
    "not good at all, i hated it",
    "wonderful acting and a moving story",
    "the plot makes no sense and the jokes fall flat",
]


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """``make_checkpoint(cell, bidirectional=False, hidden=12, layers=2) -> Path`` (cached)."""
    import torch
    from rnnserve.export.validate import PARITY_TEXTS
    from rnnserve.train.checkpoint import save_checkpoint
    from rnnserve.train.model import ModelSpec, SentimentRNN
    from rnnserve.train.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("random-checkpoints")
    # Trained on the parity texts too, so parity batches hold many distinct ids, not [UNK].
    tokenizer = train_tokenizer(SENTENCES + list(PARITY_TEXTS), vocab_size=160)
    cache: dict[tuple, Path] = {}

    def build(cell: str, bidirectional: bool = False, hidden: int = 12, layers: int = 2) -> Path:
        key = (cell, bidirectional, hidden, layers)
        if key not in cache:
            torch.manual_seed(len(cache))
            spec = ModelSpec(
                cell=cell,
                vocab_size=160,
                embed_dim=10,
                hidden=hidden,
                layers=layers,
                dropout=0.2,
                bidirectional=bidirectional,
                num_labels=3,
                labels=["negative", "neutral", "positive"],
                pad_id=0,
                max_length=64,
            )
            model = SentimentRNN.from_spec(spec)
            with torch.no_grad():  # larger than default init so parity is not trivially small
                for parameter in model.parameters():
                    parameter.uniform_(-0.6, 0.6)
            directory = root / "-".join(map(str, key))
            cache[key] = save_checkpoint(directory, model, spec, tokenizer, {"note": "random"})
        return cache[key]

    return build
