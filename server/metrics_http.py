"""The Prometheus scrape endpoint: ``GET /metrics`` on its own port, in a daemon thread.

Invariants:
- it serves exactly one ``ServerTelemetry.registry`` (never prometheus_client's global one);
- only ``/metrics`` answers with metrics; ``/`` and ``/-/healthy`` say "ok", anything else 404;
- an optional ``authorize(environ) -> bool`` hook guards ``/metrics`` (401 when it says no);
  ``rnnserve.server.security.metrics_authorizer(settings)`` builds the bearer-token one;
- :meth:`MetricsHttpServer.stop` is idempotent and frees the port before it returns.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .telemetry import ServerTelemetry

Authorizer = Callable[[dict], bool]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingWSGIServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def metrics_app(telemetry: ServerTelemetry, authorize: Authorizer | None = None):
    """The WSGI application behind the endpoint (usable in tests without a socket)."""
    exposition = make_wsgi_app(telemetry.registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if authorize is not None and not authorize(environ):
                start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                    ("WWW-Authenticate", "Bearer")])
                return [b"unauthorized\n"]
            return exposition(environ, start_response)
        if path in ("/", "/-/healthy"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok: metrics at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: metrics at /metrics\n"]

    return app


class MetricsHttpServer:
    """A running endpoint; ``port`` is the bound port (useful when started with port 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_address[1]
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(telemetry: ServerTelemetry, *, host: str = "127.0.0.1", port: int = 0,
                         authorize: Authorizer | None = None) -> MetricsHttpServer:
    """Serve ``telemetry``'s registry at ``http://host:port/metrics`` until ``stop()``.

    Raises OSError when the port cannot be bound (the caller decides whether that is fatal).
    """
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, metrics_app(telemetry, authorize),
                         server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"rnnserve-metrics-{server.server_address[1]}", daemon=True)
    thread.start()
    return MetricsHttpServer(server, thread, host)
