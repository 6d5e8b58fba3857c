"""KServe v2 test fixtures: one in-process rnnserve on the session's tiny repository, clients
(raw stub, tritonclient sync), and the offline reference (ONNX Runtime directly)."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton
from kserve_support import Offline
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2_grpc


@pytest.fixture(scope="session")
def kserve_server(tiny_repository):
    """Shared server; tests may run inferences but must not change its settings."""
    with start_server(tiny_repository) as handle:
        yield handle


@pytest.fixture(scope="session")
def kserve_channel(kserve_server):
    with kserve_server.channel() as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="session")
def kstub(kserve_channel):
    """Raw ``inference.GRPCInferenceService`` stub, for hand-made (also malformed) requests."""
    return service_pb2_grpc.GRPCInferenceServiceStub(kserve_channel)


@pytest.fixture(scope="session")
def text_stub(kserve_channel):
    """The text API on the same port, for parity checks."""
    return sentiment_pb2_grpc.SentimentStub(kserve_channel)


@pytest.fixture(scope="session")
def client(kserve_server):
    with triton.InferenceServerClient(kserve_server.address) as c:
        yield c


@pytest.fixture(scope="session")
def offline(tiny_repository):
    return {name: Offline(tiny_repository, name) for name in ("tiny-lstm", "tiny-gru")}
