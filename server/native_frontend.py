"""The native front-end (``--frontend native``): a C++ gRPC server on the public port.

grpc.aio costs 115-124 µs of one core per call before any work is done; grpc's C++ server
26 µs (``python -m rnnserve.bench.grpc_floor``, docs/architecture.md §5). With ``--frontend native`` the server process starts the
C++ front-end (server/native_frontend.cc, compiled on first use against Debian's
``libgrpc++-dev``) and keeps every behaviour of its own:

- the unary and bidirectional methods of the text API and KServe v2 (``Classify``,
  ``StreamClassify``, ``ModelInfer``, ``ModelStreamInfer``, ...) reach this process as
  messages over one Unix socket (:class:`CallEndpoint`) and run the very servicer methods,
  parsers and serializers that grpc.aio runs (server/guarded.py), behind the same server
  interceptors (the bearer-token check), so answers, statuses, messages and trailing
  metadata are the same;
- every other method (health, reflection) is proxied by the front-end, unchanged, to this
  process's grpc.aio server, which then listens on a private Unix socket only.

The caller's address travels with each call (``rnnserve-peer``, see server/quota.py), so the
per-client quota counts real clients; so does its ``authorization`` header, the only other
metadata a handler on the calls route sees.

Invariants:
- The Unix sockets live in a fresh 0700 directory; nothing else can connect to them.
- Each call frame gets at most one reply frame; a cancel frame cancels the call's task and
  no reply is sent for it.
- A stream's messages are asked of the front-end one at a time (one ahead of the handler)
  and at most WRITE_WINDOW of its answers are unwritten, so a caller that sends faster than
  it reads is held back by HTTP/2 flow control, as with grpc.aio; its status (and trailing
  metadata) follows its last answer, and its done callbacks run once that is handed over or
  the caller cancelled.
- The front-end exits when this process's socket closes, so it never outlives the server;
  :class:`NativeFrontend` restarts it if it dies while serving. It stops taking calls only
  on this process's SIGTERM (sent once the streams have ended): a Ctrl-C or a signal to
  the whole process group is this process's to act on.
- With ``processes`` N (``--workers N``), N front-ends share the listening socket (the
  kernel hands each connection to one of them) and each has its own calls connection, so
  one that dies costs only the calls it carried.
- This process makes the public listening socket and keeps it open until shutdown; each
  front-end inherits it and accepts on it. While a front-end is restarted, new connections
  wait in the socket's backlog instead of being refused (and their clients' reconnect
  backoff never starts).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import inspect
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import grpc
from grpc import aio

from .logs import log_event
from .quota import FORWARDED_PEER

log = logging.getLogger("rnnserve.server.native")

SOURCE = Path(__file__).with_suffix(".cc")
#: Where compiled front-ends are kept (ServerSettings.native_cache, RNNSERVE_NATIVE_CACHE).
DEFAULT_CACHE = Path("~/.cache/rnnserve/native")
COMPILER_FLAGS = ("-O2", "-std=c++17")
BUILD_HELP = ("the native front-end is compiled on first use and needs g++, pkg-config and "
              "gRPC's C++ headers (Debian: apt install g++ pkg-config libgrpc++-dev)")

# Frame kinds from the front-end, and the codes this side uses for a stream's responses
# and reads (server/native_frontend.cc has the layout).
_CALL, _CANCEL, _OPEN, _MESSAGE, _HALF_CLOSE, _WROTE = 1, 2, 3, 4, 5, 6
_RESPONSE, _READ = 128, 129
_HEADER = struct.Struct("<IBQHHH")       # size, kind, id, method, peer size, auth size
_REPLY = struct.Struct("<IQBI")          # size, id, status code, message size
_TRAILER_KEY = struct.Struct("<H")
_TRAILER_VALUE = struct.Struct("<I")
#: Responses of one stream handed to the front-end and not yet written to the caller; the
#: handler waits beyond that (as grpc.aio's does while HTTP/2 flow control holds a write).
#: The front-end acknowledges writes only when this many are unacknowledged.
WRITE_WINDOW = 8



class BuildError(RuntimeError):
    """The front-end binary cannot be built here."""


def binary(cache: Path = DEFAULT_CACHE, source: Path = SOURCE) -> Path:
    """The compiled front-end (or another gRPC C++ ``source``, e.g. the bench's floor
    server), built once per source version into ``cache``; an image ships it there
    prebuilt (scripts/native-frontend.sh)."""
    cache = cache.expanduser()
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join(COMPILER_FLAGS).encode()).hexdigest()[:16]
    name = "rnnserve-frontend" if source == SOURCE else source.stem
    target = cache / f"{name}-{digest}"
    if target.exists():
        return target
    compiler = shutil.which("g++")
    pkg_config = shutil.which("pkg-config")
    if compiler is None or pkg_config is None:
        raise BuildError(f"g++ or pkg-config is missing: {BUILD_HELP}")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", "grpc++"], check=False,
                           capture_output=True, text=True)
    if flags.returncode != 0:
        raise BuildError(f"pkg-config knows no grpc++ ({flags.stderr.strip()}): {BUILD_HELP}")
    cache.mkdir(parents=True, exist_ok=True)
    log_event(log, "native_frontend_compiling", source=source.name, target=str(target))
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    built = subprocess.run([compiler, *COMPILER_FLAGS, str(source), "-o", str(partial),
                            *flags.stdout.split()], check=False, capture_output=True, text=True)
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"compiling {source.name} failed:\n{built.stderr[-2000:]}")
    partial.replace(target)               # atomic: concurrent builders agree
    return target


def choose_frontend(requested: str, workers: int,
                    cache: Path = DEFAULT_CACHE) -> tuple[str, str | None]:
    """What ``--frontend requested`` means with ``workers`` front-end processes: python or
    native, and why native is not used when ``auto`` wanted it (else None).

    ``auto`` is python for one worker (one process, no second hop for any call) and native
    for more, where the binary is cached or builds here: on the 2-core test
    machine two C++ front-ends and two ORT sessions answered 1.7-2.1x the single process,
    two Python front-end processes 1.0-1.4x (docs/benchmarks.md, "Server capacity")."""
    if requested != "auto":
        return requested, None
    if workers == 1:
        return "python", None
    try:
        binary(cache)
    except BuildError as exc:
        return "python", str(exc)
    return "native", None


def routed_handlers(generic_handlers: Iterable[grpc.GenericRpcHandler],
                    services) -> dict[str, grpc.RpcMethodHandler]:
    """Every unary and bidirectional method of ``services`` (ServiceDescriptors) that one of
    the registered ``generic_handlers`` serves: ``/package.Service/Method`` -> its handler.
    These take the calls route; the front-end proxies any other method."""
    table: dict[str, grpc.RpcMethodHandler] = {}
    for service in services:
        for method in service.methods:
            bidi = method.client_streaming and method.server_streaming
            if method.client_streaming != method.server_streaming:
                continue
            path = f"/{service.full_name}/{method.name}"
            details = _CallDetails(path)
            for generic in generic_handlers:
                found = generic.service(details)
                if found is not None and (found.stream_stream if bidi else found.unary_unary):
                    table[path] = found
                    break
    return table


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


class CallContext:
    """What the servicers' methods and the server interceptors use of a grpc.aio
    ServicerContext, for a call that arrived as frames: the caller's address, its metadata
    (address and ``authorization``), ``abort`` (with trailing metadata) and, for a stream,
    ``add_done_callback`` (called once its status is handed to the front-end, or it is
    cancelled)."""

    __slots__ = ("_done", "_metadata", "_peer", "code", "details", "trailing")

    def __init__(self, peer: str, metadata: tuple) -> None:
        self._peer = peer
        self._metadata = metadata
        self.code = grpc.StatusCode.UNKNOWN
        self.details = ""
        self.trailing: tuple = ()
        self._done: list | None = None

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.code, self.details, self.trailing = code, details, tuple(trailing_metadata or ())
        raise aio.AbortError()

    def add_done_callback(self, callback) -> None:
        if self._done is None:
            self._done = []
        self._done.append(callback)

    def finished(self) -> None:
        callbacks, self._done = self._done or (), None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:       # as grpc.aio: one callback cannot stop the rest
                log.exception("stream done callback failed")


class _Inbound:
    """A stream's request messages as its handler iterates them. Each is asked of the
    front-end when wanted, one ahead of the handler, so at most one is buffered here and the
    caller is otherwise held back by HTTP/2 flow control."""

    __slots__ = ("_ask", "_asked", "_closed", "_messages", "_waiter")

    def __init__(self, ask) -> None:
        self._ask = ask
        self._asked = False
        self._closed = False
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if not self._messages and not self._closed:
            self._want()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._messages:
            message = self._messages.popleft()
            self._want()
            return message
        raise StopAsyncIteration

    def _want(self) -> None:
        if not (self._asked or self._closed or self._messages):
            self._asked = True
            self._ask()

    def deliver(self, message: bytes | None) -> None:
        """The message the front-end read, or None once the caller half-closed."""
        self._asked = False
        if message is None:
            self._closed = True
        else:
            self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _StreamCall:
    """One stream's state on this side: its messages in, its responses not yet written."""

    __slots__ = ("inbound", "task", "unwritten", "written")

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound
        self.task: asyncio.Task | None = None
        self.unwritten = 0
        self.written: asyncio.Future | None = None

    def wrote(self, count: int) -> None:
        self.unwritten -= count
        if self.written is not None and not self.written.done():
            self.written.set_result(None)


class CallEndpoint(asyncio.Protocol):
    """This process's end of one front-end's calls socket (frames: server/native_frontend.cc)."""

    def __init__(self, handlers: list[tuple[str, grpc.RpcMethodHandler]],
                 interceptors: list[aio.ServerInterceptor]) -> None:
        self._handlers = handlers
        self._by_path = dict(handlers)
        self._intercepted = self._chain(interceptors) if interceptors else None
        self._buffer = bytearray()
        self._tasks: dict[int, asyncio.Task] = {}
        self._streams: dict[int, _StreamCall] = {}
        self._outbox: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport) -> None:
        self._transport = transport

    def connection_lost(self, exc) -> None:
        self._transport = None
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        for stream in self._streams.values():
            stream.task.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        header = _HEADER.size
        while size - offset >= header:
            length, kind, call, method, peer_size, auth_size = _HEADER.unpack_from(buffer,
                                                                                  offset)
            end = offset + 4 + length
            if end > size:
                break
            if kind == _CALL or kind == _OPEN:
                view = memoryview(buffer)
                start = offset + header
                peer = str(view[start:start + peer_size], "utf-8", "replace")
                start += peer_size
                metadata = ((FORWARDED_PEER, peer),)
                if auth_size:
                    metadata += (("authorization",
                                  str(view[start:start + auth_size], "latin-1")),)
                payload = bytes(view[start + auth_size:end])
                view.release()                   # the buffer is resized below
                if kind == _CALL:
                    self._tasks[call] = self._loop.create_task(
                        self._run(call, method, CallContext(peer, metadata), payload))
                else:
                    self._open(call, method, CallContext(peer, metadata))
            elif kind == _MESSAGE or kind == _HALF_CLOSE or kind == _WROTE:
                stream = self._streams.get(call)
                if stream is None:
                    pass                        # ended here already
                elif kind == _WROTE:
                    stream.wrote(method)
                else:
                    stream.inbound.deliver(bytes(buffer[offset + header:end])
                                           if kind == _MESSAGE else None)
            else:
                task = self._tasks.pop(call, None)
                if task is not None:
                    task.cancel()
                stream = self._streams.get(call)
                if stream is not None:
                    stream.task.cancel()
            offset = end
        del buffer[:offset]

    async def _run(self, call: int, method: int, context: CallContext, payload: bytes) -> None:
        path, handler = self._handlers[method]
        try:
            if self._intercepted is not None:
                handler = await self._intercepted(_CallDetails(path,
                                                               context.invocation_metadata()))
            if handler.unary_unary is None:      # a refusal (security.py's stream handler)
                outcome = (handler.stream_stream or handler.unary_stream)(payload, context)
                if inspect.isawaitable(outcome):
                    await outcome
                raise RuntimeError(f"{path}: an interceptor's handler answered nothing")
            response = await handler.unary_unary(payload, context)
            serialize = handler.response_serializer
            self._reply(call, 0, "", serialize(response) if serialize else response)
        except aio.AbortError:
            self._reply(call, context.code.value[0], context.details, b"")
        except asyncio.CancelledError:
            return                          # cancelled by the caller: the front-end answered
        except Exception as exc:       # the same answer grpc.aio gives
            log.exception("unary call failed")
            self._reply(call, grpc.StatusCode.UNKNOWN.value[0],
                        f"Unexpected {type(exc)}: {exc}", b"")
        finally:
            self._tasks.pop(call, None)

    def _open(self, call: int, method: int, context: CallContext) -> None:
        stream = _StreamCall(_Inbound(functools.partial(self._reply, call, _READ, "", b"")))
        self._streams[call] = stream
        stream.task = self._loop.create_task(self._stream(call, method, context, stream))

    async def _stream(self, call: int, method: int, context: CallContext,
                      stream: _StreamCall) -> None:
        """One bidirectional call, as grpc.aio runs it: the handler's responses in order,
        then its status (and trailing metadata, from ``abort``)."""
        path, handler = self._handlers[method]
        responses = None
        try:
            if self._intercepted is not None:
                handler = await self._intercepted(_CallDetails(path,
                                                               context.invocation_metadata()))
            responses = handler.stream_stream(stream.inbound, context)
            if inspect.isasyncgen(responses):
                serialize = handler.response_serializer
                async for response in responses:
                    await self._respond(call, stream,
                                        serialize(response) if serialize else response)
            elif inspect.isawaitable(responses):
                await responses                 # a refusal (security.py) or writes nothing
            self._end(call, grpc.StatusCode.OK, "", context.trailing)
        except aio.AbortError:
            self._end(call, context.code, context.details, context.trailing)
        except asyncio.CancelledError:
            pass                                # cancelled by the caller: the front-end ended it
        except Exception as exc:       # the same answer grpc.aio gives
            log.exception("stream call failed")
            self._end(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}", ())
        finally:
            if inspect.isasyncgen(responses):
                await responses.aclose()        # its own clean-up (a sequence's end) runs now
            self._streams.pop(call, None)
            context.finished()

    async def _respond(self, call: int, stream: _StreamCall, body: bytes) -> None:
        while stream.unwritten >= WRITE_WINDOW:
            stream.written = self._loop.create_future()
            await stream.written
        stream.unwritten += 1
        self._reply(call, _RESPONSE, "", body)

    def _end(self, call: int, code: grpc.StatusCode, message: str, trailing) -> None:
        body = bytearray()
        for key, value in trailing:
            name = key.encode("ascii")
            data = value if isinstance(value, bytes) else value.encode("utf-8")
            body += _TRAILER_KEY.pack(len(name)) + name + _TRAILER_VALUE.pack(len(data)) + data
        self._reply(call, code.value[0], message, bytes(body))

    def _chain(self, interceptors: list[aio.ServerInterceptor]):
        """``details -> handler`` through the server's interceptors, as grpc.aio applies
        them, ending at this endpoint's own handler for ``details.method``."""
        async def found(details):
            return self._by_path[details.method]

        continuation = found
        for interceptor in reversed(interceptors):
            continuation = functools.partial(interceptor.intercept_service, continuation)
        return continuation

    def _reply(self, call: int, code: int, message: str, body: bytes) -> None:
        text = message.encode("utf-8")
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(_REPLY.pack(13 + len(text) + len(body), call, code, len(text)))
        self._outbox.append(text + body if text else body)

    def _flush(self) -> None:
        if self._transport is not None and self._outbox:
            self._transport.write(b"".join(self._outbox))
        self._outbox.clear()


def listening_socket(address: str) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``[v6 address]:port`` too; port 0 = any);
    ``::`` takes IPv4 as well, as grpc does."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family, _, _, _, where = socket.getaddrinfo(host or None, int(port),
                                                    type=socket.SOCK_STREAM,
                                                    flags=socket.AI_PASSIVE)[0]
        return socket.create_server(where, family=family, backlog=socket.SOMAXCONN,
                                    dualstack_ipv6=family == socket.AF_INET6
                                    and host in ("", "::"))
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot bind gRPC port {address}: {exc}") from exc


class NativeFrontend:
    """Starts, watches and stops the C++ front-end of one server process."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], *, listen: str,
                 options: list[tuple[str, int]], grace: float,
                 interceptors: list[aio.ServerInterceptor] = (),
                 tls: dict[str, Path | None] | None = None,
                 cache: Path = DEFAULT_CACHE, processes: int = 1) -> None:
        """``tls``: ``{"cert": ..., "key": ..., "client_ca": ...}`` (paths, client_ca
        optional) for TLS or mutual TLS on the public port; None = plaintext.
        ``processes``: front-end processes accepting on the one port."""
        self._handlers = list(handlers.items())     # index = the method number in frames
        self._interceptors = list(interceptors)
        self._listen = listen
        self._options = options
        self._grace = grace
        self._tls = {name: path for name, path in (tls or {}).items() if path is not None}
        self._cache = cache
        self.directory = Path(tempfile.mkdtemp(prefix="rnnserve-native-"))   # 0700
        self.backend = self.directory / "grpc.sock"
        self._calls = self.directory / "calls.sock"
        self._binary: Path | None = None
        self._unix_server: asyncio.AbstractServer | None = None
        self._socket: socket.socket | None = None
        self._processes: list[subprocess.Popen | None] = [None] * max(1, processes)
        self._watches: list[asyncio.Task] = []
        self._stopping = False
        self.port = 0
        self.restarts = 0

    async def start(self) -> int:
        """Build (first use), listen for the front-end's calls socket, start the front-end;
        returns the public port it bound."""
        loop = asyncio.get_running_loop()
        self._binary = await loop.run_in_executor(None, binary, self._cache)
        self._unix_server = await loop.create_unix_server(
            lambda: CallEndpoint(self._handlers, self._interceptors), path=str(self._calls))
        self._socket = listening_socket(self._listen)
        self.port = self._socket.getsockname()[1]
        for index in range(len(self._processes)):
            await self._spawn(index)
        self._watches = [loop.create_task(self._supervise(index))
                         for index in range(len(self._processes))]
        return self.port

    async def _spawn(self, index: int) -> None:
        listen_fd = self._socket.fileno()
        command = [str(self._binary), "--listen-fd", str(listen_fd), "--backend", str(self.backend),
                   "--calls", str(self._calls), "--grace", str(self._grace),
                   "--stream-window", str(WRITE_WINDOW)]
        for path, handler in self._handlers:
            command += ["--stream" if handler.stream_stream else "--unary", path]
        for key, value in self._options:
            command += ["--arg", f"{key}={value}"]
        for name, path in self._tls.items():
            command += [f"--tls-{name.replace('_', '-')}", str(path)]
        # subprocess.Popen (vfork) rather than the loop's fork: grpc's threads are running.
        loop = asyncio.get_running_loop()
        process = subprocess.Popen(command, stdout=subprocess.PIPE,  # noqa: ASYNC220 - vfork
                                   pass_fds=(listen_fd,))
        line = await loop.run_in_executor(None, process.stdout.readline)
        process.stdout.close()
        if not line.startswith(b"listening "):
            await loop.run_in_executor(None, process.wait)
            raise OSError(f"the native front-end did not start on port {self.port} (exit "
                          f"status {process.returncode})")
        self._processes[index] = process
        log_event(log, "native_frontend_started", pid=process.pid, port=self.port, index=index)

    async def _supervise(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            status = await loop.run_in_executor(None, self._processes[index].wait)
            if self._stopping:
                return
            self.restarts += 1
            log_event(log, "native_frontend_exited", level=logging.WARNING, status=status,
                      pid=self._processes[index].pid, index=index, restarts=self.restarts)
            try:
                await self._spawn(index)
            except OSError as exc:
                log_event(log, "native_frontend_restart_failed", level=logging.ERROR,
                          error=str(exc))
                await asyncio.sleep(0.1)

    def begin_shutdown(self) -> None:
        """Stop accepting calls; those in flight finish within the grace period."""
        self._stopping = True
        self._close_socket()
        for process in self._running():
            process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop at once: every call in flight on the front-end fails (UNAVAILABLE)."""
        self._stopping = True
        self._close_socket()
        for process in self._running():
            process.kill()

    def _running(self) -> list[subprocess.Popen]:
        return [process for process in self._processes
                if process is not None and process.poll() is None]

    async def wait_stopped(self, timeout: float) -> None:
        """Wait for the front-ends' exit (killed after ``timeout``), then clean up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + 2
        for process in self._processes:
            if process is None:
                continue
            try:    # a front-end gives up on its calls at the same deadline by itself
                await asyncio.wait_for(loop.run_in_executor(None, process.wait),
                                       max(0.0, deadline - loop.time()))
            except TimeoutError:
                process.kill()
                await loop.run_in_executor(None, process.wait)
        for watch in self._watches:
            watch.cancel()
        if self._unix_server is not None:
            self._unix_server.close()
        self._close_socket()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _close_socket(self) -> None:
        """This process's copy of the listening socket; the port closes once the front-end
        has closed its own (it stops accepting on SIGTERM)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
