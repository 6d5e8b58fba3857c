"""The metrics port's bearer token, through the real metrics HTTP server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from rnnserve.server.security import SecuritySettings, metrics_authorizer

metrics_http = pytest.importorskip("rnnserve.server.metrics_http")
telemetry = pytest.importorskip("rnnserve.server.telemetry")

SCRAPE_TOKEN = "scrape-token-0123456789abcdef"


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_port_requires_its_own_token(kit):
    authorize = metrics_authorizer(SecuritySettings(metrics_auth_token=SCRAPE_TOKEN,
                                                    auth_token=kit.TOKEN))
    server = metrics_http.start_metrics_server(telemetry.ServerTelemetry(), authorize=authorize)
    try:
        assert _get(server.url) == 401
        assert _get(server.url, "wrong-token-0123456789abcdef") == 401
        assert _get(server.url, kit.TOKEN) == 401  # the gRPC token is not a scrape token
        assert _get(server.url, SCRAPE_TOKEN) == 200
    finally:
        server.stop()


def test_metrics_open_without_metrics_token(kit):
    assert metrics_authorizer(SecuritySettings(auth_token=kit.TOKEN)) is None
