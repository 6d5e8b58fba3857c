"""Bearer-token authentication on a real grpc.aio server, with real clients."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rnnserve.server.security import (
    UNAUTHENTICATED_MESSAGE,
    SecuritySettings,
    server_interceptors,
)

CALLS = {
    # method -> how to call it with a channel, a request and metadata
    "Unary": lambda ch, md: ch.unary_unary("/test.Echo/Unary")(b"x", metadata=md, timeout=5),
    "UnaryStream": lambda ch, md: list(
        ch.unary_stream("/test.Echo/UnaryStream")(b"x", metadata=md, timeout=5)),
    "StreamUnary": lambda ch, md: ch.stream_unary("/test.Echo/StreamUnary")(
        iter([b"a", b"b"]), metadata=md, timeout=5),
    "StreamStream": lambda ch, md: list(ch.stream_stream("/test.Echo/StreamStream")(
        iter([b"a", b"b"]), metadata=md, timeout=5)),
}


@pytest.fixture
def auth_server(serve, kit):
    settings = SecuritySettings(auth_token=f"{kit.TOKEN},{kit.OTHER_TOKEN}")
    return serve(interceptors=server_interceptors(settings))


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("metadata", [
    None,                                              # no header at all
    (("authorization", "Bearer wrong-token-0123456789abcdef"),),
    (("authorization", "Bearer "),),
    (("authorization", "Basic dGVzdDp0ZXN0"),),         # wrong scheme
    (("x-api-key", "test-token-0123456789abcdef"),),    # right secret, wrong header
], ids=["missing", "wrong", "empty", "basic", "other-header"])
def test_bad_credentials_are_unauthenticated(auth_server, method, metadata):
    with grpc.insecure_channel(auth_server.target) as channel, \
            pytest.raises(grpc.RpcError) as info:
        CALLS[method](channel, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The same fixed text whatever was wrong: nothing about tokens or methods leaks.
    assert info.value.details() == UNAUTHENTICATED_MESSAGE


@pytest.mark.parametrize("method", sorted(CALLS))
def test_right_token_is_accepted(auth_server, kit, method):
    with grpc.insecure_channel(auth_server.target) as channel:
        assert CALLS[method](channel, _bearer(kit.TOKEN))
        # A second configured token works too (rotation: old and new both accepted).
        assert CALLS[method](channel, _bearer(kit.OTHER_TOKEN))


def test_scheme_is_case_insensitive(auth_server, kit):
    with grpc.insecure_channel(auth_server.target) as channel:
        md = (("authorization", f"bearer {kit.TOKEN}"),)
        assert CALLS["Unary"](channel, md) == b"echo:x"


def test_unknown_method_without_token_looks_like_any_other(auth_server, kit):
    """Without a token an unknown method is UNAUTHENTICATED, not UNIMPLEMENTED."""
    with grpc.insecure_channel(auth_server.target) as channel:
        call = channel.unary_unary("/test.Nope/Missing")
        with pytest.raises(grpc.RpcError) as info:
            call(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            call(b"x", metadata=_bearer(kit.TOKEN), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_is_exempt(auth_server, kit):
    with grpc.insecure_channel(auth_server.target) as channel:
        assert kit.health_check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_health_can_be_protected_too(serve, kit):
    settings = SecuritySettings(auth_token=kit.TOKEN, auth_exempt_health=False)
    server = serve(interceptors=server_interceptors(settings))
    with grpc.insecure_channel(server.target) as channel, \
            pytest.raises(grpc.RpcError) as info:
        kit.health_check(channel)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_file_rotation(serve, kit, tmp_path, monkeypatch):
    monkeypatch.setattr("rnnserve.server.security.TOKEN_RELOAD_SECONDS", 0.0)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# comment lines and blanks are ignored\n\n{kit.TOKEN}\n")
    server = serve(interceptors=server_interceptors(
        SecuritySettings(auth_token_file=token_file)))
    with grpc.insecure_channel(server.target) as channel:
        assert CALLS["Unary"](channel, _bearer(kit.TOKEN)) == b"echo:x"
        # Revoke the old token, install a new one: takes effect without a restart.
        token_file.write_text(f"{kit.OTHER_TOKEN}\n")
        assert CALLS["Unary"](channel, _bearer(kit.OTHER_TOKEN)) == b"echo:x"
        with pytest.raises(grpc.RpcError) as info:
            CALLS["Unary"](channel, _bearer(kit.TOKEN))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_no_token_configured_means_no_interceptor():
    assert server_interceptors(SecuritySettings()) == []
