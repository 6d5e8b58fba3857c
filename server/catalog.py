"""Which model versions a server offers, and how a request's (model, version) finds one.

:class:`ModelDirectory` holds the one lookup rule of the server, used by both protocols
(text API and KServe v2), in the engine process's ``ModelRegistry`` (server/registry.py,
engines in this process) and in a front-end process's ``RemoteRegistry`` (server/remote.py,
engines in the engine process):

- a model is named ``<model>`` or, for its stateful flavour, ``<model>-stream``
  (:data:`STREAM_SUFFIX`; only models that can stream have one, and a repository model whose
  own name ends in ``-stream`` shadows that alias). :meth:`ModelDirectory.lookup` maps a
  name to a :class:`ModelView` and an engine;
- empty model: the default model (where the API allows it); empty version: the latest
  served version; an unloaded version still finishing its open sequences is found only by
  its explicit version;
- NOT_FOUND keeps Triton's wording ("Request for unknown model: 'x' is not found", which
  tritonclient users recognise) and adds what is served; UNAVAILABLE while a version is not
  ready.

:class:`ModelEntry` is what a front-end needs to know about one version to answer every
RPC but inference itself: labels, the repository ModelConfig, the effective serving
options, the description GetModelMetadata returns and whether it is ready. It is plain data
(it crosses process boundaries, server/ipc.py).

Invariants:
- A directory's ``_latest[name]`` is the highest version of ``name`` it serves (``_engines``).
- ``_retiring`` holds unloaded versions that still finish their open sequences: lookups by
  name alone never return them.
- ``_status`` holds every version of the repository that is not served, with its state
  (``LOADING`` / ``UNAVAILABLE``) and reason; :meth:`status` adds the served ones.
- After every change of what is served, each listener (``add_listener``) is called once,
  synchronously, on the serving loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2

from rnnserve.repository import config_parameters

from .cpus import resolve_workers
from .errors import InvalidArgument, NotFound, ServingError, Unavailable
from .settings import ServerSettings

#: Suffix of the name of a model's stateful (sequence) flavour.
STREAM_SUFFIX = "-stream"

DEFAULT_QUEUE_DELAY_US = 500
DEFAULT_CHUNK_LENGTH = 256
DEFAULT_IDLE_SECONDS = 60.0


class StreamKey(tuple):
    """Server-generated sequence id of a text-API stream; can never equal a client's id."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"stream-{self[1]}"


@dataclass(frozen=True)
class EngineOptions:
    """Serving knobs of one model version: settings override config.pbtxt."""

    max_batch_size: int
    max_queue_delay_s: float
    adaptive: bool
    max_queue_size: int
    chunk_length: int
    instances: int
    max_texts_per_request: int
    max_text_length: int
    max_sequences: int
    sequence_idle_seconds: float
    max_pending_chunks: int
    evict_idle_sequences: bool
    warmup: bool
    length_split: bool

    @classmethod
    def resolve(cls, config: model_config_pb2.ModelConfig,
                settings: ServerSettings) -> EngineOptions:
        params = config_parameters(config)
        delay_us = settings.max_queue_delay_us
        if delay_us is None and config.HasField("dynamic_batching"):
            delay_us = config.dynamic_batching.max_queue_delay_microseconds
        if delay_us is None and config.sequence_batching.HasField("oldest"):
            delay_us = config.sequence_batching.oldest.max_queue_delay_microseconds
        if delay_us is None:
            delay_us = DEFAULT_QUEUE_DELAY_US
        idle = settings.sequence_idle_seconds
        if idle is None and config.sequence_batching.max_sequence_idle_microseconds > 0:
            idle = config.sequence_batching.max_sequence_idle_microseconds / 1e6
        chunk = settings.chunk_length or int(params.get("chunk_length") or DEFAULT_CHUNK_LENGTH)
        instances = settings.instances or sum(g.count for g in config.instance_group) or \
            resolve_workers(settings.workers)
        return cls(
            max_batch_size=settings.max_batch_size or max(1, config.max_batch_size),
            max_queue_delay_s=delay_us / 1e6,
            adaptive=settings.adaptive_queue_delay,
            max_queue_size=settings.max_queue_size,
            chunk_length=chunk,
            instances=instances,
            max_texts_per_request=settings.max_texts_per_request,
            max_text_length=settings.max_text_length,
            max_sequences=settings.max_sequences,
            sequence_idle_seconds=idle or DEFAULT_IDLE_SECONDS,
            max_pending_chunks=settings.max_pending_chunks,
            evict_idle_sequences=settings.evict_idle_sequences,
            warmup=settings.warmup,
            length_split=settings.length_split,
        )


@dataclass(frozen=True)
class ModelEntry:
    """One served model version, as the engine describes it to front-ends."""

    name: str
    version: str
    labels: tuple[str, ...]
    config: bytes                 # tritonclient ModelConfig, serialized
    options: EngineOptions        # effective serving knobs
    streaming: bool
    ready: bool
    provider: str
    description: dict             # GetModelMetadata fields (ModelEngine.describe())


@dataclass(frozen=True)
class ModelView:
    """One model name as clients see it: a served model (``base``) in one flavour.

    Invariant: ``stateful`` iff ``name == base + STREAM_SUFFIX`` and ``base`` can stream; a
    served model literally named ``x-stream`` is ``ModelView("x-stream", "x-stream", False)``.
    """

    name: str
    base: str
    stateful: bool

    @property
    def flavour(self) -> str:
        return "stateful" if self.stateful else "stateless"


def unknown_model(name: str, served: list[str], version: str = "") -> NotFound:
    """NOT_FOUND in Triton's words, plus what this server does serve."""
    what = f"'{name}' version {version}" if version else f"'{name}'"
    listing = ", ".join(served) or "none"
    label = "served versions" if version else "served models"
    return NotFound(f"Request for unknown model: {what} is not found ({label}: {listing})")


class ModelDirectory:
    """Served engines keyed by (name, version), with the server's lookup rule."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, str], Any] = {}
        self._latest: dict[str, str] = {}
        self._retiring: list = []
        self._status: dict[tuple[str, str], tuple[str, str]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.default_model = ""
        self.telemetry = None         # a ServerTelemetry, where requests are reported

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the served versions or their states."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _index(self, default_model: str | None) -> None:
        """Recompute latest versions and the default model from ``_engines``."""
        latest: dict[str, str] = {}
        for name, version in self._engines:
            if name not in latest or int(version) > int(latest[name]):
                latest[name] = version
        self._latest = dict(sorted(latest.items()))
        names = list(self._latest)
        self.default_model = default_model or (names[0] if len(names) == 1 else "")

    def engines(self) -> list:
        return list(self._engines.values())

    def names(self) -> list[str]:
        return list(self._latest)

    def versions(self, name: str) -> list[str]:
        return sorted((v for (n, v) in self._engines if n == name), key=int)

    def latest(self, name: str) -> str:
        return self._latest[name]

    def served(self, name: str, version: str):
        """The served engine of ``name``/``version`` (ready or not), or None."""
        return self._engines.get((name, str(version)))

    def retiring_engine(self, name: str, version: str):
        """The unloaded ``name``/``version`` still finishing its open sequences, or None."""
        for engine in reversed(self._retiring):
            if engine.name == name and str(engine.version) == str(version):
                return engine
        return None

    def status(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every version this directory knows, sorted:
        served ones READY (or UNAVAILABLE while not ready), others as ``_status`` says."""
        rows = {key: ("READY", "") if engine.ready else ("UNAVAILABLE", "not ready")
                for key, engine in self._engines.items()}
        for key, value in self._status.items():
            rows.setdefault(key, value)
        return [(name, version, state, reason) for (name, version), (state, reason)
                in sorted(rows.items(), key=lambda item: (item[0][0], int(item[0][1])))]

    @property
    def ready(self) -> bool:
        return bool(self._engines) and all(engine.ready for engine in self._engines.values())

    # -- the lookup rule ------------------------------------------------------------

    def _streams(self, name: str) -> bool:
        engine = self._engines.get((name, self._latest.get(name, "")))
        return engine is not None and engine.streaming

    def resolve(self, name: str) -> ModelView | None:
        """The view a client's model name means, or None when nothing is served under it."""
        if name in self._latest:
            return ModelView(name, name, False)
        base = name.removesuffix(STREAM_SUFFIX)
        if base != name and self._streams(base):
            return ModelView(name, base, True)
        return None

    def views(self) -> list[ModelView]:
        """Every name clients can use, sorted (an alias shadowed by a real model omitted)."""
        views = [ModelView(name, name, False) for name in self._latest]
        views += [ModelView(name + STREAM_SUFFIX, name, True) for name in self._latest
                  if self._streams(name) and name + STREAM_SUFFIX not in self._latest]
        return sorted(views, key=lambda view: view.name)

    def lookup(self, name: str, version: str = "", *, default: bool = False,
               request: tuple[str, str] | None = None):
        """(view, engine) for a client's model ``name`` and ``version`` ("" = latest).

        ``default``: an empty name means the default model (text API); else it is unknown.
        ``request``: (api, kind) of the inference request this lookup is for; one that fails
        here is counted in ``rnnserve_unrouted_requests_total`` (no model took it).
        """
        try:
            return self._lookup(name, version, default)
        except ServingError as error:
            if request is not None and self.telemetry is not None:
                self.telemetry.request_unrouted(api=request[0], kind=request[1],
                                                code=error.code)
            raise

    def _lookup(self, name: str, version: str, default: bool):
        if not name and default:
            if not self.default_model:
                raise InvalidArgument("no model named and the server has no default model; "
                                      f"choose one of: {', '.join(self._latest)}")
            name = self.default_model
        view = self.resolve(name)
        if view is None:
            raise unknown_model(name, [v.name for v in self.views()])
        if version in ("", "0"):
            version = self._latest[view.base]
        engine = self._engines.get((view.base, version))
        if engine is None:
            engine = self.retiring_engine(view.base, version)
            if engine is None:
                raise unknown_model(name, self.versions(view.base), version)
        elif not engine.ready:
            raise Unavailable(f"model {name} version {version} is not ready yet; retry shortly")
        return view, engine

    def get(self, name: str | None = None, version: str | int | None = None):
        """The engine serving ``name`` (empty: the default model) at ``version`` (empty:
        the latest), by :meth:`lookup`'s rule."""
        version = "" if version in (None, 0) else str(version)
        return self.lookup(name or "", version, default=True)[1]


class StepAwaiting:
    """``stream_step`` for an engine handle that has ``submit_step`` (ModelEngine in this
    process, RemoteEngine in a front-end): one definition for both."""

    async def stream_step(self, sequence_id, text: str, *, start: bool, end: bool,
                          api: str = "text", restart: bool = False, client: str = ""):
        """``await submit_step(...)``: the running prediction after this chunk."""
        return await self.submit_step(sequence_id, text, start=start, end=end,
                                      restart=restart, api=api, client=client)
