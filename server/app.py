"""The server process: grpc.aio server with every servicer, health, reflection, metrics,
model loading and graceful shutdown.

Start-up: bind the port and answer health NOT_SERVING at once, load and warm every model
(each model's health service turns SERVING when it is warm), then the overall health ("")
and the API services turn SERVING and a ``ready`` event is logged.

Live repository (``--model-control poll|explicit``): after start-up the health names follow
the registry: each served version's ``model/<name>/<version>`` is SERVING once it is warm
and NOT_SERVING while loading or once unloaded; ``model/<name>`` follows its latest served
version. ``poll`` starts the registry's rescan loop once the server is ready.

Shutdown (SIGTERM/SIGINT, or :meth:`RnnServer.shutdown`): every health service turns
NOT_SERVING; after ``drain_delay_seconds`` open streams stop reading, flush the answers to
chunks already read and end with UNAVAILABLE (a text-API stream's trailing metadata carries
its sequence snapshot to resume elsewhere; a stream opened meanwhile is turned away with the
state it brought); once every stream has ended (and STREAM_END_LINGER_SECONDS more) the
server stops accepting RPCs; every accepted request and chunk finishes; then the workers
stop. Whatever is still running when ``grace_seconds`` have passed is cancelled. A second
signal cancels at once.

Optional pieces plug in here, one line each: ``kserve.register(server, registry, settings, drain)``,
``security.server_interceptors / server_credentials / server_options(settings)``,
``metrics_http.start_metrics_server(telemetry, ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from rnnserve.repository import RepositoryError

from . import kserve, security
from .cpus import resolve_workers
from .guarded import generic_handler
from .logs import configure_logging, log_event
from .native_frontend import choose_frontend
from .settings import ServerSettings
from .streaming import Drain
from .telemetry import ServerTelemetry
from .text_api import SERVICE as TEXT_SERVICE
from .text_api import SERVICE_DESCRIPTOR as TEXT_DESCRIPTOR
from .text_api import SentimentServicer, add_to_server

log = logging.getLogger("rnnserve.server.app")

KSERVE_SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Between the last drained stream's end and the port closing: time for its status to be
#: written (and passed on by the native front-end) and for its client to read it and stop
#: writing, so that no connection is closed with the client's bytes still arriving.
STREAM_END_LINGER_SECONDS = 0.25


def model_health_names(name: str, version: str) -> tuple[str, str]:
    """Health service names of one model version: ``model/<name>``, ``model/<name>/<ver>``."""
    return f"model/{name}", f"model/{name}/{version}"


class RnnServer:
    """One serving instance on the current event loop."""

    def __init__(self, settings: ServerSettings, *, registry=None, telemetry=None,
                 share_port: bool = False) -> None:
        """``registry``/``telemetry``: a front-end process's (server/worker.py) instead of
        this process's own; ``share_port``: bind with SO_REUSEPORT beside the other
        front-ends of ``--workers N``."""
        self.settings = settings
        self.telemetry = telemetry if telemetry is not None else ServerTelemetry(
            enabled=settings.metrics_enabled and settings.metrics_port >= 0)
        self.own_engines = registry is None      # else a front-end of --workers N
        if registry is None:    # imported here: front-end processes never load ORT
            from .registry import ModelRegistry

            registry = ModelRegistry(settings, self.telemetry)   # validates the repository
        self.registry = registry
        self.share_port = share_port
        self.server: aio.Server | None = None
        self.health = HealthServicer()
        self.drain = Drain()                 # open streams of both APIs
        self.text = SentimentServicer(self.registry, settings, self.drain)
        self.kserve = None
        self.native = None                   # the C++ front-end (--frontend native)
        self.port = 0
        self.metrics = None
        self.metrics_port: int | None = None
        self.listening = asyncio.Event()     # port bound, health answering
        self.ready = asyncio.Event()         # every model warm, health SERVING
        self.stopped = asyncio.Event()
        self._shutdown: asyncio.Task | None = None
        self._health_names: set[str] = set()
        self.registry.add_listener(self._models_changed)

    @property
    def address(self) -> str:
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host in ("::", "[::]")
                                                              else host)
        return f"{host}:{self.port}"

    def _service_names(self) -> list[str]:
        names = ["", TEXT_SERVICE, KSERVE_SERVICE]
        for engine in self.registry.engines():
            names.extend(model_health_names(engine.name, engine.version))
        return names

    async def start(self) -> None:
        """Bind and start answering (NOT_SERVING), then load every model."""
        settings = self.settings
        started = time.perf_counter()
        if self.own_engines:
            from .runtime import select_provider

            select_provider(settings.device, settings.cuda_device_id)   # --device cuda fails here
        receive = settings.max_message_bytes
        public = [("grpc.max_receive_message_length", receive),
                  ("grpc.max_send_message_length", max(4 * receive, 16 * 1024 * 1024)),
                  *security.server_options(settings)]
        native = settings.frontend == "native" and not self.share_port
        if native:       # the front-end enforces the public limits; this socket is private
            options = [("grpc.max_receive_message_length", -1),
                       ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        elif self.share_port:
            options = [(key, 1 if key == "grpc.so_reuseport" else value)
                       for key, value in public]
        else:
            options = public
        interceptors = security.server_interceptors(settings)
        self.server = aio.server(options=options, interceptors=interceptors)
        api = _Registrar(self.server)
        add_to_server(self.text, api)
        self.kserve = kserve.register(api, self.registry, settings, self.drain)
        self.server.add_generic_rpc_handlers((generic_handler(
            health_pb2.DESCRIPTOR.services_by_name["Health"], self.health,
            parser_for=lambda method: getattr(health_pb2, method.input_type.name).FromString,
            serializer_for=lambda method: getattr(
                health_pb2, method.output_type.name).SerializeToString),))
        reflection.enable_server_reflection(
            [TEXT_SERVICE, KSERVE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"]
             .full_name, reflection.SERVICE_NAME], self.server)
        for name in self._service_names():
            await self.health.set(name, NOT_SERVING)

        address = f"{settings.host}:{settings.port}"
        credentials = security.server_credentials(settings)
        if native:
            from .native_frontend import NativeFrontend, routed_handlers

            self.native = NativeFrontend(
                routed_handlers(api.handlers, (TEXT_DESCRIPTOR, kserve.SERVICE_DESCRIPTOR)),
                listen=address, options=public, grace=settings.grace_seconds,
                interceptors=interceptors,
                tls=None if credentials is None else {"cert": settings.tls_cert,
                                                      "key": settings.tls_key,
                                                      "client_ca": settings.tls_client_ca},
                cache=settings.native_cache, processes=resolve_workers(settings.workers))
            self.server.add_insecure_port(f"unix:{self.native.backend}")
            await self.server.start()
            self.port = await self.native.start()
        else:
            try:
                if credentials is None:
                    self.port = self.server.add_insecure_port(address)
                else:
                    self.port = self.server.add_secure_port(address, credentials)
            except RuntimeError as exc:            # grpc reports a failed bind this way
                raise OSError(f"cannot bind gRPC port {address}: {exc}") from exc
            if self.port == 0:
                raise OSError(f"cannot bind gRPC port {address}")
            await self.server.start()
        log_event(log, "listening", host=settings.host, port=self.port,
                  tls=credentials is not None, frontend="native" if native else "python")
        self.listening.set()
        self._start_metrics()

        async def model_ready(engine) -> None:
            for name in model_health_names(engine.name, engine.version):
                await self.health.set(name, SERVING)

        await self.registry.load_all(model_ready)
        for name in ("", TEXT_SERVICE, KSERVE_SERVICE):
            await self.health.set(name, SERVING)
        self.ready.set()
        await self._follow_models()
        if self.own_engines and settings.model_control == "poll":
            self.registry.start_polling()
        log_event(log, "ready" if self.own_engines else "worker_ready", port=self.port,
                  metrics_port=self.metrics_port,
                  models=[engine.key for engine in self.registry.engines()],
                  seconds=round(time.perf_counter() - started, 3))

    def _models_changed(self) -> None:
        """Registry listener: bring the per-model health names in line (once ready)."""
        if self.ready.is_set() and self._shutdown is None:
            asyncio.get_running_loop().create_task(self._follow_models())

    async def _follow_models(self) -> None:
        registry = self.registry
        wanted: dict[str, int] = {}
        for name, version, state, _reason in registry.status():
            model, versioned = model_health_names(name, version)
            wanted[versioned] = SERVING if state == "READY" else NOT_SERVING
            wanted.setdefault(model, NOT_SERVING)
        for name in registry.names():
            engine = registry.served(name, registry.latest(name))
            wanted[f"model/{name}"] = SERVING if engine is not None and engine.ready \
                else NOT_SERVING
        for name in self._health_names - set(wanted):
            wanted[name] = NOT_SERVING
        self._health_names |= set(wanted)
        for name, status in wanted.items():
            await self.health.set(name, status)

    def _start_metrics(self) -> None:
        settings = self.settings
        if settings.metrics_port < 0 or not settings.metrics_enabled:
            return
        from .metrics_http import start_metrics_server

        self.metrics = start_metrics_server(self.telemetry, host=settings.metrics_host,
                                            port=settings.metrics_port,
                                            authorize=security.metrics_authorizer(settings),
                                            ssl_context=security.metrics_ssl_context(settings))
        self.metrics_port = self.metrics.port
        log_event(log, "metrics_listening", host=settings.metrics_host, port=self.metrics_port,
                  scheme=self.metrics.scheme)

    def shutdown(self, grace: float | None = None) -> asyncio.Task:
        """Begin the graceful shutdown (idempotent); await the task to wait for it."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._drain(grace))
        return self._shutdown

    async def _drain(self, grace: float | None) -> None:
        settings = self.settings
        grace = settings.grace_seconds if grace is None else grace
        started = time.perf_counter()

        def left() -> float:
            return max(0.0, grace - (time.perf_counter() - started))

        log_event(log, "draining", grace_seconds=grace,
                  drain_delay_seconds=settings.drain_delay_seconds)
        await self.health.enter_graceful_shutdown()
        if settings.drain_delay_seconds > 0:
            await asyncio.sleep(settings.drain_delay_seconds)
        # Streams end while the port still takes calls (a stream opened meanwhile is turned
        # away with the state it brought), and only then does it stop taking them: once it
        # has stopped, grpc closes each connection as soon as its last call has ended, and
        # a client still writing to a stream whose end it has not read yet would get a
        # reset that loses that end (the UNAVAILABLE and its snapshot) with its connection.
        self.drain.begin()
        await self.drain.streams_ended(left())
        await asyncio.sleep(min(STREAM_END_LINGER_SECONDS, left()))
        if self.native is not None:
            # The front-end stops taking calls and finishes those in flight; the private
            # server stays up until it has passed every answer on.
            self.native.begin_shutdown()
            await self.native.wait_stopped(left())
        if self.server is not None:
            await self.server.stop(left())
        await self.registry.close(timeout=left())
        if self.metrics is not None:
            self.metrics.stop()
        log_event(log, "stopped", seconds=round(time.perf_counter() - started, 3))
        self.stopped.set()

    async def abort(self) -> None:
        """Stop now: cancel every call (second signal)."""
        log_event(log, "abort", level=logging.WARNING)
        if self.native is not None:
            self.native.kill()
        if self.server is not None:
            await self.server.stop(0)


class _Registrar:
    """Passes servicers' handlers on to the grpc.aio server and keeps them, so that the
    native front-end's calls reach the very same handlers (server/native_frontend.py)."""

    def __init__(self, server: aio.Server) -> None:
        self.server = server
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.handlers.extend(handlers)
        self.server.add_generic_rpc_handlers(handlers)


async def run(settings: ServerSettings, make_server=RnnServer) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    loop = asyncio.get_running_loop()
    try:
        server = make_server(settings)
    except (RepositoryError, ValueError) as exc:
        log_event(log, "startup_failed", level=logging.ERROR, error=str(exc))
        return 2
    signals = 0
    starting = loop.create_task(server.start())

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log_event(log, "signal", signal=signal.Signals(signum).name)
        if signals == 1:
            starting.cancel()          # no-op once started
            server.shutdown()
        else:
            loop.create_task(server.abort())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await starting
    except asyncio.CancelledError:
        pass                           # a signal during start-up: drain what is up
    except (RepositoryError, RuntimeError, OSError, ValueError) as exc:   # RuntimeUnavailable
        log_event(log, "startup_failed", level=logging.ERROR, error=f"{exc}")
        if server.native is not None:          # its sockets' directory, and the process
            server.native.kill()
            await server.native.wait_stopped(0)
        if server.server is not None:
            await server.server.stop(0)
        await server.registry.close(timeout=0)
        return 1
    await server.stopped.wait()
    return 0


def serve(settings: ServerSettings) -> int:
    """Configure logging and run the server to completion (the CLI's entry point): one
    process, with ``--frontend native`` beside its C++ front-end processes, or with
    ``--workers`` > 1 and the Python front-end a supervisor of front-end processes
    (server/workers.py)."""
    configure_logging(settings.log_format, settings.log_level)
    use_uvloop()
    workers = resolve_workers(settings.workers)
    frontend, why_not = choose_frontend(settings.frontend, workers, settings.native_cache)
    if why_not is not None:
        log_event(log, "native_frontend_unavailable", level=logging.WARNING,
                  frontend=frontend, workers=workers, reason=why_not)
    settings = settings.model_copy(update={"workers": workers, "frontend": frontend})
    if workers > 1 and frontend == "python":
        from .workers import run_workers

        return asyncio.run(run_workers(settings, workers))
    return asyncio.run(run(settings))


def use_uvloop() -> None:
    """Run on uvloop: the same server answers ~9 % more requests per core (docs/benchmarks.md)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


__all__ = ["RnnServer", "grpc", "model_health_names", "run", "serve"]
