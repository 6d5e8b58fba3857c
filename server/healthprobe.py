"""Tiny gRPC health probe: ``python -m rnnserve.server.healthprobe``.

Used by the image's HEALTHCHECK and by Kubernetes exec probes where native gRPC probes
cannot be used (they speak plaintext only, so a TLS-only server needs this one). Exit status
0 means the health service answered SERVING; anything else exits 1 with one line on stderr.

It imports only grpc and grpc_health (no numpy, no ONNX Runtime), so it starts quickly.
Defaults come from the same environment as the server, so inside the container a bare
``python -m rnnserve.server.healthprobe`` checks the local server as it is configured:

- target: ``RNNSERVE_PROBE_TARGET``, else ``127.0.0.1:$RNNSERVE_PORT`` (8001)
- TLS is used when ``RNNSERVE_TLS_CERT`` is set. The probe trusts ``RNNSERVE_PROBE_CA``,
  else ``RNNSERVE_TLS_CLIENT_CA``, else the server certificate itself (self-signed case);
  under mutual TLS it presents ``RNNSERVE_PROBE_CERT``/``_KEY``, else the server's own pair.
- ``RNNSERVE_PROBE_SERVER_NAME`` overrides the name checked against the certificate
  (the probe dials 127.0.0.1, which the certificate may not list).

Health RPCs are exempt from bearer-token authentication, so the probe sends no token.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    port = _env("RNNSERVE_PORT") or "8001"
    tls_on = _env("RNNSERVE_TLS_CERT") is not None
    mtls_on = tls_on and _env("RNNSERVE_TLS_CLIENT_CA") is not None
    p = argparse.ArgumentParser(prog="python -m rnnserve.server.healthprobe",
                                description="Exit 0 if the gRPC health service says SERVING.")
    p.add_argument("--target", default=_env("RNNSERVE_PROBE_TARGET") or f"127.0.0.1:{port}")
    p.add_argument("--service", default=_env("RNNSERVE_PROBE_SERVICE") or "",
                   help="health service name; '' is the whole server")
    p.add_argument("--timeout", type=float, default=float(_env("RNNSERVE_PROBE_TIMEOUT") or 3))
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=tls_on)
    p.add_argument("--ca", default=_env("RNNSERVE_PROBE_CA", "RNNSERVE_TLS_CLIENT_CA",
                                        "RNNSERVE_TLS_CERT"))
    p.add_argument("--cert", default=_env("RNNSERVE_PROBE_CERT")
                   or (_env("RNNSERVE_TLS_CERT") if mtls_on else None))
    p.add_argument("--key", default=_env("RNNSERVE_PROBE_KEY")
                   or (_env("RNNSERVE_TLS_KEY") if mtls_on else None))
    p.add_argument("--server-name", default=_env("RNNSERVE_PROBE_SERVER_NAME"))
    return p.parse_args(argv)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls:
        return grpc.insecure_channel(args.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.ca), private_key=_read(args.key),
        certificate_chain=_read(args.cert))
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(serving?, one-line reason)."""
    try:
        with _channel(args) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                               timeout=args.timeout)
    except OSError as exc:
        return False, f"cannot read TLS file: {exc}"
    except grpc.RpcError as exc:
        return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, reason = check(args)
    print(f"{args.target} {args.service or '<server>'}: {reason}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
