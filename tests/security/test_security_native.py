"""TLS in the native front-end (``--frontend native``): it terminates TLS itself, from the
same files, and picks up a rotated certificate without a restart (its file watcher re-reads
them every second). The rest of the security suite runs through it in `make test-native`."""

from __future__ import annotations

import os
import shutil
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.serving import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_certificate_rotation_reaches_new_connections(tiny_repository, pki, kit, tmp_path,
                                                      native_frontend_binary):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    with start_server(tiny_repository, frontend="native", tls_cert=str(cert),
                      tls_key=str(key)) as server:
        with grpc.secure_channel(server.address, kit.client_credentials(pki)) as channel:
            assert kit.health_check(channel) == SERVING
        with grpc.insecure_channel(server.address) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                kit.health_check(plaintext, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        new_ca = kit.make_ca(tmp_path, "new-ca")
        new_cert, new_key = kit.make_leaf(tmp_path, new_ca, "new-server", server=True)
        os.replace(new_key, key)              # by rename, as a Secret volume update does
        os.replace(new_cert, cert)
        deadline = time.monotonic() + 10
        while True:                           # the watcher's period is one second
            with grpc.secure_channel(server.address,
                                     kit.client_credentials(pki, ca=new_ca[2])) as channel:
                try:
                    assert kit.health_check(channel, timeout=2) == SERVING
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        with grpc.secure_channel(server.address, kit.client_credentials(pki)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                kit.health_check(channel, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
