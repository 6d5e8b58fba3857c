"""Fixtures for the security tests: a throw-away PKI and a grpc.aio server in a thread.

Certificates are generated with ``cryptography`` at test time (nothing secret is committed).
The server runs on its own event loop in a background thread so that plain synchronous
clients (and the synchronous health probe) can talk to it from the test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


# --- PKI ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(directory: Path, cn: str):
    """A self-signed CA; returns (cert, key, pem path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_leaf(directory: Path, ca, cn: str, *, server: bool) -> tuple[Path, Path]:
    """A leaf certificate signed by ``ca`` = (cert, key, path); returns (cert pem, key pem)."""
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName("rnnserve.test"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


@dataclass(frozen=True)
class Pki:
    ca: Path            # trusted CA: signs the server and the good client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path      # an unrelated CA, and a client it signed
    rogue_client_cert: Path
    rogue_client_key: Path
    directory: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "test-ca")
    rogue = make_ca(d, "rogue-ca")
    server_cert, server_key = make_leaf(d, ca, "server", server=True)
    client_cert, client_key = make_leaf(d, ca, "client", server=False)
    rogue_cert, rogue_key = make_leaf(d, rogue, "rogue-client", server=False)
    return Pki(ca[2], server_cert, server_key, client_cert, client_key,
               rogue[2], rogue_cert, rogue_key, d)


def client_credentials(pki: Pki, *, ca: Path | None = None, cert: Path | None = None,
                       key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)


# --- a small grpc.aio server --------------------------------------------------------------


async def _unary(request: bytes, context) -> bytes:
    return b"echo:" + request


async def _unary_stream(request: bytes, context):
    for i in range(2):
        yield b"%d:" % i + request


async def _stream_unary(requests, context) -> bytes:
    return b"|".join([r async for r in requests])


async def _stream_stream(requests, context):
    async for r in requests:
        yield b"echo:" + r


ECHO = grpc.method_handlers_generic_handler("test.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
    "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
})


class ServerThread:
    """A grpc.aio server with the health service and ``test.Echo`` on a background loop."""

    def __init__(self, *, credentials=None, interceptors=(), options=()) -> None:
        self._credentials = credentials
        self._interceptors = list(interceptors)
        self._options = list(options)
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0
        self.error: Exception | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        try:
            server = grpc.aio.server(interceptors=self._interceptors, options=self._options)
            server.add_generic_rpc_handlers([ECHO])
            health_servicer = health.aio.HealthServicer()
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            address = "127.0.0.1:0"
            if self._credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, self._credentials)
            await server.start()
            self._stop = asyncio.Event()
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace=None)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def serve() -> Iterator:
    """``serve(credentials=..., interceptors=...)`` -> a started ServerThread, stopped after."""
    started: list[ServerThread] = []

    def start(**kwargs) -> ServerThread:
        server = ServerThread(**kwargs).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def health_check(channel: grpc.Channel, timeout: float = 5) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported directly)."""
    return SimpleNamespace(TOKEN=TOKEN, OTHER_TOKEN=OTHER_TOKEN, make_ca=make_ca,
                           make_leaf=make_leaf, client_credentials=client_credentials,
                           health_check=health_check, ServerThread=ServerThread)
