"""Messages between front-end processes and the engine process (``--workers N``).

Transport: one connected stream socket per front-end, one end of a ``socket.socketpair()``
that the supervisor makes before it starts that front-end (nothing listens anywhere, so
only the server's own processes can talk on it). A frame is a 4-byte big-endian length and
a pickled tuple. Pickle is acceptable only because both ends are this server's own
processes on an inherited socket: never put a :class:`Channel` on an address.

Every message is a tuple whose first item names it:

- front-end -> engine: ``(kind, request_id, *arguments)``; ``request_id`` 0 asks for no
  answer (server/engine_host.py lists the kinds);
- engine -> front-end: ``("ok", request_id, payload)``, ``("err", request_id, status name,
  message)``, or an unsolicited notice ``(kind, *arguments)`` (server/remote.py handles
  ``catalog`` and ``serve``).

Invariants:
- Messages arrive in the order they were sent, each exactly once, or the channel closes.
- A :class:`Channel` coalesces writes: every message sent during one event-loop iteration
  leaves in one ``write``, and one read delivers every complete frame it holds in order.
- Predictions cross as plain tuples (:func:`pack_prediction`), errors as status name and
  message (:func:`error_from`), so the receiving side rebuilds the same ServingError.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable

import grpc
import numpy as np

from . import errors
from .prediction import Prediction

_LENGTH = struct.Struct(">I")
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def frame(message: tuple) -> bytes:
    body = pickle.dumps(message, protocol=_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class Channel(asyncio.Protocol):
    """One end of a front-end <-> engine socket on the running event loop."""

    def __init__(self, on_message: Callable[[tuple], None],
                 on_closed: Callable[[Exception | None], None]) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._buffer = bytearray()
        self._outbox: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, on_message, on_closed) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_unix_connection(lambda: cls(on_message, on_closed),
                                                       sock=sock)
        return channel

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._buffer:                    # the rest of a frame that began in a past read
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        view = memoryview(data)
        offset, size = 0, len(data)
        while size - offset >= 4:
            (length,) = _LENGTH.unpack_from(data, offset)
            end = offset + 4 + length
            if end > size:
                break
            message = pickle.loads(view[offset + 4:end])
            offset = end
            self._on_message(message)
        if offset < size:
            self._buffer += view[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_closed(exc)

    # -- sending ------------------------------------------------------------------------

    def send(self, message: tuple) -> None:
        """Queue ``message``; it leaves with the others of this loop iteration."""
        if self.closed:
            return
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(frame(message))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox and self._transport is not None and not self.closed:
            self._transport.write(b"".join(outbox))

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()


def send_blocking(sock: socket.socket, message: tuple) -> None:
    """Send one message on a blocking socket (before an event loop owns it)."""
    sock.sendall(frame(message))


def receive_blocking(sock: socket.socket) -> tuple:
    """Read one message from a blocking socket; EOFError if the peer closed it."""
    (length,) = _LENGTH.unpack(_read_exactly(sock, 4))
    return pickle.loads(_read_exactly(sock, length))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise EOFError("the peer closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# -- payloads ------------------------------------------------------------------------------


def pack_prediction(prediction: Prediction) -> tuple:
    return (prediction.label_index, prediction.tokens,
            prediction.probabilities.astype(np.float32, copy=False).tobytes(),
            prediction.logits.astype(np.float32, copy=False).tobytes(), prediction.state)


def unpack_prediction(packed: tuple, labels, version: str = "") -> Prediction:
    index, tokens, probabilities, logits, state = packed
    return Prediction(labels[index], np.frombuffer(probabilities, np.float32),
                      np.frombuffer(logits, np.float32), tokens, index, state, version)


_ERRORS = {cls.code.name: cls for cls in (
    errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
    errors.ResourceExhausted, errors.Unavailable, errors.Aborted, errors.Internal)}


def error_reply(request_id: int, exc: BaseException) -> tuple:
    """The ``err`` message for ``exc`` (anything but a ServingError becomes INTERNAL)."""
    if isinstance(exc, errors.ServingError):
        return ("err", request_id, exc.code.name, exc.message)
    if isinstance(exc, asyncio.CancelledError):
        return ("err", request_id, grpc.StatusCode.CANCELLED.name, "cancelled by the engine")
    return ("err", request_id, grpc.StatusCode.INTERNAL.name,
            f"{type(exc).__name__} in the engine process")


def error_from(code: str, message: str) -> errors.ServingError:
    """The ServingError an ``err`` message stands for."""
    cls = _ERRORS.get(code, errors.Internal)
    return cls(message)
