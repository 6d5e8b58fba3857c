"""The model repository contract shared by the exporter (writer) and the server (reader).

The one place where metadata.json (``RepositoryMetadata``) and config.pbtxt
(``build_model_config`` writes it, ``read_model_config``/``config_parameters`` read it) are
defined; the architecture they describe is ``rnnserve.architecture.Architecture``.

Layout (Triton's)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx
    <repo>/<model>/<version>/tokenizer.json
    <repo>/<model>/<version>/labels.txt
    <repo>/<model>/<version>/metadata.json

Invariants:
- ``config.pbtxt`` is a ``inference.ModelConfig`` in protobuf text format; it is parsed and
  written only through the generated class, never formatted by hand.
- Everything ModelConfig has no field for is a ``rnnserve.*`` string parameter: the
  ``MIRRORED_FIELDS`` of metadata.json, the tokenizer and labels file names, chunk_length.
- Model names and versions are single, safe path components (``validate_model_name``), so a
  name can never address anything outside the repository.
- Version directories are positive integers; the highest is the default version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import ConfigDict, Field
from tritonclient.grpc import model_config_pb2

from rnnserve.architecture import Architecture

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"

#: Keys of ModelConfig.parameters written by the exporter and read by the server.
PARAM_PREFIX = "rnnserve."
#: The metadata.json fields config.pbtxt repeats as ``rnnserve.*`` parameters, for clients
#: that read only the model config (KServe's ModelConfig); the server reads metadata.json.
MIRRORED_FIELDS = ("cell", "hidden", "layers", "bidirectional", "pad_id", "precision", "opset")
PLATFORM = "onnxruntime_onnx"

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


class RepositoryMetadata(Architecture):
    """``metadata.json``: the version's ``Architecture`` plus what export measured and chose.

    Unknown keys are ignored, so a server reads metadata written by a newer exporter.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = 1
    precision: Precision = "fp32"
    opset: int
    #: Accuracy and other measurements of this variant (e.g. {"val_accuracy": 0.86}).
    metrics: dict[str, float] = Field(default_factory=dict)
    #: Parity figures from export validation (e.g. {"max_abs_logit_diff": 3e-7}).
    validation: dict[str, float] = Field(default_factory=dict)
    source_checkpoint: str = ""
    exported_at: str = ""


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


def config_parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """``rnnserve.*`` entries of ModelConfig.parameters, prefix stripped."""
    return {
        key[len(PARAM_PREFIX):]: value.string_value
        for key, value in config.parameters.items()
        if key.startswith(PARAM_PREFIX)
    }


def set_config_parameter(config: model_config_pb2.ModelConfig, key: str, value: object) -> None:
    """Set ``rnnserve.<key>``; booleans are written ``true``/``false``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    config.parameters[PARAM_PREFIX + key].string_value = text


@dataclass(frozen=True)
class ServingDefaults:
    """Batching and streaming defaults written into config.pbtxt (the server may override)."""

    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 500
    preferred_batch_size: tuple[int, ...] = (8, 16, 32, 64)
    max_sequence_idle_microseconds: int = 60_000_000
    max_candidate_sequences: int = 1024
    chunk_length: int = 128
    extra: dict[str, str] = field(default_factory=dict)


def _add_tensor(tensors, name: str, data_type: int, dims: list[int]) -> None:
    entry = tensors.add()
    entry.name = name
    entry.data_type = data_type
    entry.dims.extend(dims)


def build_model_config(
    name: str, metadata: RepositoryMetadata, defaults: ServingDefaults | None = None
) -> model_config_pb2.ModelConfig:
    """The ModelConfig for model ``name`` whose newest version is described by ``metadata``.

    Inputs/outputs list the ONNX signature of docs/architecture.md §2 without the batch dim
    (``-1`` for time; state dims ``metadata.state_shape``). ``dynamic_batching`` and
    ``sequence_batching`` are one ``oneof``, so only ``sequence_batching`` is written: its
    ``oldest`` strategy carries the batching knobs for stateless and stateful traffic, and
    its implicit ``state`` entries map each state input to its output with zero initial data.
    """
    defaults = defaults or ServingDefaults()
    mc = model_config_pb2
    config = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=defaults.max_batch_size)
    state_dims = list(metadata.state_shape)

    _add_tensor(config.input, "input_ids", mc.TYPE_INT64, [-1])
    # A 1-D per-row input declared with dims [1] and reshape [] so batched it is [batch].
    _add_tensor(config.input, "lengths", mc.TYPE_INT64, [1])
    config.input[-1].reshape.SetInParent()
    for state in metadata.state_names:
        _add_tensor(config.input, state, mc.TYPE_FP32, state_dims)
    _add_tensor(config.output, "logits", mc.TYPE_FP32, [metadata.num_labels])
    for state in metadata.state_names:
        _add_tensor(config.output, f"{state}_out", mc.TYPE_FP32, state_dims)

    sequence = config.sequence_batching
    sequence.max_sequence_idle_microseconds = defaults.max_sequence_idle_microseconds
    sequence.oldest.max_candidate_sequences = defaults.max_candidate_sequences
    sequence.oldest.max_queue_delay_microseconds = defaults.max_queue_delay_microseconds
    sequence.oldest.preferred_batch_size.extend(
        size for size in defaults.preferred_batch_size if size <= defaults.max_batch_size
    )
    for state in metadata.state_names:
        entry = sequence.state.add()
        entry.input_name = state
        entry.output_name = f"{state}_out"
        entry.data_type = mc.TYPE_FP32
        entry.dims.extend(state_dims)
        initial = entry.initial_state.add()
        initial.name = f"{state}_zero"
        initial.data_type = mc.TYPE_FP32
        initial.dims.extend(state_dims)
        initial.zero_data = True

    parameters = {
        **{key: getattr(metadata, key) for key in MIRRORED_FIELDS},
        "tokenizer": TOKENIZER_FILE,
        "labels": LABELS_FILE,
        "chunk_length": defaults.chunk_length,
        **defaults.extra,
    }
    for key, value in parameters.items():
        set_config_parameter(config, key, value)
    return config


def signature(config: model_config_pb2.ModelConfig) -> tuple:
    """What must agree between versions of one model: I/O names, types and dims."""
    return (
        tuple((t.name, t.data_type, tuple(t.dims)) for t in config.input),
        tuple((t.name, t.data_type, tuple(t.dims)) for t in config.output),
    )


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
