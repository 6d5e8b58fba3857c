"""TLS and mutual TLS on the metrics port, through the real metrics HTTP server.

Every test starts ``metrics_http.start_metrics_server`` on a loopback port (or the whole
rnnserve server, or a real Prometheus) with certificates made at test time (conftest.py),
and talks to it with real clients: ``http.client`` / ``ssl`` sockets and Prometheus.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError
from rnnserve.bench.prometheus_runner import PrometheusRunner, prometheus_binary
from rnnserve.server.security import (
    ReloadingSSLContext,
    SecuritySettings,
    metrics_authorizer,
    metrics_ssl_context,
)

from tests.serving import start_server

metrics_http = pytest.importorskip("rnnserve.server.metrics_http")
telemetry = pytest.importorskip("rnnserve.server.telemetry")

SCRAPE_TOKEN = "scrape-token-0123456789abcdef"

# An exception escaping a connection thread (e.g. a failed handshake) fails the test: the
# server must close such connections quietly.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


# --- helpers ------------------------------------------------------------------------------


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None, *,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A scraper's context: trusts ``ca``; presents ``cert``/``key`` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def scrape(port: int, context: ssl.SSLContext, *, token: str | None = None,
           path: str = "/metrics") -> tuple[int, str]:
    """GET over HTTPS; (status, body). Raises OSError when TLS refuses the connection."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


def served_certificate(port: int, ca: Path) -> bytes:
    """DER of the certificate the server presents in a fresh handshake."""
    context = client_context(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True)


def der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


@pytest.fixture
def metrics_server():
    """``metrics_server(**start_metrics_server kwargs)`` -> a started server, stopped after."""
    started = []

    def start(**kwargs):
        server = metrics_http.start_metrics_server(telemetry.ServerTelemetry(), **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def tls_settings(pki, *, mutual: bool = False, **extra) -> SecuritySettings:
    return SecuritySettings(metrics_tls_cert=pki.server_cert, metrics_tls_key=pki.server_key,
                            metrics_tls_client_ca=pki.ca if mutual else None, **extra)


# --- TLS ----------------------------------------------------------------------------------


def test_https_scrape_with_the_ca(metrics_server, pki):
    tls = metrics_ssl_context(tls_settings(pki))
    assert isinstance(tls, ReloadingSSLContext) and not tls.mutual
    context = tls.current()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE          # no client certificates asked for
    server = metrics_server(ssl_context=tls)
    assert server.url == f"https://127.0.0.1:{server.port}/metrics"

    status, body = scrape(server.port, client_context(pki.ca))
    assert status == 200
    assert "rnnserve_build_info{" in body
    assert served_certificate(server.port, pki.ca) == der(pki.server_cert)
    # TLS 1.2 clients are served too (the minimum), and the non-metrics paths as before.
    assert scrape(server.port, client_context(pki.ca, max_version=ssl.TLSVersion.TLSv1_2),
                  path="/-/healthy") == (200, "ok: metrics at /metrics\n")
    # A scraper that does not trust the server's CA refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        scrape(server.port, client_context(pki.rogue_ca))


def test_plain_ssl_context_is_accepted(metrics_server, pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = metrics_server(ssl_context=context)
    status, body = scrape(server.port, client_context(pki.ca))
    assert status == 200 and "rnnserve_build_info{" in body


def test_plain_http_is_refused_and_the_server_keeps_serving(metrics_server, pki, capfd):
    server = metrics_server(ssl_context=metrics_ssl_context(tls_settings(pki)))
    plain_url = f"http://127.0.0.1:{server.port}/metrics"
    for _ in range(3):
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(plain_url, timeout=5).read()
    status, body = scrape(server.port, client_context(pki.ca))
    assert status == 200 and "rnnserve_build_info{" in body
    assert "Traceback" not in capfd.readouterr().err     # failed handshakes are quiet


def test_a_silent_client_blocks_nobody_and_is_cut_off(metrics_server, pki):
    server = metrics_server(ssl_context=metrics_ssl_context(tls_settings(pki)),
                            handshake_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
        time.sleep(0.1)                      # accepted, now waiting for a ClientHello
        started = time.monotonic()
        status, _ = scrape(server.port, client_context(pki.ca))
        assert status == 200
        assert time.monotonic() - started < 0.8  # well before the silent one times out
        silent.settimeout(5)
        assert silent.recv(1) == b""         # the server closed it after handshake_timeout
        assert time.monotonic() - started < 3
    assert scrape(server.port, client_context(pki.ca))[0] == 200


# --- mutual TLS ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_mutual_tls(metrics_server, pki, capfd, version):
    tls = metrics_ssl_context(tls_settings(pki, mutual=True))
    assert tls.mutual and tls.current().verify_mode == ssl.CERT_REQUIRED
    server = metrics_server(ssl_context=tls)

    with pytest.raises(OSError):             # no client certificate
        scrape(server.port, client_context(pki.ca, max_version=version))
    with pytest.raises(OSError):             # a certificate from another CA
        scrape(server.port, client_context(pki.ca, pki.rogue_client_cert,
                                           pki.rogue_client_key, max_version=version))
    status, body = scrape(server.port, client_context(pki.ca, pki.client_cert, pki.client_key,
                                                      max_version=version))
    assert status == 200 and "rnnserve_build_info{" in body
    assert "Traceback" not in capfd.readouterr().err


def test_tls_and_bearer_token_together(metrics_server, pki):
    settings = tls_settings(pki, mutual=True, metrics_auth_token=SCRAPE_TOKEN)
    server = metrics_server(ssl_context=metrics_ssl_context(settings),
                            authorize=metrics_authorizer(settings))
    context = client_context(pki.ca, pki.client_cert, pki.client_key)
    assert scrape(server.port, context)[0] == 401
    assert scrape(server.port, context, token="wrong-token-0123456789abcdef")[0] == 401
    status, body = scrape(server.port, context, token=SCRAPE_TOKEN)
    assert status == 200 and "rnnserve_build_info{" in body


# --- rotation -----------------------------------------------------------------------------


def _install(cert: Path, key: Path, into: Path, bump: int) -> None:
    """Replace the live pair, with an mtime that certainly differs from the last one."""
    shutil.copyfile(key, into / "tls.key")
    shutil.copyfile(cert, into / "tls.crt")
    stamp = time.time() + bump
    for name in ("tls.key", "tls.crt"):
        os.utime(into / name, (stamp, stamp))


def _wait_for_certificate(port: int, ca: Path, expected: bytes, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while served_certificate(port, ca) != expected:
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        time.sleep(0.1)


def test_rotated_certificate_is_served_without_restart(metrics_server, kit, tmp_path):
    ca = kit.make_ca(tmp_path, "rotation-ca")
    first = kit.make_leaf(tmp_path, ca, "server-first", server=True)
    second = kit.make_leaf(tmp_path, ca, "server-second", server=True)
    live = tmp_path / "secret"
    live.mkdir()
    _install(*first, live, bump=0)
    settings = SecuritySettings(metrics_tls_cert=live / "tls.crt", metrics_tls_key=live / "tls.key")
    server = metrics_server(ssl_context=metrics_ssl_context(settings))
    assert served_certificate(server.port, ca[2]) == der(first[0])

    _install(*second, live, bump=10)
    _wait_for_certificate(server.port, ca[2], der(second[0]))
    assert scrape(server.port, client_context(ca[2]))[0] == 200

    # Half-way through an update (a file that is not a certificate): keep the last good pair.
    (live / "tls.crt").write_text("not a certificate\n")
    time.sleep(1.3)                           # past the once-a-second check
    assert served_certificate(server.port, ca[2]) == der(second[0])
    assert scrape(server.port, client_context(ca[2]))[0] == 200
    # ... and pick the next good pair up once it is complete.
    _install(*first, live, bump=20)
    _wait_for_certificate(server.port, ca[2], der(first[0]))


# --- settings and start-up errors ---------------------------------------------------------


def test_settings_pairs_are_validated(pki):
    with pytest.raises(ValidationError, match="metrics_tls_cert and metrics_tls_key must be set"):
        SecuritySettings(metrics_tls_key=pki.server_key)
    with pytest.raises(ValidationError, match="metrics_tls_cert and metrics_tls_key must be set"):
        SecuritySettings(metrics_tls_cert=pki.server_cert)
    with pytest.raises(ValidationError, match="metrics_tls_client_ca .*needs metrics_tls_cert"):
        SecuritySettings(metrics_tls_client_ca=pki.ca)
    # The gRPC port's TLS does not turn on the metrics port's, and vice versa.
    assert metrics_ssl_context(SecuritySettings(tls_cert=pki.server_cert,
                                                tls_key=pki.server_key)) is None
    assert SecuritySettings(metrics_tls_cert=pki.server_cert,
                            metrics_tls_key=pki.server_key).tls_cert is None


def test_settings_from_the_environment(pki, monkeypatch):
    monkeypatch.setenv("RNNSERVE_METRICS_TLS_CERT", str(pki.server_cert))
    monkeypatch.setenv("RNNSERVE_METRICS_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("RNNSERVE_METRICS_TLS_CLIENT_CA", str(pki.ca))
    settings = SecuritySettings()
    assert (settings.metrics_tls_cert, settings.metrics_tls_key,
            settings.metrics_tls_client_ca) == (pki.server_cert, pki.server_key, pki.ca)
    assert metrics_ssl_context(settings).mutual
    monkeypatch.setenv("RNNSERVE_METRICS_TLS_CLIENT_CA", "")      # empty = unset
    assert SecuritySettings().metrics_tls_client_ca is None


def test_bad_files_fail_at_start_up(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    cert, key, ca = pki.server_cert, pki.server_key, pki.ca
    cases = [  # (metrics_tls_cert, metrics_tls_key, metrics_tls_client_ca), error
        ((missing, key, None), "metrics_tls_cert: cannot read"),
        ((cert, missing, None), "metrics_tls_key: cannot read"),
        ((cert, key, missing), "metrics_tls_client_ca: cannot read"),
        ((garbage, key, None), "metrics_tls_cert/metrics_tls_key: cannot load"),
        ((cert, pki.client_key, None), "metrics_tls_cert/metrics_tls_key: cannot load"),
        ((cert, key, garbage), "metrics_tls_client_ca: cannot load"),
    ]
    assert metrics_ssl_context(SecuritySettings(metrics_tls_cert=cert, metrics_tls_key=key,
                                                metrics_tls_client_ca=ca)) is not None
    for (tls_cert, tls_key, client_ca), message in cases:
        settings = SecuritySettings(metrics_tls_cert=tls_cert, metrics_tls_key=tls_key,
                                    metrics_tls_client_ca=client_ca)
        with pytest.raises(ValueError, match=message):
            metrics_ssl_context(settings)


# --- the whole server ---------------------------------------------------------------------


def test_server_serves_metrics_over_mutual_tls(tiny_repository, pki, caplog):
    with caplog.at_level(logging.INFO, logger="rnnserve.server.app"), \
            start_server(tiny_repository, metrics_host="127.0.0.1", metrics_port=0,
                         metrics_tls_cert=str(pki.server_cert),
                         metrics_tls_key=str(pki.server_key),
                         metrics_tls_client_ca=str(pki.ca)) as server:
        port = server.server.metrics_port
        with pytest.raises(OSError):
            scrape(port, client_context(pki.ca))
        status, body = scrape(port, client_context(pki.ca, pki.client_cert, pki.client_key))
        assert status == 200
        assert 'rnnserve_model_load_seconds{model="tiny-lstm"' in body
    (event,) = [r for r in caplog.records if r.getMessage() == "metrics_listening"]
    assert event.fields["scheme"] == "https" and event.fields["port"] == port


def test_server_start_fails_clearly_on_a_missing_metrics_certificate(tiny_repository, pki,
                                                                     tmp_path):
    with pytest.raises(ValueError, match="metrics_tls_cert: cannot read .*nowhere.pem"):
        start_server(tiny_repository, metrics_host="127.0.0.1", metrics_port=0,
                     metrics_tls_cert=str(tmp_path / "nowhere.pem"),
                     metrics_tls_key=str(pki.server_key))


# --- a real Prometheus --------------------------------------------------------------------


class _TlsPrometheus(PrometheusRunner):
    """PrometheusRunner with the scrape jobs given verbatim (https, tls_config, ...)."""

    def __init__(self, jobs: list[dict], workdir: Path) -> None:
        super().__init__([], workdir)
        self.jobs = jobs

    def _config(self) -> str:
        return json.dumps({"global": {"scrape_interval": self.scrape_interval,
                                      "evaluation_interval": self.scrape_interval},
                           "scrape_configs": self.jobs}, indent=2)


def _job(name: str, port: int, tls_config: dict) -> dict:
    return {"job_name": name, "scheme": "https", "metrics_path": "/metrics",
            "scrape_interval": "1s", "scrape_timeout": "1s", "tls_config": tls_config,
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}


@pytest.mark.skipif(prometheus_binary() is None,
                    reason="prometheus not installed (.ci/install-prometheus.sh)")
def test_prometheus_scrapes_over_tls_and_mutual_tls(metrics_server, pki, tmp_path):
    tls = metrics_server(ssl_context=metrics_ssl_context(tls_settings(pki)))
    mtls = metrics_server(ssl_context=metrics_ssl_context(tls_settings(pki, mutual=True)))
    ca = {"ca_file": str(pki.ca)}
    client = {**ca, "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    prometheus = _TlsPrometheus([
        _job("rnnserve", tls.port, ca),
        _job("untrusted", tls.port, {"ca_file": str(pki.rogue_ca)}),
        _job("rnnserve-mtls", mtls.port, client),
        _job("mtls-without-cert", mtls.port, ca),
    ], tmp_path / "prometheus").start()
    try:
        for job, up in (("rnnserve", 1), ("rnnserve-mtls", 1), ("untrusted", 0),
                        ("mtls-without-cert", 0)):
            prometheus.wait_for(f'up{{job="{job}"}}', lambda v, up=up: v == up, timeout=15)
        assert prometheus.scalar('rnnserve_build_info{job="rnnserve"}') == 1
        assert prometheus.scalar('rnnserve_build_info{job="rnnserve-mtls"}') == 1
        assert prometheus.scalar('rnnserve_build_info{job="untrusted"}') is None
    finally:
        prometheus.stop()
