"""The Prometheus scrape endpoint: ``GET /metrics`` on its own port, in a daemon thread.

Invariants:
- it serves exactly one ``ServerTelemetry.registry`` (never prometheus_client's global one);
- only ``/metrics`` answers with metrics; ``/`` and ``/-/healthy`` say "ok", anything else 404;
- an optional ``authorize(environ) -> bool`` hook guards ``/metrics`` (401 when it says no);
  ``rnnserve.server.security.metrics_authorizer(settings)`` builds the bearer-token one;
- :meth:`MetricsHttpServer.stop` is idempotent and frees the port before it returns;
- with an ``ssl_context`` the port speaks HTTPS only
  (``rnnserve.server.security.metrics_ssl_context(settings)`` builds one that follows
  rotated certificate files). The accept loop never reads from a client: each connection's
  TLS handshake runs in that connection's own thread under ``handshake_timeout``, so a slow,
  silent or plaintext client holds up nobody else, and a failed handshake just closes its
  connection (logged at DEBUG, no traceback).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .telemetry import ServerTelemetry

Authorizer = Callable[[dict], bool]

log = logging.getLogger(__name__)

#: Seconds a client gets to complete the TLS handshake before its connection is closed.
HANDSHAKE_TIMEOUT = 10.0


class SSLContextSource(Protocol):
    """Anything that hands out the context for the next connection (e.g. one that follows
    rotated certificate files: ``security.ReloadingSSLContext``)."""

    def current(self) -> ssl.SSLContext: ...


class _FixedContext:
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def current(self) -> ssl.SSLContext:
        return self._context


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def get_environ(self) -> dict:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"          # wsgiref then reports wsgi.url_scheme https
        return environ


class _Server(ThreadingWSGIServer):
    allow_reuse_address = True
    tls: SSLContextSource | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        # Runs in the connection's own thread (ThreadingMixIn), never in the accept loop.
        if self.tls is not None:
            request = self._handshake(request, client_address)
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: socket.socket, client_address) -> ssl.SSLSocket | None:
        connection: socket.socket = sock
        try:
            sock.settimeout(self.handshake_timeout)
            connection = self.tls.current().wrap_socket(sock, server_side=True,
                                                        do_handshake_on_connect=False)
            connection.do_handshake()
            connection.settimeout(None)      # as a plain connection: blocking from here on
            return connection
        except (OSError, ValueError) as exc:  # SSLError, timeout, reset, plaintext client
            log.debug("metrics TLS handshake with %s failed: %s", client_address, exc)
            for each in (connection, sock):  # wrap_socket takes over the descriptor
                try:
                    each.close()
                except OSError:
                    pass
            return None

    def handle_error(self, request, client_address) -> None:
        # A scraper that goes away mid-answer is not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


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

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str,
                 scheme: str = "http") -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_address[1]
        self.scheme = scheme
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(telemetry: ServerTelemetry, *, host: str = "127.0.0.1", port: int = 0,
                         authorize: Authorizer | None = None,
                         ssl_context: ssl.SSLContext | SSLContextSource | None = None,
                         handshake_timeout: float = HANDSHAKE_TIMEOUT) -> MetricsHttpServer:
    """Serve ``telemetry``'s registry at ``http(s)://host:port/metrics`` until ``stop()``.

    ``ssl_context``: a server-side ``ssl.SSLContext``, or an object whose ``current()`` gives
    the context for each new connection; the port then speaks HTTPS only.
    Raises OSError when the port cannot be bound (the caller decides whether that is fatal).
    """
    server_class = _Server6 if ":" in host else _Server
    tls = _FixedContext(ssl_context) if isinstance(ssl_context, ssl.SSLContext) else ssl_context
    server = make_server(host, port, metrics_app(telemetry, authorize),
                         server_class=server_class, handler_class=_QuietHandler)
    server.tls = tls                         # set before the accept loop starts
    server.handshake_timeout = handshake_timeout
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"rnnserve-metrics-{server.server_address[1]}", daemon=True)
    thread.start()
    return MetricsHttpServer(server, thread, host, "https" if tls is not None else "http")
