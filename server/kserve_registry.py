"""The KServe servicer's view of the ModelRegistry: names → (ModelView, ModelEngine).

Invariants:
- Names and versions resolve by the directory's rule (server/catalog.py, shared with the
  text API): unknown ones are NOT_FOUND in Triton's wording plus what is served; a known but
  not-ready version is UNAVAILABLE; ``<model>-stream`` exists only for models that can
  stream (not bidirectional).
- A sequence step goes where the registry routes it (``sequence_engine``: the version its
  sequence is open on when the request names none); a version that is unloaded but still
  finishes open sequences is found by an explicit version only for those steps.
- RepositoryIndex lists every version the registry knows with its real state: READY,
  LOADING, or UNAVAILABLE with the reason (not selected, refused: why, unloaded).
- Everything KServe reports about batching (max_batch_size, queue delay, sequence idle time)
  is the engine's effective value (settings override config.pbtxt), not the file's.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from .catalog import ModelView, unknown_model
from .errors import InvalidArgument


class ServedModels:
    """Adapter over ``rnnserve.server.registry.ModelRegistry`` for the KServe servicer."""

    def __init__(self, registry, settings=None) -> None:
        self._registry = registry
        self._settings = settings

    # -- names (the directory's rule: server/catalog.py) -------------------------------

    def resolve(self, name: str) -> ModelView | None:
        return self._registry.resolve(name)

    def views(self) -> list[ModelView]:
        return self._registry.views()

    def versions(self, base: str) -> list[str]:
        return list(self._registry.versions(base))

    def lookup(self, name: str, version: str, *, request: tuple[str, str] | None = None):
        """(view, engine) for a KServe model name and version ("" = the latest);
        ``request``: (api, kind) of an inference request (counted when no model takes it)."""
        return self._registry.lookup(name, version, request=request)

    def sequence_engine(self, view: ModelView, version: str, sequence_id, start: bool):
        """The engine (or front-end handle) a sequence step of ``view`` goes to."""
        return self._registry.sequence_engine(view.base, version, sequence_id, start)

    async def load(self, name: str) -> None:
        """RepositoryModelLoad: ``name`` is a model of the repository (a ``-stream`` view
        names its model)."""
        await self._registry.load_model(self._base_name(name))

    async def unload(self, name: str) -> None:
        await self._registry.unload_model(self._base_name(name))

    def _base_name(self, name: str) -> str:
        if not name:
            raise InvalidArgument("model_name is empty; name the model to load or unload")
        view = self.resolve(name)
        return view.base if view is not None else name

    def statistics_targets(self, name: str, version: str):
        """(view, engine) pairs ModelStatistics reports: all views/versions when unnamed."""
        if name:
            views = [self.resolve(name)]
            if views[0] is None:
                raise unknown_model(name, [view.name for view in self.views()])
        else:
            views = self.views()
        pairs = []
        for view in views:
            for engine in self._registry.engines():
                if engine.name != view.base:
                    continue
                if version and str(engine.version) != version:
                    continue
                pairs.append((view, engine))
        if name and version and not pairs:
            raise unknown_model(name, self.versions(views[0].base), version)
        return pairs

    def server_ready(self) -> bool:
        return bool(self._registry.ready)

    def model_ready(self, name: str, version: str) -> bool:
        view = self.resolve(name)
        if view is None:
            return False
        for engine in self._registry.engines():
            if engine.name == view.base and (
                str(engine.version) == (version or self._registry.latest(view.base))
            ):
                return bool(engine.ready)
        return False

    def index(self, *, ready: bool):
        """(name, version, state, reason) of every view and version, sorted."""
        views = self.views()
        rows = []
        for base, version, state, reason in self._registry.status():
            if ready and state != "READY":
                continue
            names = [view.name for view in views if view.base == base] or [base]
            rows.extend((name, version, state, reason) for name in names)
        return sorted(rows, key=lambda row: (row[0], int(row[1]) if row[1].isdigit() else 0))

    # -- what is actually served ----------------------------------------------------------

    @staticmethod
    def max_batch_size(engine) -> int:
        """Largest request batch: the engine's rows per execution (0 = no batching)."""
        if engine.config.max_batch_size <= 0:
            return 0
        return int(engine.options.max_batch_size)

    @staticmethod
    def repository_config(engine):
        return engine.config

    def served_overrides(self, engine) -> dict:
        options = engine.options
        return {
            "max_batch_size": self.max_batch_size(engine),
            "max_queue_delay_us": round(options.max_queue_delay_s * 1e6),
            "sequence_idle_us": round(options.sequence_idle_seconds * 1e6),
            "chunk_length": int(options.chunk_length),
        }

    @staticmethod
    def record_rejected(engine, *, view: ModelView, code, seconds: float) -> None:
        """Count a request refused before it reached the engine (as the engine would)."""
        telemetry = engine.telemetry
        if telemetry is not None:
            telemetry.request_finished(api="kserve", kind="stream" if view.stateful else "unary",
                                       code=code, seconds=seconds, texts=0)


def view_statistics(view: ModelView, engine) -> service_pb2.ModelStatistics:
    """ModelStatistics of ``view``: the engine's cumulative telemetry under the view's name.

    Both flavours of one model run on one engine with one batcher, so each reports the
    engine's numbers (every API, both flavours) under its own name; the split by API and
    call kind lives in the Prometheus series. They are ``ModelTelemetry.statistics()``
    (server/telemetry.py): built from the samples a /metrics scrape reads (totals over every
    process with ``serve --workers N``), compute_input/infer/output counts equal, as
    perf_analyzer requires.
    """
    stats = service_pb2.ModelStatistics()
    if engine.telemetry is not None:
        stats.CopyFrom(engine.telemetry.statistics())
    stats.name = view.name
    stats.version = str(engine.version)
    return stats
