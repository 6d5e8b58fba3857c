"""``python -m rnnserve.server.healthprobe`` against plaintext, TLS and mTLS servers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rnnserve.server import healthprobe
from rnnserve.server.security import SecuritySettings, server_credentials, server_interceptors


def _probe(*argv: str) -> int:
    return healthprobe.main(list(argv))


def test_plaintext(serve, kit):
    server = serve(interceptors=server_interceptors(SecuritySettings(auth_token=kit.TOKEN)))
    # Health is exempt from the token, so the probe works on an authenticated server.
    assert _probe("--target", server.target, "--no-tls") == 0
    assert _probe("--target", server.target, "--service", "no.such.Service", "--no-tls") == 1


def test_nothing_listening(kit):
    assert _probe("--target", "127.0.0.1:1", "--no-tls", "--timeout", "1") == 1


def test_tls_and_mtls(serve, pki):
    tls = serve(credentials=server_credentials(
        SecuritySettings(tls_cert=pki.server_cert, tls_key=pki.server_key)))
    assert _probe("--target", tls.target, "--tls", "--ca", str(pki.ca)) == 0
    assert _probe("--target", tls.target, "--no-tls", "--timeout", "1") == 1
    # Dialing by IP with another name to check: the override must be a name on the cert.
    assert _probe("--target", tls.target, "--tls", "--ca", str(pki.ca),
                  "--server-name", "rnnserve.test") == 0

    mtls = serve(credentials=server_credentials(SecuritySettings(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)))
    assert _probe("--target", mtls.target, "--tls", "--ca", str(pki.ca), "--timeout", "1") == 1
    assert _probe("--target", mtls.target, "--tls", "--ca", str(pki.ca),
                  "--cert", str(pki.client_cert), "--key", str(pki.client_key)) == 0


def test_defaults_follow_the_server_environment(serve, pki):
    """In the container a bare ``python -m ...healthprobe`` must just work (HEALTHCHECK)."""
    server = serve(credentials=server_credentials(SecuritySettings(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(RNNSERVE_PORT=str(server.port), RNNSERVE_TLS_CERT=str(pki.server_cert),
               RNNSERVE_TLS_KEY=str(pki.server_key), RNNSERVE_TLS_CLIENT_CA=str(pki.ca),
               RNNSERVE_PROBE_CERT=str(pki.client_cert), RNNSERVE_PROBE_KEY=str(pki.client_key))
    done = subprocess.run([sys.executable, "-m", "rnnserve.server.healthprobe"], env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout


@pytest.mark.parametrize("heavy", ["onnxruntime", "numpy", "torch"])
def test_probe_imports_nothing_heavy(heavy):
    code = ("import sys, rnnserve.server.healthprobe; "
            f"sys.exit(1 if {heavy!r} in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
