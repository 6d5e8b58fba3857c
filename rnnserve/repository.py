"""The model repository contract shared by the exporter (writer) and the server (reader).

Layout (Triton's)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx
    <repo>/<model>/<version>/tokenizer.json
    <repo>/<model>/<version>/labels.txt
    <repo>/<model>/<version>/metadata.json

Invariants:
- ``config.pbtxt`` is a ``inference.ModelConfig`` in protobuf text format; it is parsed and
  written only through the generated class, never formatted by hand.
- Model names and versions are single, safe path components (``validate_model_name``), so a
  name can never address anything outside the repository.
- Version directories are positive integers; the highest is the default version.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import BaseModel, Field
from tritonclient.grpc import model_config_pb2

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"

#: Keys of ModelConfig.parameters written by the exporter and read by the server.
PARAM_PREFIX = "rnnserve."

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Precision = Literal["fp32", "fp16", "int8"]


class RepositoryError(ValueError):
    """The repository or one of its models is missing, malformed or unsafe."""


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is one safe path component, else raise RepositoryError."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-128 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def validate_version(version: str | int) -> str:
    """Return the version as a canonical string of a positive integer."""
    text = str(version)
    if not text.isdigit() or int(text) < 1 or len(text) > 18:
        raise RepositoryError(f"invalid model version {version!r}: must be a positive integer")
    return str(int(text))


def state_input_names(cell: str) -> list[str]:
    """Names of the ONNX state inputs of a ``cell`` model, in order (outputs add ``_out``)."""
    return ["state_h", "state_c"] if cell == "lstm" else ["state_h"]


class RepositoryMetadata(BaseModel):
    """``metadata.json``: what the server and the docs need beyond ModelConfig."""

    format_version: int = 1
    cell: Literal["lstm", "gru"]
    vocab_size: int
    embed_dim: int
    hidden: int
    layers: int
    bidirectional: bool = False
    num_labels: int
    labels: list[str]
    pad_id: int = 0
    precision: Precision = "fp32"
    opset: int
    #: Accuracy and other measurements of this variant (e.g. {"val_accuracy": 0.86}).
    metrics: dict[str, float] = Field(default_factory=dict)
    #: Parity figures from export validation (e.g. {"max_abs_logit_diff": 3e-7}).
    validation: dict[str, float] = Field(default_factory=dict)
    source_checkpoint: str = ""
    exported_at: str = ""

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_names(self) -> list[str]:
        """Names of the ONNX state inputs, in order."""
        return state_input_names(self.cell)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Per-row state shape (without the batch dimension)."""
        return (self.layers * self.directions, self.hidden)

    @property
    def state_bytes(self) -> int:
        """Bytes of float32 state one sequence needs."""
        rows, hidden = self.state_shape
        return rows * hidden * 4 * len(self.state_names)


def model_dir(repository: Path, name: str) -> Path:
    return Path(repository) / validate_model_name(name)


def version_dir(repository: Path, name: str, version: str | int) -> Path:
    return model_dir(repository, name) / validate_version(version)


def read_model_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a ``config.pbtxt`` file; raise RepositoryError naming the file on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: not a valid ModelConfig: {exc}") from exc
    return config


def format_model_config(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_model_config(path: Path, config: model_config_pb2.ModelConfig) -> None:
    Path(path).write_text(format_model_config(config), encoding="utf-8")


def config_parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """``rnnserve.*`` entries of ModelConfig.parameters, prefix stripped."""
    return {
        key[len(PARAM_PREFIX):]: value.string_value
        for key, value in config.parameters.items()
        if key.startswith(PARAM_PREFIX)
    }


def set_config_parameter(config: model_config_pb2.ModelConfig, key: str, value: object) -> None:
    config.parameters[PARAM_PREFIX + key].string_value = str(value)


def list_versions(model_path: Path) -> list[str]:
    """Version directories of one model, ascending numerically."""
    if not Path(model_path).is_dir():
        return []
    versions = [p.name for p in Path(model_path).iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(versions, key=int)


def list_models(repository: Path) -> list[str]:
    """Model directories (those holding a config.pbtxt), sorted by name."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a directory")
    return sorted(
        p.name for p in repository.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()
    )
