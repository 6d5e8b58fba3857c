"""The Triton ``ModelConfig`` (config.pbtxt) of an exported model.

Invariants:
- Built only through ``model_config_pb2.ModelConfig``; text is produced by
  ``rnnserve.repository.format_model_config`` (never hand-formatted).
- Inputs/outputs list the ONNX signature of docs/architecture.md §2 without the batch dim
  (``-1`` for time); state dims are ``[layers*dirs, hidden]``.
- ``dynamic_batching`` and ``sequence_batching`` are one ``oneof`` in ModelConfig, so only
  ``sequence_batching`` is written: its ``oldest`` strategy carries the batching knobs
  (``max_queue_delay_microseconds``, ``preferred_batch_size``, ``max_candidate_sequences``)
  for both stateless and stateful traffic, and its implicit ``state`` entries map each state
  input to its output with ``initial_state`` zero data.
- Everything ModelConfig has no field for is a ``rnnserve.*`` parameter (string values):
  the keys of docs/architecture.md §2 plus ``rnnserve.opset`` (the graph's ONNX opset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2

from rnnserve.repository import (
    LABELS_FILE,
    TOKENIZER_FILE,
    RepositoryMetadata,
    set_config_parameter,
)

PLATFORM = "onnxruntime_onnx"


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


def _io(message, name: str, data_type: int, dims: list[int]) -> None:
    entry = message.add()
    entry.name = name
    entry.data_type = data_type
    entry.dims.extend(dims)


def build_model_config(
    name: str, metadata: RepositoryMetadata, defaults: ServingDefaults | None = None
) -> model_config_pb2.ModelConfig:
    """The ModelConfig for model ``name`` whose newest version is described by ``metadata``."""
    defaults = defaults or ServingDefaults()
    mc = model_config_pb2
    config = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=defaults.max_batch_size)
    state_dims = list(metadata.state_shape)

    _io(config.input, "input_ids", mc.TYPE_INT64, [-1])
    # A 1-D per-row input declared with dims [1] and reshape [] so batched it is [batch].
    _io(config.input, "lengths", mc.TYPE_INT64, [1])
    config.input[-1].reshape.SetInParent()
    for state in metadata.state_names:
        _io(config.input, state, mc.TYPE_FP32, state_dims)
    _io(config.output, "logits", mc.TYPE_FP32, [metadata.num_labels])
    for state in metadata.state_names:
        _io(config.output, f"{state}_out", mc.TYPE_FP32, state_dims)

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
        "cell": metadata.cell,
        "hidden": metadata.hidden,
        "layers": metadata.layers,
        "bidirectional": str(metadata.bidirectional).lower(),
        "pad_id": metadata.pad_id,
        "precision": metadata.precision,
        "tokenizer": TOKENIZER_FILE,
        "labels": LABELS_FILE,
        "chunk_length": defaults.chunk_length,
        "opset": metadata.opset,
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
