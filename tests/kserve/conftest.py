"""KServe v2 test fixtures over the shared session server (tests/conftest.py): clients
(raw stub, text-API stub, tritonclient sync)."""

from __future__ import annotations

import pytest
import tritonclient.grpc as triton
from rnnserve.protos import sentiment_pb2_grpc
from tritonclient.grpc import service_pb2_grpc


@pytest.fixture(scope="session")
def kserve_server(server):
    """The shared server (tests/conftest.py); tests may run inferences, not change settings."""
    return server


@pytest.fixture(scope="session")
def kserve_channel(channel):
    return channel


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
