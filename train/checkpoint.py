"""Checkpoint directories: the hand-over from training to export (docs/architecture.md §1).

A checkpoint is a directory holding ``model.safetensors`` (float32 state dict, no pickle),
``config.json`` (``ModelSpec``), ``tokenizer.json`` and ``metrics.json``.

Invariants
----------
* Writing is atomic at directory level: files go to a temporary sibling directory which is
  renamed into place, so a reader never sees a half-written checkpoint and a crash leaves the
  previous checkpoint (if any) intact.
* ``load_checkpoint`` either returns a model whose weights, spec and tokenizer agree, or
  raises ``CheckpointError`` naming the file and what is wrong with it.
* ``metrics.json`` is informative; it is not needed to rebuild the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from rnnserve.train.model import ModelSpec, SentimentRNN
from rnnserve.train.tokenizer import TOKENIZER_FILE
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or inconsistent."""


def save_checkpoint(
    directory: Path | str,
    model: SentimentRNN,
    spec: ModelSpec,
    tokenizer: Tokenizer,
    metrics: BaseModel | dict[str, Any],
) -> Path:
    """Write a complete checkpoint to ``directory`` (replacing one that is there); returns it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {
            name: tensor.detach().to("cpu", torch.float32).contiguous().clone()
            for name, tensor in model.state_dict().items()
        }
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
        tokenizer.save(str(staging / TOKENIZER_FILE))
        metrics_json = (
            metrics.model_dump_json(indent=2)
            if isinstance(metrics, BaseModel)
            else json.dumps(metrics, indent=2, default=str)
        )
        (staging / METRICS_FILE).write_text(metrics_json + "\n")
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _replace_directory(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    if not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    retired.rmdir()
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def read_spec(directory: Path | str) -> ModelSpec:
    """Parse and validate ``config.json`` of a checkpoint."""
    path = _require(Path(directory), CONFIG_FILE)
    try:
        return ModelSpec.model_validate_json(path.read_bytes())
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors()
        )
        raise CheckpointError(f"{path}: invalid model config: {problems}") from None


def read_metrics(directory: Path | str) -> dict[str, Any]:
    """The training metrics stored with a checkpoint."""
    path = _require(Path(directory), METRICS_FILE)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return metrics


def read_tokenizer(directory: Path | str, spec: ModelSpec | None = None) -> Tokenizer:
    """Load ``tokenizer.json``; with ``spec``, check it fits the model's vocabulary and pad id."""
    path = _require(Path(directory), TOKENIZER_FILE)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - tokenizers raises bare Exception
        raise CheckpointError(f"{path}: not a valid tokenizers file: {error}") from None
    if spec is not None:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > spec.vocab_size:
            raise CheckpointError(
                f"{path}: tokenizer has {size} ids but the model embeds only {spec.vocab_size}"
            )
        if tokenizer.id_to_token(spec.pad_id) is None:
            raise CheckpointError(f"{path}: tokenizer has no token for pad id {spec.pad_id}")
    return tokenizer


def load_checkpoint(directory: Path | str) -> tuple[SentimentRNN, ModelSpec, Tokenizer]:
    """Rebuild ``(model in eval mode on CPU, spec, tokenizer)`` from a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    spec = read_spec(directory)
    tokenizer = read_tokenizer(directory, spec)
    weights_path = _require(directory, WEIGHTS_FILE)
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise CheckpointError(f"{weights_path}: cannot read weights: {error}") from None
    model = SentimentRNN.from_spec(spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: weights do not match config.json "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.eval(), spec, tokenizer


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from checkpoint")
    return path
