"""TLS and mutual TLS on a real grpc.aio server, with real clients."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rnnserve.server.security import SecuritySettings, server_credentials

SERVING = health_pb2.HealthCheckResponse.SERVING


def _refused(channel: grpc.Channel, kit) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        kit.health_check(channel, timeout=3)
    return info.value.code()


@pytest.fixture
def tls_server(serve, pki):
    settings = SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key)
    return serve(credentials=server_credentials(settings))


@pytest.fixture
def mtls_server(serve, pki):
    settings = SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                tls_client_ca=pki.ca)
    return serve(credentials=server_credentials(settings))


def test_tls_accepts_client_trusting_the_ca(tls_server, pki, kit):
    with grpc.secure_channel(tls_server.target, kit.client_credentials(pki)) as channel:
        assert kit.health_check(channel) == SERVING


def test_tls_refuses_plaintext_client(tls_server, kit):
    with grpc.insecure_channel(tls_server.target) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_rejects_server_from_unknown_ca(tls_server, pki, kit):
    creds = kit.client_credentials(pki, ca=pki.rogue_ca)
    with grpc.secure_channel(tls_server.target, creds) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_tls_hostname_is_checked(tls_server, pki, kit):
    # The certificate lists localhost, rnnserve.test and 127.0.0.1, not this name.
    options = [("grpc.ssl_target_name_override", "elsewhere.test")]
    with grpc.secure_channel(tls_server.target, kit.client_credentials(pki),
                             options=options) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_client_cert_from_the_ca(mtls_server, pki, kit):
    creds = kit.client_credentials(pki, cert=pki.client_cert, key=pki.client_key)
    with grpc.secure_channel(mtls_server.target, creds) as channel:
        assert kit.health_check(channel) == SERVING
        assert channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"echo:x"


def test_mtls_refuses_client_without_cert(mtls_server, pki, kit):
    with grpc.secure_channel(mtls_server.target, kit.client_credentials(pki)) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_client_cert_from_another_ca(mtls_server, pki, kit):
    creds = kit.client_credentials(pki, cert=pki.rogue_client_cert, key=pki.rogue_client_key)
    with grpc.secure_channel(mtls_server.target, creds) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_certificate_rotation_without_restart(serve, pki, kit, tmp_path):
    """New connections get the new pair once the files change (a rotated Secret)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    server = serve(credentials=server_credentials(SecuritySettings(tls_cert=cert, tls_key=key)))
    with grpc.secure_channel(server.target, kit.client_credentials(pki)) as channel:
        assert kit.health_check(channel) == SERVING

    new_ca = kit.make_ca(tmp_path, "new-ca")
    new_cert, new_key = kit.make_leaf(tmp_path, new_ca, "new-server", server=True)
    # Replace both files by rename, as a Secret volume update does.
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    with grpc.secure_channel(server.target, kit.client_credentials(pki, ca=new_ca[2])) as ch:
        assert kit.health_check(ch) == SERVING
    with grpc.secure_channel(server.target, kit.client_credentials(pki)) as channel:
        assert _refused(channel, kit) == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_must_come_in_pairs(pki):
    with pytest.raises(ValueError, match="together"):
        SecuritySettings(tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="mutual TLS"):
        SecuritySettings(tls_client_ca=pki.ca)


def test_unreadable_tls_file_fails_at_start(pki, tmp_path):
    settings = SecuritySettings(tls_cert=tmp_path / "missing.pem", tls_key=pki.server_key)
    with pytest.raises(ValueError, match="tls_cert"):
        server_credentials(settings)


def test_no_cert_means_plaintext():
    assert server_credentials(SecuritySettings()) is None
