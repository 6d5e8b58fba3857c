"""TokenSet, bearer parsing and SecuritySettings from the environment."""

from __future__ import annotations

import types

import pytest
from rnnserve.server.security import (
    SecuritySettings,
    TokenSet,
    bearer_token,
    security_settings,
    server_options,
)

GOOD = "a-long-enough-token-123"


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), (b"Bearer abc", "abc"),
    ("Basic abc", None), ("Bearer", None), ("Bearer   ", None), ("", None), (None, None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_check_accepts_only_configured_tokens():
    tokens = TokenSet(f"{GOOD}, second-token-0123456789")
    assert tokens.check(GOOD)
    assert tokens.check("second-token-0123456789")
    for bad in ("", None, GOOD[:-1], GOOD + "x", GOOD.upper()):
        assert not tokens.check(bad)


def test_short_or_missing_tokens_refused(tmp_path):
    with pytest.raises(ValueError, match="at least"):
        TokenSet("short")
    with pytest.raises(ValueError, match="no token"):
        TokenSet("  ,  ")
    with pytest.raises(ValueError, match="cannot read"):
        TokenSet(file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no token"):
        TokenSet(file=empty)


def test_file_reload_keeps_tokens_when_file_vanishes(tmp_path, monkeypatch):
    monkeypatch.setattr("rnnserve.server.security.TOKEN_RELOAD_SECONDS", 0.0)
    path = tmp_path / "tokens"
    path.write_text(GOOD + "\n")
    tokens = TokenSet(file=path)
    path.unlink()  # mid-rotation: keep the last good set rather than locking everyone out
    assert tokens.check(GOOD)
    path.write_text("# all revoked\n")  # a readable file with no tokens locks everyone out
    assert not tokens.check(GOOD)


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNSERVE_AUTH_TOKEN", GOOD)
    monkeypatch.setenv("RNNSERVE_METRICS_AUTH_TOKEN_FILE", str(tmp_path / "m"))
    monkeypatch.setenv("RNNSERVE_TLS_CERT", "")  # empty means unset (compose's ${VAR:-})
    monkeypatch.setenv("RNNSERVE_GRPC_MAX_CONNECTION_AGE_S", "300")
    s = SecuritySettings()
    assert s.auth_enabled and s.metrics_auth_enabled and s.tls_cert is None
    assert s.auth_token.get_secret_value() == GOOD
    assert GOOD not in repr(s)  # secrets never show up in logs of the settings
    assert ("grpc.max_connection_age_ms", 300_000) in server_options(s)


def test_security_settings_accepts_composed_or_flat_settings():
    inner = SecuritySettings(auth_token=GOOD)
    assert security_settings(inner) is inner
    assert security_settings(types.SimpleNamespace(security=inner)) is inner
    flat = types.SimpleNamespace(auth_token=GOOD, port=8001)
    assert security_settings(flat).auth_enabled


def test_server_options_defaults():
    options = dict(server_options(SecuritySettings()))
    assert options["grpc.so_reuseport"] == 0
    assert "grpc.max_connection_age_ms" not in options
