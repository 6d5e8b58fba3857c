"""The /metrics endpoint: its own registry, paths, the authorize hook, a clean stop."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
import pytest
from rnnserve.server.metrics_http import start_metrics_server
from rnnserve.server.telemetry import ServerTelemetry


def get(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), \
                response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


@pytest.fixture()
def telemetry() -> ServerTelemetry:
    server = ServerTelemetry(process_metrics=False)
    server.model("tiny", 1).request_finished(api="text", kind="unary", code=grpc.StatusCode.OK,
                                            seconds=0.002, texts=3)
    return server


def test_serves_metrics_and_nothing_else(telemetry):
    endpoint = start_metrics_server(telemetry, host="127.0.0.1", port=0)
    try:
        assert endpoint.port > 0
        status, content_type, body = get(endpoint.url)
        assert status == 200 and content_type.startswith("text/plain")
        assert 'rnnserve_texts_total{api="text",kind="unary",model="tiny",version="1"} 3.0' in body
        assert get(f"http://127.0.0.1:{endpoint.port}/-/healthy")[0] == 200
        assert get(f"http://127.0.0.1:{endpoint.port}/secrets")[0] == 404
    finally:
        endpoint.stop()


def test_authorize_hook_guards_metrics_only(telemetry):
    def authorize(environ: dict) -> bool:
        return environ.get("HTTP_AUTHORIZATION") == "Bearer s3cret"

    endpoint = start_metrics_server(telemetry, port=0, authorize=authorize)
    try:
        assert get(endpoint.url)[0] == 401
        assert get(endpoint.url, {"Authorization": "Bearer nope"})[0] == 401
        status, _, body = get(endpoint.url, {"Authorization": "Bearer s3cret"})
        assert status == 200 and "rnnserve_requests_total" in body
        assert get(f"http://127.0.0.1:{endpoint.port}/-/healthy")[0] == 200
    finally:
        endpoint.stop()


def test_stop_frees_the_port_and_is_idempotent(telemetry):
    endpoint = start_metrics_server(telemetry, port=0)
    port = endpoint.port
    endpoint.stop()
    endpoint.stop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_busy_port_raises(telemetry):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(OSError):
            start_metrics_server(telemetry, port=sock.getsockname()[1])


def test_disabled_telemetry_serves_an_empty_page():
    endpoint = start_metrics_server(ServerTelemetry(enabled=False), port=0)
    try:
        assert get(endpoint.url)[:1] == (200,)
        assert get(endpoint.url)[2] == ""
    finally:
        endpoint.stop()
