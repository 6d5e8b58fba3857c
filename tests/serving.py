"""Start and stop a real rnnserve server for tests (any suite may use this).

Two flavours, same interface (``.address``, ``.port``, ``.channel()``, ``.stop()``, context
manager):

- ``start_server(repository, **settings)``: in this process, on one shared background
  event loop thread (grpc.aio wants a single loop per process). Fast; gives access to
  ``.server`` (the RnnServer), ``.registry`` and ``.call(coroutine)`` to run code on the
  server's loop (e.g. to inspect or patch an engine).
- ``start_server(repository, subprocess=True, **settings)``: ``python -m rnnserve.server`` in
  a child process in its own process group (real signals, real exit status). ``.stop()``
  sends SIGTERM and returns the exit status; ``.signal_group(signum)`` signals the whole
  group; ``.events()`` are the parsed JSON log lines.

``settings`` are ServerSettings fields (``max_batch_size=8``, ``auth_token="..."``); tests get
``host=127.0.0.1``, ``port=0`` (a free port) and ``metrics_port=-1`` (off) unless they say
otherwise. Both wait until the server reports ready (every model warm, health SERVING).

Example::

    from tests.serving import start_server

    def test_something(tiny_repository):
        with start_server(tiny_repository, max_queue_delay_us=0) as server:
            stub = sentiment_pb2_grpc.SentimentStub(server.channel())
            ...
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess as sp
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import grpc

TEST_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": -1}
#: Channel arguments for a client that opens its own connection (not one shared in-process).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` whose socket process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


class _LoopThread:
    """The one background event loop all in-process servers of this process run on."""

    _instance: _LoopThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rnnserve-test-loop",
                                       daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def call(self, coroutine, timeout: float | None = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


def _channel(address: str, options=None) -> grpc.Channel:
    return grpc.insecure_channel(address, options=options or [])


class InProcessServer:
    """A server running on the shared test loop."""

    def __init__(self, server, loop_thread: _LoopThread) -> None:
        self.server = server
        self._loop_thread = loop_thread
        self.port = server.port
        self.address = f"127.0.0.1:{server.port}"
        self.settings = server.settings
        self._stopped = False

    @property
    def registry(self):
        return self.server.registry

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.loop

    def call(self, coroutine, timeout: float | None = 60):
        """Run ``coroutine`` on the server's loop and return its result."""
        return self._loop_thread.call(coroutine, timeout)

    def wait_ready(self, timeout: float | None = 120) -> None:
        """Wait until every model is warm (raises what start-up raised, if it failed)."""
        async def ready():
            await self.server._test_start_task

        self.call(ready(), timeout)

    def run_sync(self, function, *args, timeout: float | None = 60):
        """Run plain ``function(*args)`` on the server's loop thread."""
        async def wrapper():
            return function(*args)
        return self.call(wrapper(), timeout)

    def channel(self, options=None) -> grpc.Channel:
        return _channel(self.address, options)

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown (as on SIGTERM); returns when it is complete."""
        if self._stopped:
            return
        self._stopped = True

        async def drain():
            self.server._test_start_task.cancel()     # no-op once started
            await self.server.shutdown(grace)

        self.call(drain(), timeout=grace + 30)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ProcessServer:
    """``python -m rnnserve.server`` in a child process."""

    def __init__(self, process: sp.Popen, lines: list[str], reader: threading.Thread) -> None:
        self.process = process
        self._lines = lines
        self._reader = reader
        self.port = 0
        self.address = ""

    def logs(self) -> str:
        return "\n".join(self._lines)

    def events(self) -> list[dict]:
        """The JSON log lines of the server so far."""
        parsed = []
        for line in list(self._lines):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def find_event(self, name: str) -> dict | None:
        return next((e for e in self.events() if e.get("event") == name), None)

    def channel(self, options=None) -> grpc.Channel:
        return _channel(self.address, options)

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal the server's whole process group (its own), as a terminal's Ctrl-C,
        ``kill -- -PGID`` or a supervisor that signals every process does."""
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float | None = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and return its exit status (kills it after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                return self.wait(timeout)
            except sp.TimeoutExpired:
                self.process.kill()
                self.wait(10)
                raise
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            try:
                self.stop(timeout=30)
            except sp.TimeoutExpired:
                pass


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def start_server(repository: Path | str, *, subprocess: bool = False,
                 ready_timeout: float = 120.0, wait_ready: bool = True,
                 env: dict[str, str] | None = None,
                 **settings: Any) -> InProcessServer | ProcessServer:
    """Start a server on ``repository`` and wait until it is ready (see module doc).

    ``wait_ready=False`` (in-process only) returns as soon as the port answers (health
    NOT_SERVING while models load); ``handle.wait_ready()`` waits for the rest.
    ``env`` adds environment variables for the subprocess flavour.
    """
    values = {**TEST_DEFAULTS, **settings, "repository": str(repository)}
    if subprocess:
        return _start_process(values, ready_timeout, env or {})
    return _start_in_process(values, ready_timeout, wait_ready)


def _start_in_process(values: dict[str, Any], ready_timeout: float,
                      wait_ready: bool) -> InProcessServer:
    from rnnserve.server.app import RnnServer
    from rnnserve.server.settings import ServerSettings

    loop_thread = _LoopThread.get()
    settings = ServerSettings(**values)

    async def create_and_start():
        server = RnnServer(settings)
        starting = asyncio.get_running_loop().create_task(server.start())
        server._test_start_task = starting
        waiter = asyncio.ensure_future(server.listening.wait())
        await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            waiter.cancel()
            if server.server is not None:
                await server.server.stop(0)
            await server.registry.close(timeout=0)
            raise starting.exception()
        return server

    server = loop_thread.call(create_and_start(), timeout=ready_timeout)
    handle = InProcessServer(server, loop_thread)
    if wait_ready:
        try:
            handle.wait_ready(ready_timeout)
        except BaseException:
            handle.stop(grace=0)
            raise
    return handle


def _start_process(values: dict[str, Any], ready_timeout: float,
                   env: dict[str, str]) -> ProcessServer:
    child_env = dict(os.environ)
    child_env.update({f"RNNSERVE_{key.upper()}": _env_value(value)
                      for key, value in values.items() if value is not None})
    child_env.update({"RNNSERVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    child_env.update(env)
    process = sp.Popen([sys.executable, "-m", "rnnserve.server"], stdout=sp.PIPE,
                       stderr=sp.STDOUT, text=True, env=child_env, process_group=0)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if '"event": "ready"' in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, name="rnnserve-test-server-log", daemon=True)
    reader.start()
    handle = ProcessServer(process, lines, reader)
    deadline = time.monotonic() + ready_timeout
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            process.kill()
            handle.wait(10)
            raise TimeoutError(f"server not ready after {ready_timeout} s:\n{handle.logs()}")
    event = handle.find_event("ready")
    if event is None:
        code = process.poll()
        if code is None:
            process.kill()
        handle.wait(10)
        raise RuntimeError(f"server exited before ready (status {process.returncode}):\n"
                           f"{handle.logs()}")
    handle.port = int(event["port"])
    handle.address = f"127.0.0.1:{handle.port}"
    return handle
