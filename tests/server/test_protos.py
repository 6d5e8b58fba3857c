"""The committed generated code is what protos/generate.py produces today."""

from __future__ import annotations

from pathlib import Path

from rnnserve.protos import generate
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.server.wire import request_class


def test_generated_code_is_current(tmp_path):
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == {"sentiment_pb2.py", "sentiment_pb2.pyi",
                                         "sentiment_pb2_grpc.py"}
    for path in written:
        committed = Path(generate.PROTO_ROOT) / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run python -m rnnserve.protos.generate")
    grpc_module = (tmp_path / "sentiment_pb2_grpc.py").read_text()
    assert "from rnnserve.protos import sentiment_pb2" in grpc_module
    assert "from rnnserve.v1" not in grpc_module


def test_wire_mirrors_parse_public_messages():
    public = pb.StreamClassifyRequest(text="héllo wörld", model="m", version="2", end=True,
                                      reset=True)
    mirror = request_class("StreamClassifyRequest").FromString(public.SerializeToString())
    assert mirror.text == "héllo wörld".encode()
    assert (mirror.model, mirror.version, mirror.end, mirror.reset) == (b"m", b"2", True, True)
    batch = pb.ClassifyRequest(texts=["a", "ü"], model="x")
    parsed = request_class("ClassifyRequest").FromString(batch.SerializeToString())
    assert list(parsed.texts) == [b"a", "ü".encode()]
    assert parsed.SerializeToString() == batch.SerializeToString()
