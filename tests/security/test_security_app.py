"""Security of the real server (tests/serving.py): TLS, mTLS, tokens on both APIs and the
metrics port, the container's health probe, and model names that try to leave the
repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rnnserve.protos import sentiment_pb2, sentiment_pb2_grpc
from rnnserve.server.security import UNAUTHENTICATED_MESSAGE
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.serving import start_server

METRICS_TOKEN = "metrics-token-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING
# Names that try to reach outside the repository (or are not one path component).
ESCAPES = ["../x", "..", ".", "/etc", "a/b", "..\\x", "x/../../escape", "../escape", "\x00x",
           "%2e%2e%2fescape", " ../escape"]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _classify(channel, metadata=None, model="tiny-lstm"):
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    return stub.Classify(sentiment_pb2.ClassifyRequest(texts=["good"], model=model),
                         metadata=metadata, timeout=30)


@pytest.fixture(scope="module")
def secure_server(tiny_repository, pki, kit):
    with start_server(tiny_repository, tls_cert=str(pki.server_cert),
                      tls_key=str(pki.server_key), tls_client_ca=str(pki.ca),
                      auth_token=kit.TOKEN, metrics_port=0,
                      metrics_auth_token=METRICS_TOKEN) as server:
        yield server


@pytest.fixture
def mtls_channel(secure_server, pki, kit):
    creds = kit.client_credentials(pki, cert=pki.client_cert, key=pki.client_key)
    with grpc.secure_channel(secure_server.address, creds) as channel:
        yield channel


def test_text_api_needs_the_token(mtls_channel, kit):
    bearer = (("authorization", f"Bearer {kit.TOKEN}"),)
    assert len(_classify(mtls_channel, bearer).predictions) == 1
    for metadata in (None, (("authorization", "Bearer not-the-token-0123456789"),)):
        with pytest.raises(grpc.RpcError) as info:
            _classify(mtls_channel, metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == UNAUTHENTICATED_MESSAGE


def test_kserve_api_needs_the_token(mtls_channel, kit):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(mtls_channel)
    bearer = (("authorization", f"Bearer {kit.TOKEN}"),)
    assert stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=bearer, timeout=10).live
    assert _code(lambda: stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub.ModelMetadata(
        service_pb2.ModelMetadataRequest(name="tiny-lstm"), timeout=10)) == \
        grpc.StatusCode.UNAUTHENTICATED


def test_streams_need_the_token(mtls_channel, kit):
    stub = sentiment_pb2_grpc.SentimentStub(mtls_channel)
    request = sentiment_pb2.StreamClassifyRequest(text="good", model="tiny-gru", end=True)
    assert _code(lambda: list(stub.StreamClassify(iter([request]), timeout=10))) == \
        grpc.StatusCode.UNAUTHENTICATED
    bearer = (("authorization", f"Bearer {kit.TOKEN}"),)
    [reply] = list(stub.StreamClassify(iter([request]), metadata=bearer, timeout=30))
    assert reply.prediction.label


def test_health_needs_no_token_but_still_tls(secure_server, mtls_channel, pki, kit):
    assert kit.health_check(mtls_channel) == SERVING
    with grpc.insecure_channel(secure_server.address) as plaintext:
        assert _code(lambda: kit.health_check(plaintext, timeout=3)) == \
            grpc.StatusCode.UNAVAILABLE
    # mutual TLS: a client that trusts the server but has no certificate is refused.
    with grpc.secure_channel(secure_server.address, kit.client_credentials(pki)) as no_cert:
        assert _code(lambda: kit.health_check(no_cert, timeout=3)) == \
            grpc.StatusCode.UNAVAILABLE


def test_metrics_port_needs_the_metrics_token(secure_server, kit):
    url = f"http://127.0.0.1:{secure_server.server.metrics_port}/metrics"

    def status(token):
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert [status(None), status(kit.TOKEN), status(METRICS_TOKEN)] == [401, 401, 200]


def test_container_healthcheck_against_real_tls_server(tiny_repository, pki, kit):
    """The image's HEALTHCHECK command, configured only by the server's environment."""
    tls_env = {"RNNSERVE_TLS_CERT": str(pki.server_cert), "RNNSERVE_TLS_KEY": str(pki.server_key),
               "RNNSERVE_AUTH_TOKEN": kit.TOKEN}
    with start_server(tiny_repository, subprocess=True, env=tls_env) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
        env.update(tls_env, RNNSERVE_PORT=str(server.port), RNNSERVE_PROBE_CA=str(pki.ca))
        done = subprocess.run([sys.executable, "-m", "rnnserve.server.healthprobe"], env=env,
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        assert server.find_event("listening")["tls"] is True


@pytest.fixture(scope="module")
def escape_server(tiny_repository, tmp_path_factory):
    """A repository with a valid model *beside* it, which no name may reach."""
    base = tmp_path_factory.mktemp("escape")
    repository = base / "repository"
    shutil.copytree(tiny_repository / "tiny-lstm", repository / "tiny-lstm")
    shutil.copytree(tiny_repository / "tiny-gru", base / "escape")
    shutil.copytree(tiny_repository / "tiny-gru", base / "x")
    with start_server(repository) as server:
        yield server


@pytest.mark.parametrize("name", ESCAPES)
def test_model_names_cannot_leave_the_repository(escape_server, name):
    refused = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    with escape_server.channel() as channel:
        text = sentiment_pb2_grpc.SentimentStub(channel)
        assert _code(lambda: _classify(channel, model=name)) in refused
        assert _code(lambda: text.GetModelMetadata(
            sentiment_pb2.GetModelMetadataRequest(model=name), timeout=10)) in refused
        stream_first = sentiment_pb2.StreamClassifyRequest(text="good", model=name, end=True)
        assert _code(lambda: list(text.StreamClassify(iter([stream_first]), timeout=10))) \
            in refused

        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert _code(lambda: kserve.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=name), timeout=10)) in refused
        assert _code(lambda: kserve.ModelConfig(
            service_pb2.ModelConfigRequest(name=name), timeout=10)) in refused
        ready = kserve.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=10)
        assert not ready.ready
        infer = service_pb2.ModelInferRequest(model_name=name)
        tensor = infer.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        tensor.contents.bytes_contents.append(b"good")
        assert _code(lambda: kserve.ModelInfer(infer, timeout=10)) in refused


@pytest.mark.parametrize("version", ["../1", "1/../2", "-1", "1.0", "01/..", "/1"])
def test_versions_cannot_leave_the_model(escape_server, version):
    refused = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    with escape_server.channel() as channel:
        text = sentiment_pb2_grpc.SentimentStub(channel)
        request = sentiment_pb2.ClassifyRequest(texts=["good"], model="tiny-lstm",
                                                version=version)
        assert _code(lambda: text.Classify(request, timeout=10)) in refused
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert _code(lambda: kserve.ModelMetadata(service_pb2.ModelMetadataRequest(
            name="tiny-lstm", version=version), timeout=10)) in refused
