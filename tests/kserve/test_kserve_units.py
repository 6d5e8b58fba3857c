"""Pure pieces of the KServe layer: BYTES codec, the naming rule, served ModelConfig."""

from __future__ import annotations

import pytest
from rnnserve.server.catalog import ModelDirectory, ModelView
from rnnserve.server.errors import InvalidArgument, NotFound, Unavailable
from rnnserve.server.kserve_models import served_config
from rnnserve.server.kserve_tensors import decode_bytes_elements, encode_bytes_elements
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor


def test_bytes_codec_matches_tritonclient():
    import numpy as np

    items = [b"", b"a", "é ✨".encode(), b"x" * 300]
    encoded = encode_bytes_elements(items)
    assert encoded == serialize_byte_tensor(np.array(items, dtype=object)).item()
    assert decode_bytes_elements(encoded, 4, what="t") == items
    assert list(deserialize_bytes_tensor(encoded)) == items


@pytest.mark.parametrize("data, expected, message", [
    (b"\x01\x00\x00", 1, "truncated BYTES element length"),
    (b"\x05\x00\x00\x00abc", 1, "more data than available"),
    (encode_bytes_elements([b"a", b"b"]), 1, "elements more than 1"),
    (encode_bytes_elements([b"a"]), 2, "elements 1 for t, expecting 2"),
])
def test_bytes_codec_rejects(data, expected, message):
    with pytest.raises(InvalidArgument, match=message):
        decode_bytes_elements(data, expected, what="t")


class _Served:
    """What the directory reads of a served version (engines carry more)."""

    def __init__(self, name: str, version: str, *, streaming: bool = True,
                 ready: bool = True) -> None:
        self.name, self.version, self.streaming, self.ready = name, version, streaming, ready


def _directory(*served: _Served, default: str | None = None) -> ModelDirectory:
    directory = ModelDirectory()
    for engine in served:
        directory._engines[(engine.name, engine.version)] = engine
    directory._index(default)
    return directory


def test_naming_convention_and_shadowing():
    directory = _directory(_Served("a", "1"), _Served("b", "1"), _Served("b-stream", "1"),
                           _Served("bidi", "1", streaming=False))
    assert directory.resolve("a") == ModelView("a", "a", False)
    assert directory.resolve("a-stream") == ModelView("a-stream", "a", True)
    # A real model named b-stream wins over b's stateful flavour.
    assert directory.resolve("b-stream") == ModelView("b-stream", "b-stream", False)
    assert directory.resolve("b-stream-stream").base == "b-stream"
    assert directory.resolve("bidi-stream") is None  # bidirectional: no stream
    assert directory.resolve("c") is None
    assert [v.name for v in directory.views()] == [
        "a", "a-stream", "b", "b-stream", "b-stream-stream", "bidi"]


def test_lookup_rule_and_its_errors():
    directory = _directory(_Served("a", "1"), _Served("a", "2"), _Served("c", "1", ready=False))
    assert directory.lookup("a")[1].version == "2"
    view, engine = directory.lookup("a-stream", "1")
    assert (view.stateful, engine.version) == (True, "1")
    with pytest.raises(NotFound, match=r"Request for unknown model: 'nope' is not found "
                                       r"\(served models: a, a-stream, c, c-stream\)"):
        directory.lookup("nope")
    with pytest.raises(NotFound, match=r"'a' version 3 is not found \(served versions: 1, 2\)"):
        directory.lookup("a", "3")
    with pytest.raises(Unavailable, match="not ready yet"):
        directory.lookup("c")
    with pytest.raises(NotFound):          # the default model only where the API has one
        directory.lookup("")
    with pytest.raises(InvalidArgument, match="no default model; choose one of: a, c"):
        directory.lookup("", default=True)
    assert _directory(_Served("a", "1")).lookup("", default=True)[1].name == "a"


def _repository_config():
    config = model_config_pb2.ModelConfig(name="m", platform="onnxruntime_onnx",
                                          max_batch_size=64)
    config.input.add(name="input_ids", data_type=model_config_pb2.TYPE_INT64, dims=[-1])
    sequence = config.sequence_batching
    sequence.max_sequence_idle_microseconds = 60_000_000
    sequence.oldest.preferred_batch_size.extend([8, 16, 32, 64])
    sequence.oldest.max_queue_delay_microseconds = 500
    sequence.state.add(input_name="state_h", output_name="state_h_out")
    config.parameters["rnnserve.chunk_length"].string_value = "128"
    return config


def test_served_config_rewrites_io_and_scheduling():
    source = _repository_config()
    knobs = {"max_batch_size": 16, "max_queue_delay_us": 250, "sequence_idle_us": 5_000_000,
             "chunk_length": 64}
    stateless = served_config(ModelView("m", "m", False), source, 3, **knobs)
    stateful = served_config(ModelView("m-stream", "m", True), source, 3, **knobs)
    for config in (stateless, stateful):
        assert config.max_batch_size == 16 and config.backend == "rnnserve"
        assert [i.name for i in config.input] == ["TEXT"]
        assert [list(o.dims) for o in config.output] == [[3], [3], [1]]
        assert config.parameters["rnnserve.chunk_length"].string_value == "64"
    assert stateless.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(stateless.dynamic_batching.preferred_batch_size) == [8, 16]
    assert stateless.dynamic_batching.max_queue_delay_microseconds == 250
    assert stateful.name == "m-stream"
    assert stateful.WhichOneof("scheduling_choice") == "sequence_batching"
    assert not stateful.sequence_batching.state
    assert stateful.sequence_batching.max_sequence_idle_microseconds == 5_000_000
    assert list(stateful.sequence_batching.oldest.preferred_batch_size) == [8, 16]
    assert source.input[0].name == "input_ids"  # the repository's config is untouched
