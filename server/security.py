"""Transport security and authentication for the gRPC and metrics ports.

What this module gives ``server/app.py`` (and ``server/metrics_http.py``):

- ``SecuritySettings``: the security knobs (env prefix ``RNNSERVE_``). ``ServerSettings`` may
  inherit from it (flat names such as ``RNNSERVE_TLS_CERT``) or hold one as ``.security``;
  every function below accepts either, or a settings object with the same field names.
- ``server_credentials(settings)``: ``None`` (plaintext) or TLS / mutual-TLS credentials that
  re-read the certificate files when they change, so a rotated Secret needs no restart.
- ``server_interceptors(settings)``: the bearer-token interceptor when a token is configured.
- ``server_options(settings)``: transport limits for ``grpc.aio.server(options=...)``.
- ``metrics_authorizer(settings)``: the ``authorize(environ)`` hook that
  ``metrics_http.start_metrics_server`` takes, checking the metrics port's bearer token.
- ``metrics_ssl_context(settings)``: ``None`` (plain HTTP) or a ``ReloadingSSLContext`` for
  ``metrics_http.start_metrics_server(ssl_context=)``: TLS (mutual TLS when
  ``metrics_tls_client_ca`` is set) on the metrics port, whose ``current()`` context is
  rebuilt when the certificate files change, so a rotated Secret needs no restart.

Failed authentication answers UNAUTHENTICATED with one fixed message whatever was wrong
(missing header, wrong scheme, unknown token, unknown method), so a caller learns nothing
about the tokens or about which methods exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

#: Health RPCs never need a token: container and Kubernetes probes cannot send one, and
#: the answer (SERVING or not) reveals nothing worth protecting.
HEALTH_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
})

#: The only text an unauthenticated caller ever sees.
UNAUTHENTICATED_MESSAGE = "authentication required"

#: Shorter tokens are refused at start-up: a bearer token is the whole secret.
MIN_TOKEN_LENGTH = 16

#: How often (seconds) token files are checked for changes; rotation takes effect within it.
TOKEN_RELOAD_SECONDS = 1.0

#: How often (seconds) the metrics port's certificate files are checked for changes.
METRICS_TLS_RELOAD_SECONDS = 1.0


class SecuritySettings(BaseSettings):
    """Security settings; every field is optional and everything is off by default."""

    # env_ignore_empty: compose files pass ``${VAR:-}``, and "" must mean "not set".
    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="ignore",
                                      env_ignore_empty=True)

    #: PEM server certificate chain; setting it turns TLS on for the gRPC port.
    tls_cert: Path | None = None
    #: PEM private key of ``tls_cert``.
    tls_key: Path | None = None
    #: PEM CA bundle; setting it turns on mutual TLS (clients must present a cert it signed).
    tls_client_ca: Path | None = None
    #: Accepted bearer token(s) for the gRPC port, comma-separated (rotation: old,new).
    auth_token: SecretStr | None = None
    #: File of accepted tokens, one per line (``#`` comments); re-read when it changes.
    auth_token_file: Path | None = None
    #: Let grpc.health.v1 through without a token (probes cannot send one).
    auth_exempt_health: bool = True
    #: Bearer token(s) for the metrics port (separate, so Prometheus holds a scrape-only secret).
    metrics_auth_token: SecretStr | None = None
    #: File of metrics tokens, same format as ``auth_token_file``.
    metrics_auth_token_file: Path | None = None
    #: PEM server certificate chain for the metrics port; setting it turns on HTTPS there.
    metrics_tls_cert: Path | None = None
    #: PEM private key of ``metrics_tls_cert``.
    metrics_tls_key: Path | None = None
    #: PEM CA bundle; turns on mutual TLS on the metrics port (scrapers need a cert it signed).
    metrics_tls_client_ca: Path | None = None
    #: Concurrent RPCs (streams) one client connection may hold open; 0 = gRPC's default.
    grpc_max_concurrent_streams: int = 0
    #: Close connections after this many seconds (GOAWAY) so clients re-resolve and load
    #: spreads onto new replicas; 0 = never. Open streams get the grace period below.
    grpc_max_connection_age_s: float = 0.0
    #: Seconds open RPCs may continue after a GOAWAY; 0 = no limit (streams end naturally).
    grpc_max_connection_age_grace_s: float = 0.0

    @model_validator(mode="after")
    def _pairs(self) -> SecuritySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if (self.metrics_tls_cert is None) != (self.metrics_tls_key is None):
            raise ValueError("metrics_tls_cert and metrics_tls_key must be set together")
        if self.metrics_tls_client_ca is not None and self.metrics_tls_cert is None:
            raise ValueError("metrics_tls_client_ca (mutual TLS on the metrics port) needs "
                             "metrics_tls_cert and metrics_tls_key")
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.auth_token is not None or self.auth_token_file is not None

    @property
    def metrics_auth_enabled(self) -> bool:
        return self.metrics_auth_token is not None or self.metrics_auth_token_file is not None


def security_settings(settings: object | None = None) -> SecuritySettings:
    """The SecuritySettings inside ``settings`` (itself, its ``.security``, or its fields)."""
    if settings is None:
        return SecuritySettings()
    if isinstance(settings, SecuritySettings):
        return settings
    nested = getattr(settings, "security", None)
    if isinstance(nested, SecuritySettings):
        return nested
    fields = {name: getattr(settings, name) for name in SecuritySettings.model_fields
              if getattr(settings, name, None) is not None}
    return SecuritySettings(**fields)


# --- tokens -------------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest's time independent of the
    # presented token's length as well as its content.
    return hashlib.sha256(token.encode("utf-8")).digest()


def _parse_tokens(text: str) -> list[str]:
    lines = (line.strip() for line in text.replace(",", "\n").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class TokenSet:
    """Accepted bearer tokens from a value and/or a file; checks in constant time."""

    def __init__(self, value: SecretStr | str | None = None, file: Path | None = None,
                 *, what: str = "auth_token") -> None:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        self._static = _parse_tokens(raw or "")
        self._file = Path(file) if file is not None else None
        self._what = what
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._file_tokens: list[str] = []
        if self._file is not None:
            self._reload(force=True)
        self._digests = [_digest(t) for t in self._static + self._file_tokens]
        if not self._digests:
            raise ValueError(f"{what}: no token configured")
        for token in self._static + self._file_tokens:
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"{what}: tokens must be at least {MIN_TOKEN_LENGTH} characters")

    def _reload(self, force: bool = False) -> None:
        """Re-read the token file if it changed. At start-up a bad file is fatal; later a
        missing or unreadable file keeps the last good tokens (a Secret update swaps the
        file), while a readable file with no tokens in it locks every caller out."""
        try:
            st = self._file.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if not force and stamp == self._stamp:
                return
            tokens = _parse_tokens(self._file.read_text(encoding="utf-8"))
        except OSError as exc:
            if force:
                raise ValueError(f"{self._what}_file: cannot read {self._file}: {exc}") from exc
            log.error("%s_file %s unreadable (%s); keeping the previous tokens",
                      self._what, self._file, exc.strerror)
            return
        if not force and any(len(t) < MIN_TOKEN_LENGTH for t in tokens):
            log.error("%s_file %s has a token shorter than %d characters; ignoring them",
                      self._what, self._file, MIN_TOKEN_LENGTH)
            tokens = [t for t in tokens if len(t) >= MIN_TOKEN_LENGTH]
        self._stamp = stamp
        self._file_tokens = tokens
        self._digests = [_digest(t) for t in self._static + tokens]

    def _current(self) -> list[bytes]:
        if self._file is not None:
            now = time.monotonic()
            if now - self._checked >= TOKEN_RELOAD_SECONDS:
                with self._lock:
                    self._checked = now
                    self._reload()
        return self._digests

    def check(self, token: str | None) -> bool:
        """True if ``token`` is one of the accepted tokens."""
        presented = _digest(token or "")
        ok = False
        for accepted in self._current():  # no early exit: time does not say which matched
            ok |= hmac.compare_digest(presented, accepted)
        return ok and bool(token)

    def check_authorization(self, header: str | bytes | None) -> bool:
        """True if an ``Authorization`` value is ``Bearer <accepted token>``."""
        return self.check(bearer_token(header))


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# --- gRPC ---------------------------------------------------------------------------------


async def _deny(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


# A stream-stream handler never reads a request, so the same denial works for every call
# cardinality, and the real handler is never looked up: an unknown method and a known one
# answer the same to a caller without a token.
_DENY_HANDLER = grpc.stream_stream_rpc_method_handler(_deny)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata on every RPC but the exempt ones."""

    def __init__(self, tokens: TokenSet, exempt: Iterable[str] = HEALTH_METHODS) -> None:
        self._tokens = tokens
        self._exempt = frozenset(exempt)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in self._exempt:
            return await continuation(handler_call_details)
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value
                break
        if self._tokens.check_authorization(header):
            return await continuation(handler_call_details)
        return _DENY_HANDLER


def server_interceptors(settings: object | None = None) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for ``grpc.aio.server(interceptors=...)``; empty when auth is off."""
    s = security_settings(settings)
    if not s.auth_enabled:
        return []
    tokens = TokenSet(s.auth_token, s.auth_token_file, what="auth_token")
    exempt = HEALTH_METHODS if s.auth_exempt_health else ()
    return [BearerTokenInterceptor(tokens, exempt)]


def server_options(settings: object | None = None) -> list[tuple[str, int]]:
    """Channel arguments for ``grpc.aio.server(options=...)``, added to the server's own
    (message size limits stay with ServerSettings.max_message_bytes)."""
    s = security_settings(settings)
    options = [
        # gRPC sets SO_REUSEPORT by default, so a second server on the same port would
        # silently share traffic instead of failing to start.
        ("grpc.so_reuseport", 0),
    ]
    if s.grpc_max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams))
    if s.grpc_max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(s.grpc_max_connection_age_s * 1000)))
        if s.grpc_max_connection_age_grace_s > 0:
            options.append(("grpc.max_connection_age_grace_ms",
                            int(s.grpc_max_connection_age_grace_s * 1000)))
    return options


class _CertificateFiles:
    """Server key/cert/CA files, re-read when any of them changes (checked per handshake)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
        self._stamp = self._stamps()
        self.initial = self._configuration()

    def _stamps(self) -> tuple:
        return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in self._paths)

    def _configuration(self):
        cert, key, *ca = (p.read_bytes() for p in self._paths)
        return grpc.ssl_server_certificate_configuration([(key, cert)],
                                                         root_certificates=ca[0] if ca else None)

    def fetch(self):
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, ValueError) as exc:  # mid-rotation: keep serving the old pair
            log.warning("TLS files unreadable (%s); keeping the current certificate", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate files changed; new connections use the new certificate")
        return configuration


def server_credentials(settings: object | None = None) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS when ``tls_client_ca`` is set) credentials; None means plaintext."""
    s = security_settings(settings)
    if s.tls_cert is None:
        return None
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(s, name)
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{name}: cannot read {path}")
    files = _CertificateFiles(s.tls_cert, s.tls_key, s.tls_client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=s.tls_client_ca is not None)


# --- metrics port -------------------------------------------------------------------------


def metrics_authorizer(settings: object | None = None) -> Callable[[dict], bool] | None:
    """``authorize(wsgi_environ) -> bool`` for ``metrics_http.start_metrics_server(authorize=)``;
    None when the metrics port is open (no metrics token configured)."""
    s = security_settings(settings)
    if not s.metrics_auth_enabled:
        return None
    tokens = TokenSet(s.metrics_auth_token, s.metrics_auth_token_file, what="metrics_auth_token")

    def authorize(environ: dict) -> bool:
        return tokens.check_authorization(environ.get("HTTP_AUTHORIZATION"))

    return authorize


class ReloadingSSLContext:
    """The metrics port's server-side TLS context, rebuilt when its files change.

    ``current()`` is called once per connection; it looks at the files' mtime and size at
    most every ``check_interval`` seconds and, when they changed, builds a new context from
    them. At start-up (the constructor) a missing, unreadable or invalid file is an error;
    later such a file (a Secret half-way through an update) keeps the previous context and
    is retried at the next check.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None, *,
                 check_interval: float = METRICS_TLS_RELOAD_SECONDS) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.check_interval = check_interval
        self._lock = threading.Lock()
        for name, path in (("metrics_tls_cert", self.cert), ("metrics_tls_key", self.key),
                           ("metrics_tls_client_ca", self.client_ca)):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        self._stamp = self._stamps()
        self._context = self._build()
        self._checked = time.monotonic()

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None

    def _paths(self) -> list[Path]:
        return [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths():
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _build(self) -> ssl.SSLContext:
        """A fresh context from the files; ValueError (naming the setting) when one is bad."""
        # Not ssl.create_default_context(Purpose.CLIENT_AUTH): that would also trust the
        # system CAs for client certificates. Only client_ca may sign a scraper's cert.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(f"metrics_tls_cert/metrics_tls_key: cannot load {self.cert} "
                             f"with {self.key}: {exc}") from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (OSError, ValueError) as exc:
                raise ValueError(f"metrics_tls_client_ca: cannot load {self.client_ca}: "
                                 f"{exc}") from exc
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def current(self) -> ssl.SSLContext:
        """The context for a new connection (rebuilt first if the files changed)."""
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return self._context
        with self._lock:
            if now - self._checked >= self.check_interval:
                self._checked = now
                self._reload()
            return self._context

    def _reload(self) -> None:
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return
            context = self._build()
        except (OSError, ValueError) as exc:  # mid-rotation: keep serving the old pair
            log.warning("metrics TLS files unusable (%s); keeping the current certificate", exc)
            return
        self._stamp = stamp
        self._context = context
        log.info("metrics TLS certificate files changed; new connections use the new "
                 "certificate")


def metrics_ssl_context(settings: object | None = None) -> ReloadingSSLContext | None:
    """TLS for the metrics port (mutual TLS when ``metrics_tls_client_ca`` is set), for
    ``metrics_http.start_metrics_server(ssl_context=)``; None means plain HTTP.

    The result's ``current()`` is the ``ssl.SSLContext`` to use for the next connection
    (TLS 1.2 or newer, server side); it follows the certificate files as they are rotated.
    Raises ValueError when a file is missing, unreadable or not a usable certificate/key/CA.
    """
    s = security_settings(settings)
    if s.metrics_tls_cert is None:
        return None
    return ReloadingSSLContext(s.metrics_tls_cert, s.metrics_tls_key, s.metrics_tls_client_ca)
