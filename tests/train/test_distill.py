"""Distillation (``--teacher``): real tiny teachers trained here, students trained on their soft targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from rnnserve.train.commands import train_command
from rnnserve.train.config import PLAIN_TRAINING
from rnnserve.train.data import load_labelled_texts
from rnnserve.train.distill import (
    CACHE_PREFIX,
    distillation_loss,
    soft_targets,
    teacher_logits,
    texts_digest,
)
from rnnserve.train.trainer import TrainConfig, train
from typer.testing import CliRunner

TINY = {"embed_dim": 16, "hidden": 24, "epochs": 3, "batch_size": 32, "vocab_size": 400,
        "lr": 1e-2, **PLAIN_TRAINING, "progress": False,
        "num_threads": 1}  # fmt: skip


@pytest.fixture(scope="module")
def flipped_dataset(tiny_dataset, tmp_path_factory):
    """The tiny dataset with every label swapped: a teacher trained on it is always wrong."""
    header, *rows = tiny_dataset.read_text(encoding="utf-8").splitlines()
    flipped = [f"{text}\t{1 - int(label)}" for text, label in (row.rsplit("\t", 1) for row in rows)]
    path = tmp_path_factory.mktemp("flipped") / "flipped.tsv"
    path.write_text("\n".join([header, *flipped]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wrong_teacher(flipped_dataset, tmp_path_factory):
    """A bidirectional LSTM checkpoint that learned the opposite of the true labels."""
    out = tmp_path_factory.mktemp("teacher") / "bilstm"
    config = TrainConfig(
        cell="lstm", bidirectional=True, data=str(flipped_dataset), out=out, **TINY
    )
    assert train(config).best_val_accuracy >= 0.9  # on its own (flipped) labels
    return out


def test_loss_is_cross_entropy_at_alpha_0_and_zero_kl_on_its_own_targets():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    soft = torch.softmax(logits / 3.0, dim=1)
    cross_entropy = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(distillation_loss(logits, targets, soft, 0.0, 3.0), cross_entropy)
    assert float(distillation_loss(logits, targets, soft, 1.0, 3.0)) == pytest.approx(0.0, abs=1e-6)
    flipped = soft.flip(1)
    assert float(distillation_loss(logits, targets, flipped, 1.0, 3.0)) > 0.1


def test_teacher_logits_are_cached_and_ensembles_average_probabilities(
    wrong_teacher, tiny_checkpoints, tiny_dataset
):
    texts = load_labelled_texts(str(tiny_dataset)).texts
    labels = ["negative", "positive"]
    first = teacher_logits(wrong_teacher, texts, labels)
    cache = wrong_teacher / f"{CACHE_PREFIX}{texts_digest(texts)}.npy"
    assert first.shape == (len(texts), 2) and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    np.testing.assert_array_equal(teacher_logits(wrong_teacher, texts, labels), first)
    assert cache.stat().st_mtime_ns == stamp  # read back, not recomputed

    teachers = [wrong_teacher, tiny_checkpoints["gru"]]
    ensemble = soft_targets(teachers, texts, labels, temperature=2.0)
    each = [soft_targets([t], texts, labels, temperature=2.0) for t in teachers]
    torch.testing.assert_close(ensemble, (each[0] + each[1]) / 2)
    torch.testing.assert_close(ensemble.sum(dim=1), torch.ones(len(texts)))
    with pytest.raises(ValueError, match="labels"):
        teacher_logits(wrong_teacher, texts, ["positive", "negative"])


def test_student_follows_the_teacher_through_the_cli(wrong_teacher, tiny_dataset, tmp_path):
    """alpha 1: the labels are ignored, so the student learns the wrong teacher's flipped labels;
    alpha 0: the teacher is ignored and the student learns the true labels."""
    app = typer.Typer()
    app.command("train")(train_command)
    common = ["--cell", "gru", "--data", str(tiny_dataset), "--teacher", str(wrong_teacher),
              "--embed-dim", "16", "--hidden", "24", "--epochs", "3", "--batch-size", "32",
              "--vocab-size", "400", "--lr", "0.01", "--adversarial-eps", "0", "--lm-pretrain-epochs", "0",
              "--num-threads", "1", "--no-progress"]  # fmt: skip
    last_epoch = {}
    for alpha in ("1.0", "0.0"):
        out = tmp_path / alpha
        result = CliRunner().invoke(
            app, [*common, "--distill-alpha", alpha, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["teacher"] == [str(wrong_teacher)]
        assert metrics["config"]["distill_alpha"] == float(alpha)
        # Validation uses the true labels; the last epoch shows what the student learned
        # (the checkpoint keeps the best epoch, which for the misled student is its first).
        last_epoch[alpha] = metrics["epochs"][-1]["val_accuracy"]
    assert last_epoch["0.0"] >= 0.9, last_epoch
    assert last_epoch["1.0"] <= 0.1, last_epoch
