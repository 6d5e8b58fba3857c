"""Checkpoint directories: round trip, atomic replacement, clear errors for bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from rnnserve.train.checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
)
from rnnserve.train.model import ModelSpec, SentimentRNN
from rnnserve.train.tokenizer import TOKENIZER_FILE, train_tokenizer


@pytest.fixture(scope="module")
def parts():
    spec = ModelSpec(
        cell="lstm", vocab_size=40, embed_dim=8, hidden=5, layers=2, dropout=0.1,
        bidirectional=False, num_labels=3, labels=["negative", "neutral", "positive"],
        pad_id=0, max_length=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SentimentRNN.from_spec(spec)
    tokenizer = train_tokenizer(["a good film", "a bad film", "so so"], vocab_size=40)
    return model, spec, tokenizer


@pytest.fixture
def checkpoint(tmp_path, parts):
    model, spec, tokenizer = parts
    return save_checkpoint(tmp_path / "ckpt", model, spec, tokenizer, {"best_val_accuracy": 0.5})


def test_round_trip(checkpoint, parts):
    model, spec, _ = parts
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(
        [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE]
    )
    loaded, loaded_spec, loaded_tokenizer = load_checkpoint(checkpoint)
    assert not loaded.training
    assert loaded_spec == spec
    assert json.loads((checkpoint / CONFIG_FILE).read_text())["labels"] == spec.labels
    ids = torch.tensor([loaded_tokenizer.encode("a good film").ids])
    lengths = torch.tensor([ids.shape[1]])
    torch.testing.assert_close(loaded(ids, lengths)[0], model.eval()(ids, lengths)[0])
    assert read_metrics(checkpoint) == {"best_val_accuracy": 0.5}


def test_save_replaces_atomically_and_leaves_no_temporaries(checkpoint, parts):
    model, spec, tokenizer = parts
    save_checkpoint(checkpoint, model, spec, tokenizer, {"run": 2})
    assert read_metrics(checkpoint) == {"run": 2}
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]


def test_failed_save_keeps_the_previous_checkpoint(checkpoint, parts):
    model, spec, tokenizer = parts
    with pytest.raises(TypeError):
        save_checkpoint(checkpoint, model, spec, tokenizer, {1j: "complex keys are not JSON"})
    assert read_metrics(checkpoint) == {"best_val_accuracy": 0.5}
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE])
def test_missing_file(checkpoint, name):
    (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing from checkpoint"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (CONFIG_FILE, "{not json", "invalid model config"),
        (CONFIG_FILE, '{"cell": "rnn"}', "invalid model config: cell"),
        (WEIGHTS_FILE, "garbage", "cannot read weights"),
        (TOKENIZER_FILE, "{}", "not a valid tokenizers file"),
        (METRICS_FILE, "[1, 2", "not valid JSON"),
    ],
)
def test_corrupt_file(checkpoint, name, content, message):
    (checkpoint / name).write_text(content)
    loader = read_metrics if name == METRICS_FILE else load_checkpoint
    with pytest.raises(CheckpointError, match=message) as caught:
        loader(checkpoint)
    assert str(checkpoint / name) in str(caught.value)


def test_weights_that_do_not_match_the_config(checkpoint):
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    (checkpoint / CONFIG_FILE).write_text(json.dumps({**config, "hidden": 7}))
    with pytest.raises(CheckpointError, match="config.json implies"):
        load_checkpoint(checkpoint)
    (checkpoint / CONFIG_FILE).write_text(json.dumps({**config, "layers": 1}))
    with pytest.raises(CheckpointError, match="weights do not match config.json"):
        load_checkpoint(checkpoint)


def test_tokenizer_larger_than_the_embedding(checkpoint):
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    (checkpoint / CONFIG_FILE).write_text(json.dumps({**config, "vocab_size": 3}))
    with pytest.raises(CheckpointError, match="model embeds only 3"):
        load_checkpoint(checkpoint)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_trained_checkpoints_load(tiny_checkpoints, tmp_path):
    for cell, directory in tiny_checkpoints.items():
        copy = shutil.copytree(directory, tmp_path / cell)
        model, spec, _ = load_checkpoint(copy)
        assert spec.cell == cell and model.cell == cell
        assert spec.labels == ["negative", "positive"]
