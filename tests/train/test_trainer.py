"""End-to-end: train on the synthetic set, checkpoint contents, evaluation, callbacks."""

from __future__ import annotations

import json

import pytest
from rnnserve.train.checkpoint import read_metrics
from rnnserve.train.config import PLAIN_TRAINING
from rnnserve.train.data import load_labelled_texts
from rnnserve.train.evaluate import evaluate, write_evaluation
from rnnserve.train.trainer import EpochMetrics, TrainConfig, load_splits, prepare_data, train


def tiny_config(tiny_dataset, out, **overrides) -> TrainConfig:
    options = {
        "cell": "gru", "data": str(tiny_dataset), "out": out, "embed_dim": 16, "hidden": 24,
        "layers": 1, "epochs": 2, "batch_size": 32, "vocab_size": 400, "seed": 0,
        **PLAIN_TRAINING, "progress": False,
    }  # fmt: skip
    return TrainConfig(**{**options, **overrides})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fixture_checkpoints_evaluate(tiny_checkpoints, tiny_dataset, cell):
    result = evaluate(tiny_checkpoints[cell], tiny_dataset)
    assert result["examples"] == 600
    assert result["labels"] == ["negative", "positive"]
    assert sum(map(sum, result["confusion_matrix"])) == 600
    assert result["accuracy"] > 0.55, result  # 3 short epochs at the default lr; chance is 0.5
    assert 0.0 <= result["macro_f1"] <= 1.0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tiny_models_learn_the_synthetic_signal(tiny_dataset, tmp_path, cell):
    config = tiny_config(tiny_dataset, tmp_path / cell, cell=cell, epochs=3, lr=1e-2)
    result = train(config)
    assert result.best_val_accuracy >= 0.9, result.epochs
    evaluation = evaluate(result.checkpoint_dir, tiny_dataset)
    assert evaluation["accuracy"] >= 0.9
    assert evaluation["macro_f1"] >= 0.9


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_metrics_json_records_the_run(tiny_checkpoints, cell):
    metrics = read_metrics(tiny_checkpoints[cell])
    assert metrics["cell"] == cell
    assert metrics["config"]["hidden"] == 24
    assert 1 <= metrics["best_epoch"] <= len(metrics["epochs"]) <= 3
    best = max(e["val_accuracy"] for e in metrics["epochs"])
    assert metrics["best_val_accuracy"] == best
    assert metrics["parameters"] > 0 and metrics["seconds_per_epoch"] > 0
    assert metrics["peak_memory_bytes"] > 0 and metrics["peak_memory_source"]
    assert metrics["train_examples"] + metrics["val_examples"] == 600


def test_evaluation_json_is_written(tiny_checkpoints, tiny_dataset, tmp_path):
    result = evaluate(tiny_checkpoints["gru"], tiny_dataset)
    path = write_evaluation(result, tmp_path / "eval.json")
    assert json.loads(path.read_text())["accuracy"] == result["accuracy"]


def test_training_is_deterministic_and_reuses_prepared_data(tiny_dataset, tmp_path):
    config = tiny_config(tiny_dataset, tmp_path / "a")
    prepared = prepare_data(config)
    first = train(config, dataset=prepared)
    second = train(config.model_copy(update={"out": tmp_path / "b"}), dataset=prepared)
    assert [e.val_loss for e in first.epochs] == [e.val_loss for e in second.epochs]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="prepared data was built for"):
        train(config.model_copy(update={"vocab_size": 100}), dataset=prepared)
    splits = load_splits(config)
    from_splits = train(config.model_copy(update={"out": tmp_path / "c"}), dataset=splits)
    assert from_splits.best_val_accuracy == first.best_val_accuracy


def test_on_epoch_sees_every_validation_and_can_abort(tiny_dataset, tmp_path):
    seen: list[tuple[int, EpochMetrics]] = []

    class Pruned(Exception):
        pass

    def on_epoch(epoch: int, metrics: EpochMetrics) -> None:
        seen.append((epoch, metrics))
        if epoch == 2:
            raise Pruned

    config = tiny_config(tiny_dataset, tmp_path / "pruned", epochs=3)
    with pytest.raises(Pruned):
        train(config, on_epoch=on_epoch)
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert seen[0][1].epoch == 1 and seen[0][1].seconds > 0
    assert not (tmp_path / "pruned").exists()
    assert list(tmp_path.iterdir()) == []


def test_separate_validation_file_and_early_stopping(tiny_dataset, tmp_path):
    from rnnserve.train.synthetic import write_synthetic_dataset

    validation = write_synthetic_dataset(tmp_path / "val.tsv", n=50, seed=9)
    config = tiny_config(
        tiny_dataset, tmp_path / "ckpt", val_data=str(validation), epochs=4, patience=1, lr=0.0001
    )
    result = train(config)
    assert result.val_examples == 50 and result.train_examples == 600
    assert len(result.epochs) - result.best_epoch <= 1  # stopped one epoch after the best
    assert load_labelled_texts(validation).label_names == result.labels


def test_three_class_data_keeps_its_label_names(tmp_path):
    rows = ["text,sentiment"]
    words = {"negative": "awful bad", "neutral": "the a", "positive": "great fun"}
    for i in range(90):
        label = list(words)[i % 3]
        rows.append(f"{words[label]} {i},{label}")
    path = tmp_path / "three.csv"
    path.write_text("\n".join(rows) + "\n")
    result = train(tiny_config(path, tmp_path / "ckpt", epochs=1, val_fraction=0.2))
    assert result.labels == ["negative", "neutral", "positive"]
    assert result.val_examples == 18


def test_weight_average_warms_up_then_follows_slowly():
    import torch
    from rnnserve.train.trainer import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    average = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # decay min(0.99, 2/11): mostly the new weights
    assert average.model.weight.item() == pytest.approx(9 / 11)
    for _ in range(2000):
        average.update(model)
    assert average.model.weight.item() == pytest.approx(1.0)
    assert not average.model.weight.requires_grad


def test_linear_schedule_reaches_zero_at_the_last_step():
    from rnnserve.train.schedule import lr_factor

    linear = lr_factor("linear", 10)
    assert [linear(s) for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]
    assert lr_factor("constant", 10)(9) == 1.0


def test_adversarial_training_learns_and_changes_the_updates(tiny_dataset, tmp_path):
    import torch
    from rnnserve.train.checkpoint import load_checkpoint

    plain = train(tiny_config(tiny_dataset, tmp_path / "plain", epochs=3, lr=1e-2))
    adversarial = train(
        tiny_config(tiny_dataset, tmp_path / "adv", epochs=3, lr=1e-2, adversarial_eps=1.0)
    )
    assert adversarial.best_val_accuracy >= 0.9, adversarial.epochs
    # Same seed, data and batches: only the adversarial term differs, and it must matter.
    plain_model, _, _ = load_checkpoint(plain.checkpoint_dir)
    adversarial_model, _, _ = load_checkpoint(adversarial.checkpoint_dir)
    plain_state, adversarial_state = plain_model.state_dict(), adversarial_model.state_dict()
    difference = max(
        float((plain_state[name] - adversarial_state[name]).abs().max()) for name in plain_state
    )
    assert difference > 1e-3
    assert torch.isfinite(torch.tensor([m.train_loss for m in adversarial.epochs])).all()
