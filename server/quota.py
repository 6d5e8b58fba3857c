"""Per-client limit on open sequences, shared by every model version of one server.

A client is named by :func:`client_of`: a digest of its bearer token when tokens are
required (the interceptor has checked it by then; unchecked tokens would let a client pick
a fresh identity per call), else its peer address without the port (behind a proxy every
client looks like the proxy; use tokens there). The quota is server-wide, so opening
sequences on several models does not multiply a client's share.

Invariants (event loop only, no locks):
- ``count[c]`` equals the number of open sequences acquired for ``c`` and not yet released;
  ``SequenceStore`` acquires exactly once when it opens a sequence and releases exactly once
  when it closes it, so ending, expiry, eviction, failure and export all give the slot back.
- A refused acquire changes nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from .errors import ResourceExhausted
from .security import bearer_token

#: Client of calls that carry no identity (in-process use, tests of the engine alone).
ANONYMOUS = ""

#: Metadata key with the caller's address, set by the native front-end on every call it
#: hands over (server/native_frontend.py); trusted only when the server runs behind it.
FORWARDED_PEER = "rnnserve-peer"


class SequenceQuota:
    """Counts open sequences per client against ``limit`` (0 = unlimited)."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.count: Counter[str] = Counter()

    def acquire(self, client: str) -> None:
        if self.limit and client != ANONYMOUS and self.count[client] >= self.limit:
            raise ResourceExhausted(
                f"this client already holds {self.count[client]} open sequences (the "
                f"per-client limit is {self.limit}); end finished sequences first")
        self.count[client] += 1

    def release(self, client: str) -> None:
        remaining = self.count[client] - 1
        if remaining > 0:
            self.count[client] = remaining
        else:
            del self.count[client]


def caller(context, settings) -> str:
    """The identity :func:`client_of` gives the caller of ``context`` on a server with
    ``settings`` (tokens when authentication is on; forwarded addresses behind the native
    front-end)."""
    return client_of(context, by_token=settings.auth_enabled,
                     forwarded=settings.frontend == "native")


def client_of(context, *, by_token: bool, forwarded: bool = False) -> str:
    """Identity of the caller of a gRPC ``context``: its token's digest when ``by_token``
    (authentication is on), else its peer host; ``forwarded``: the peer is the one the
    native front-end put in the metadata (the context's own is the front-end's socket)."""
    metadata = tuple(context.invocation_metadata() or ()) if by_token or forwarded else ()
    if by_token:
        for key, value in metadata:
            token = bearer_token(value) if key == "authorization" else None
            if token:  # the parsed token: scheme case or spacing cannot make a new identity
                return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    peer = context.peer() or ""
    if forwarded:
        peer = dict(metadata).get(FORWARDED_PEER, peer)
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path" -> drop the port
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, _port = peer.rpartition(":")
        return host
    return peer
