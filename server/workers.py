"""``rnnserve serve --workers N``: this process is the engine and the supervisor.

It owns everything that must exist once: the ``ModelRegistry`` (batching, sequence state,
per-client quotas, ONNX Runtime), the Prometheus endpoint (totals of every process, read
from prometheus_client's multiprocess files in a private directory) and the gRPC port,
which it checks and holds. N front-end processes (server/worker.py) share that port with
SO_REUSEPORT and hand every request to the engine over one socketpair each
(server/ipc.py, server/engine_host.py). Clients, Prometheus and perf_analyzer see one server.

Life cycle:
- Start: front-ends start at once and answer health NOT_SERVING while the engine loads and
  warms every model; when the engine is warm and every front-end listens, all of them are
  told ``serve`` together (health SERVING) and ``ready`` is logged.
- A front-end that exits on its own (a crash, SIGKILL) is restarted at once; requests on the
  others go on. Its streams' sequences end; KServe sequences stay open for any front-end.
  More than ``RESTART_LIMIT`` restarts within ``RESTART_WINDOW`` seconds stop the server
  (exit 1) instead of looping.
- Live repository: every change of the registry (a version loading, ready, refused or
  unloaded) sends the new catalog to every front-end at once (a registry listener), before
  the answer to the RepositoryModelLoad/Unload that caused it; ``poll`` rescans here.
- SIGTERM/SIGINT: every front-end drains as a single server does (its streams still get
  their state trailer, since the engine keeps answering); once all have exited (SIGKILL for
  any still running after the grace period), the engine finishes admitted work, stops and
  the process exits 0. A second signal kills the front-ends and exits at once.
- Front-ends stay in this process's group (a benchmark or ``kill -- -PGID`` reaches them
  all), ignore SIGINT (a terminal's Ctrl-C is this process's to handle), take SIGTERM once
  (a repeat changes nothing; this process SIGKILLs what outlives the grace period) and exit
  by themselves if this process disappears (their socket closes): no orphans.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from rnnserve.repository import RepositoryError

from .engine_host import FrontendLink
from .logs import log_event
from .settings import ServerSettings
from .telemetry import ServerTelemetry, mark_process_dead, prepare_multiprocess_dir

log = logging.getLogger("rnnserve.server.workers")

RESTART_LIMIT = 10
RESTART_WINDOW = 60.0
#: Seconds a front-end gets beyond the grace period to exit after SIGTERM.
EXIT_MARGIN = 5.0


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Check that nothing serves ``host:port`` and hold it (bound, not listening, with
    SO_REUSEPORT so the front-ends can join); port 0 picks a free one. OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = host.strip("[]")
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))      # no SO_REUSEPORT: fails if anybody holds the port
        port = probe.getsockname()[1]
    except OSError as exc:
        raise OSError(f"cannot bind gRPC port {host}:{port}: {exc.strerror}") from exc
    finally:
        probe.close()
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((address, port))
    return holder, port


class _Frontend:
    __slots__ = ("index", "link", "listening", "process")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.link: FrontendLink | None = None
        self.listening = False


class Supervisor:
    """The engine process's bookkeeping of its front-end processes."""

    def __init__(self, settings: ServerSettings, registry, count: int,
                 multiprocess_dir: str) -> None:
        self.settings = settings            # the front-ends' settings (concrete port)
        self.registry = registry
        self.count = count
        self.multiprocess_dir = multiprocess_dir
        self.frontends = [_Frontend(i) for i in range(count)]
        self.engine_ready = False
        self.serving = asyncio.Event()
        self.stopping = False
        self.failed = asyncio.Event()
        self._restarts: list[float] = []
        self._watchers: set[asyncio.Task] = set()
        registry.add_listener(self._push_catalog)

    def _push_catalog(self) -> None:
        message = self.registry.catalog_message()
        for frontend in self.frontends:
            if frontend.link is not None:
                frontend.link.send(message)

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(frontend) for frontend in self.frontends))

    async def _spawn(self, frontend: _Frontend) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.multiprocess_dir)
        frontend.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rnnserve.server.worker", str(child.fileno()),
            pass_fds=(child.fileno(),), env=env)
        child.close()
        frontend.listening = False
        frontend.link = FrontendLink(self.registry, frontend.index, self._listening,
                                     lambda link: None)
        await frontend.link.open(parent)
        frontend.link.send(("start", self.settings, frontend.index, self.multiprocess_dir))
        frontend.link.send(self.registry.catalog_message())
        watcher = asyncio.get_running_loop().create_task(self._watch(frontend,
                                                                     frontend.process))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def engine_warm(self) -> None:
        """Every model is loaded and warm: send the final catalog, serve when all listen."""
        self.engine_ready = True
        self._push_catalog()
        self._maybe_serve()

    def _listening(self, link: FrontendLink) -> None:
        frontend = self.frontends[link.index]
        frontend.listening = True
        if self.serving.is_set():
            link.send(("serve",))         # a restarted front-end joins at once
        else:
            self._maybe_serve()

    def _maybe_serve(self) -> None:
        if self.serving.is_set() or not self.engine_ready:
            return
        if all(frontend.listening for frontend in self.frontends):
            for frontend in self.frontends:
                frontend.link.send(("serve",))
            self.serving.set()

    async def _watch(self, frontend: _Frontend, process) -> None:
        code = await process.wait()
        mark_process_dead(process.pid, self.multiprocess_dir)
        if self.stopping or frontend.process is not process:
            return
        log_event(log, "worker_exited", level=logging.ERROR, worker=frontend.index,
                  pid=process.pid, status=code)
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
        if len(self._restarts) > RESTART_LIMIT:
            log_event(log, "worker_restart_limit", level=logging.ERROR,
                      restarts=len(self._restarts), window_seconds=RESTART_WINDOW)
            self.failed.set()
            return
        await self._spawn(frontend)
        log_event(log, "worker_restarted", worker=frontend.index, pid=frontend.process.pid)

    def pids(self) -> list[int]:
        return [f.process.pid for f in self.frontends if f.process is not None]

    async def stop(self, grace: float) -> None:
        """SIGTERM every front-end and wait for them (SIGKILL after ``grace`` + margin)."""
        self.stopping = True
        processes = [f.process for f in self.frontends if f.process is not None]
        for process in processes:
            _signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)),
                                   grace + EXIT_MARGIN)
        except TimeoutError:
            log_event(log, "worker_kill", level=logging.WARNING,
                      pids=[p.pid for p in processes if p.returncode is None])
            self.kill()
            await asyncio.gather(*(p.wait() for p in processes))
        for process in processes:
            mark_process_dead(process.pid, self.multiprocess_dir)

    def kill(self) -> None:
        self.stopping = True
        for frontend in self.frontends:
            if frontend.process is not None:
                _signal(frontend.process, signal.SIGKILL)


def _signal(process, signum: int) -> None:
    if process.returncode is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


async def run_workers(settings: ServerSettings, count: int) -> int:
    """Serve with ``count`` front-end processes until SIGTERM/SIGINT; the exit status."""
    from .registry import ModelRegistry
    from .runtime import RuntimeUnavailable, select_provider

    started = time.perf_counter()
    multiprocess_dir = tempfile.mkdtemp(prefix="rnnserve-metrics-")
    prepare_multiprocess_dir(multiprocess_dir)
    telemetry = ServerTelemetry(enabled=settings.metrics_enabled and settings.metrics_port >= 0,
                                multiprocess_dir=multiprocess_dir)
    holder = metrics = None
    supervisor = None
    try:
        try:
            select_provider(settings.device, settings.cuda_device_id)
            registry = ModelRegistry(settings, telemetry)
            holder, port = reserve_port(settings.host, settings.port)
        except (RepositoryError, ValueError) as exc:
            log_event(log, "startup_failed", level=logging.ERROR, error=str(exc))
            return 2
        except (RuntimeUnavailable, OSError) as exc:
            log_event(log, "startup_failed", level=logging.ERROR, error=str(exc))
            return 1
        metrics = _start_metrics(settings, telemetry)
        frontend_settings = settings.model_copy(update={"port": port, "metrics_port": -1,
                                                        "workers": 1})
        supervisor = Supervisor(frontend_settings, registry, count, multiprocess_dir)
        return await _serve(settings, registry, supervisor, port, metrics, started)
    finally:
        if supervisor is not None:
            supervisor.kill()
        if metrics is not None:
            metrics.stop()
        if holder is not None:
            holder.close()
        shutil.rmtree(multiprocess_dir, ignore_errors=True)


async def _serve(settings, registry, supervisor: Supervisor, port: int, metrics,
                 started: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log_event(log, "signal", signal=signal.Signals(signum).name)
        if signals == 1:
            stop.set()
        else:
            supervisor.kill()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log_event(log, "listening", host=settings.host, port=port, workers=supervisor.count)
    await supervisor.start()
    loading = loop.create_task(registry.load_all())
    waiting = {loading, loop.create_task(stop.wait()), loop.create_task(supervisor.failed.wait())}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if loading in done and loading.exception() is not None:
        log_event(log, "startup_failed", level=logging.ERROR, error=f"{loading.exception()}")
        await supervisor.stop(0)
        await registry.close(timeout=0)
        return 1
    if loading in done:
        supervisor.engine_warm()
        serving = loop.create_task(supervisor.serving.wait())
        done, _ = await asyncio.wait({serving, loop.create_task(stop.wait()),
                                      loop.create_task(supervisor.failed.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if serving in done:
            log_event(log, "ready", port=port, workers=supervisor.count,
                      worker_pids=supervisor.pids(),
                      metrics_port=None if metrics is None else metrics.port,
                      models=[engine.key for engine in registry.engines()],
                      seconds=round(time.perf_counter() - started, 3))
            if settings.model_control == "poll":
                registry.start_polling()
            await asyncio.wait({loop.create_task(stop.wait()),
                                loop.create_task(supervisor.failed.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
    failed = supervisor.failed.is_set()
    drain_started = time.perf_counter()
    log_event(log, "draining", grace_seconds=settings.grace_seconds, workers=supervisor.count)
    await supervisor.stop(settings.grace_seconds)
    if not loading.done():
        loading.cancel()
    remaining = max(0.0, settings.grace_seconds - (time.perf_counter() - drain_started))
    await registry.close(timeout=remaining)
    log_event(log, "stopped", seconds=round(time.perf_counter() - drain_started, 3))
    return 1 if failed else 0


def _start_metrics(settings: ServerSettings, telemetry):
    if settings.metrics_port < 0 or not settings.metrics_enabled:
        return None
    from . import security
    from .metrics_http import start_metrics_server

    metrics = start_metrics_server(telemetry, host=settings.metrics_host,
                                   port=settings.metrics_port,
                                   authorize=security.metrics_authorizer(settings),
                                   ssl_context=security.metrics_ssl_context(settings))
    log_event(log, "metrics_listening", host=settings.metrics_host, port=metrics.port,
              scheme=metrics.scheme)
    return metrics
