"""How repository models appear over KServe v2: flavours, tensors, metadata and ModelConfig.

Naming (the server's one rule, server/catalog.py; see docs/kserve.md):

- ``<model>`` is the **stateless** flavour: every row of a request is classified on its own
  (``ModelEngine.classify``); its ModelConfig has ``dynamic_batching``.
- ``<model>-stream`` is the **stateful** flavour: each request is one step of a sequence
  named by the ``sequence_id`` request parameter (``ModelEngine.stream_step``); its ModelConfig
  has ``sequence_batching``.
- A repository model whose own name is ``<x>-stream`` is served under that name and shadows
  the stateful flavour of ``<x>``; it never disappears.

Both flavours of one model share the same ModelEngine (one batcher, one sequence store), so
KServe and text-API traffic are batched together.

Tensors (identical for both flavours; ``B`` is the batch dimension when max_batch_size > 0):

===============  ========  =================  =========================================
name             datatype  shape              content
===============  ========  =================  =========================================
TEXT (input)     BYTES     [B, 1]             UTF-8 text
PROBABILITIES    FP32      [B, num_labels]    softmax of the logits, label index order
LOGITS           FP32      [B, num_labels]    raw logits
LABEL            BYTES     [B, 1]             the arg-max label, UTF-8
===============  ========  =================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2

from rnnserve.repository import set_config_parameter

from .catalog import ModelView

INPUT_TEXT = "TEXT"
OUTPUT_PROBABILITIES = "PROBABILITIES"
OUTPUT_LOGITS = "LOGITS"
OUTPUT_LABEL = "LABEL"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_LOGITS, OUTPUT_LABEL)

BACKEND = "rnnserve"
LABELS_FILE = "labels.txt"

_TYPE_NAMES = {
    model_config_pb2.TYPE_STRING: "BYTES",
    model_config_pb2.TYPE_FP32: "FP32",
}


@dataclass(frozen=True)
class TensorSpec:
    """One exposed tensor; ``dims`` exclude the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]


def tensor_specs(num_labels: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of every exposed model with ``num_labels`` labels."""
    inputs = [TensorSpec(INPUT_TEXT, "BYTES", (1,))]
    outputs = [
        TensorSpec(OUTPUT_PROBABILITIES, "FP32", (num_labels,)),
        TensorSpec(OUTPUT_LOGITS, "FP32", (num_labels,)),
        TensorSpec(OUTPUT_LABEL, "BYTES", (1,)),
    ]
    return inputs, outputs


def full_shape(spec: TensorSpec, max_batch_size: int) -> list[int]:
    """Shape as ModelMetadata reports it: ``-1`` batch dimension first when batching."""
    return ([-1] if max_batch_size > 0 else []) + list(spec.dims)


def served_config(
    view: ModelView,
    repository_config: model_config_pb2.ModelConfig,
    num_labels: int,
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    sequence_idle_us: int,
    chunk_length: int | None = None,
) -> model_config_pb2.ModelConfig:
    """The repository's ModelConfig rewritten to what KServe clients actually talk to.

    Kept: version_policy, instance_group, optimization, parameters (plus
    ``rnnserve.kserve.*``). Replaced: name, platform/backend, input/output (the ONNX tensors
    are internal), scheduling (dynamic_batching for the stateless flavour, sequence_batching
    without the internal ``state`` entries for the stateful one), max_batch_size, queue delay,
    sequence idle time and ``rnnserve.chunk_length`` (the engine's effective values, settings
    included). Dropped: model_warmup, batch_input/batch_output, ensemble_scheduling (they refer
    to the ONNX graph).
    """
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(repository_config)
    config.name = view.name
    config.platform = ""
    config.backend = BACKEND
    for field in ("input", "output", "batch_input", "batch_output", "model_warmup"):
        config.ClearField(field)
    config.ClearField("ensemble_scheduling")

    inputs, outputs = tensor_specs(num_labels)
    for spec in inputs:
        tensor = config.input.add(name=spec.name, data_type=_config_type(spec.datatype))
        tensor.dims.extend(spec.dims)
    for spec in outputs:
        tensor = config.output.add(name=spec.name, data_type=_config_type(spec.datatype))
        tensor.dims.extend(spec.dims)
        if spec.datatype == "FP32":
            tensor.label_filename = LABELS_FILE

    config.max_batch_size = max_batch_size
    # dynamic_batching and sequence_batching are one oneof: setting one clears the other.
    source = repository_config.sequence_batching
    if view.stateful:
        sequence = model_config_pb2.ModelSequenceBatching()
        sequence.CopyFrom(source)
        sequence.ClearField("state")
        sequence.ClearField("control_input")
        sequence.max_sequence_idle_microseconds = sequence_idle_us
        if sequence.HasField("oldest"):
            sequence.oldest.max_queue_delay_microseconds = max_queue_delay_us
        config.sequence_batching.CopyFrom(sequence)
    else:
        dynamic = model_config_pb2.ModelDynamicBatching()
        if repository_config.HasField("dynamic_batching"):
            dynamic.CopyFrom(repository_config.dynamic_batching)
        elif source.HasField("oldest"):
            dynamic.preferred_batch_size.extend(source.oldest.preferred_batch_size)
        dynamic.max_queue_delay_microseconds = max_queue_delay_us
        config.dynamic_batching.CopyFrom(dynamic)
    _drop_oversized(config, max_batch_size)

    if chunk_length is not None:
        set_config_parameter(config, "chunk_length", chunk_length)
    set_config_parameter(config, "kserve.flavour", view.flavour)
    set_config_parameter(config, "kserve.model", view.base)
    return config


def _drop_oversized(config: model_config_pb2.ModelConfig, max_batch_size: int) -> None:
    """Preferred batch sizes above the served max_batch_size cannot happen; drop them."""
    which = config.WhichOneof("scheduling_choice")
    if which == "dynamic_batching":
        sizes = config.dynamic_batching.preferred_batch_size
    elif which == "sequence_batching" and config.sequence_batching.HasField("oldest"):
        sizes = config.sequence_batching.oldest.preferred_batch_size
    else:
        return
    kept = [s for s in sizes if s <= max(max_batch_size, 1)]
    del sizes[:]
    sizes.extend(kept)


def _config_type(datatype: str) -> int:
    for value, name in _TYPE_NAMES.items():
        if name == datatype:
            return value
    raise ValueError(datatype)
