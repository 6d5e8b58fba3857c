"""Language-model pretraining (``--lm-pretrain-epochs``) on real tiny models and data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from rnnserve.train.checkpoint import load_checkpoint
from rnnserve.train.config import LM_PRETRAIN_EPOCHS_DEFAULT
from rnnserve.train.model import SentimentRNN
from rnnserve.train.pretrain import pretrain_language_model
from rnnserve.train.trainer import TrainConfig, train

TINY = {"embed_dim": 16, "hidden": 24, "epochs": 2, "batch_size": 32, "vocab_size": 400,
        "lr": 1e-2, "adversarial_eps": 0.0, "progress": False, "num_threads": 1}  # fmt: skip


def _model(cell: str, vocab: int = 40, bidirectional: bool = False) -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN(cell, vocab, 8, 16, 1, 0.0, bidirectional, 2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_it_learns_a_predictable_corpus_and_touches_only_embedding_and_rnn(cell):
    # Every text counts up from a random start: the next token is always the current + 1.
    rng = np.random.default_rng(0)
    rows = [list(range(s, s + n)) for s, n in zip(rng.integers(2, 30, 400), rng.integers(3, 10, 400))]
    model = _model(cell)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    keys_before = set(model.state_dict())
    history = pretrain_language_model(
        model, rows, epochs=8, lr=2e-2, weight_decay=0.0, clip_norm=1.0, batch_size=16,
        rng=np.random.default_rng(1), device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    assert [h.epoch for h in history] == list(range(1, 9))
    distinct = {tuple(r) for r in rows}
    assert history[0].tokens == sum(len(r) - 1 for r in distinct)  # duplicates once, pads never
    assert history[0].perplexity > 10.0  # starts near uniform over 40 ids
    assert history[-1].perplexity < 1.5  # ends knowing the successor
    assert set(model.state_dict()) == keys_before  # no head left behind
    for key, value in model.head.state_dict().items():
        torch.testing.assert_close(value, head_before[key])


def test_bidirectional_models_are_refused():
    with pytest.raises(ValueError, match="unidirectional"):
        pretrain_language_model(
            _model("gru", bidirectional=True), [[2, 3, 4]], epochs=1, lr=1e-3, weight_decay=0.0,
            clip_norm=1.0, batch_size=4, rng=np.random.default_rng(0), device=torch.device("cpu"),
        )  # fmt: skip
    with pytest.raises(ValidationError, match="unidirectional"):
        TrainConfig(out="x", bidirectional=True, lm_pretrain_epochs=1)


def test_pretraining_is_on_by_default_for_unidirectional_models_only():
    assert TrainConfig(out="x").effective_lm_pretrain_epochs == LM_PRETRAIN_EPOCHS_DEFAULT > 0
    assert TrainConfig(out="x", bidirectional=True).effective_lm_pretrain_epochs == 0
    assert TrainConfig(out="x", lm_pretrain_epochs=0).effective_lm_pretrain_epochs == 0


def test_training_with_pretraining_keeps_the_checkpoint_contract(tiny_dataset, tmp_path):
    plain = train(TrainConfig(cell="gru", data=str(tiny_dataset), out=tmp_path / "plain",
                              lm_pretrain_epochs=0, **TINY))
    pretrained = train(
        TrainConfig(
            cell="gru", data=str(tiny_dataset), out=tmp_path / "lm", lm_pretrain_epochs=2, **TINY
        )
    )
    assert pretrained.parameters == plain.parameters
    model_plain, spec_plain, _ = load_checkpoint(tmp_path / "plain")
    model_lm, spec_lm, _ = load_checkpoint(tmp_path / "lm")
    assert spec_lm == spec_plain
    state_plain, state_lm = model_plain.state_dict(), model_lm.state_dict()
    assert state_lm.keys() == state_plain.keys()
    assert not torch.equal(state_lm["embedding.weight"], state_plain["embedding.weight"])
    assert pretrained.best_val_accuracy >= 0.9  # the tiny data's signal is still learned
    records = json.loads((tmp_path / "lm" / "metrics.json").read_text())["lm_pretraining"]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["loss"] < records[0]["loss"] < math.log(400)
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["lm_pretraining"] == []
