"""The KServe servicer's view of the ModelRegistry: names → (ModelView, ModelEngine).

Invariants:
- Lookups never raise anything but ServingError; unknown names and versions are NOT_FOUND
  with Triton's wording ("Request for unknown model: 'x' is not found", "... version 3 is
  not found"); a known but not-ready version is UNAVAILABLE.
- ``<model>-stream`` exists only for models whose engine can stream (not bidirectional).
- A sequence step goes where the registry routes it (``sequence_engine``: the version its
  sequence is open on when the request names none); a version that is unloaded but still
  finishes open sequences is found by an explicit version only for those steps.
- RepositoryIndex lists every version the registry knows with its real state: READY,
  LOADING, or UNAVAILABLE with the reason (not selected, refused: why, unloaded).
- Everything KServe reports about batching (max_batch_size, queue delay, sequence idle time)
  is the engine's effective value (settings override config.pbtxt), not the file's.
"""

from __future__ import annotations

from .errors import InvalidArgument, NotFound, ServingError, Unavailable
from .kserve_models import ModelView, all_views, resolve_name


class ServedModels:
    """Adapter over ``rnnserve.server.registry.ModelRegistry`` for the KServe servicer."""

    def __init__(self, registry, settings=None) -> None:
        self._registry = registry
        self._settings = settings

    # -- names --------------------------------------------------------------------------

    def _streaming(self) -> set[str]:
        return {name for name in self._registry.names()
                if getattr(self._latest_engine(name), "streaming", True)}

    def _latest_engine(self, name: str):
        for engine in self._registry.engines():
            if engine.name == name and str(engine.version) == self._registry.latest(name):
                return engine
        return None

    def resolve(self, name: str) -> ModelView | None:
        return resolve_name(name, set(self._registry.names()), self._streaming())

    def views(self) -> list[ModelView]:
        return all_views(set(self._registry.names()), self._streaming())

    def versions(self, base: str) -> list[str]:
        return list(self._registry.versions(base))

    # -- lookups ------------------------------------------------------------------------

    def lookup(self, name: str, version: str):
        """(view, engine) for a KServe model name and version ("" = the latest)."""
        view = self.resolve(name)
        if view is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version and version not in self._registry.versions(view.base):
            retiring = self._registry.retiring_engine(view.base, version)
            if retiring is not None:      # unloading: its open sequences may still step
                return view, retiring
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not "
                           "found")
        try:
            engine = self._registry.get(view.base, version or None)
        except Unavailable:
            raise
        except ServingError as exc:  # registry's own NotFound wording → Triton's
            raise NotFound(f"Request for unknown model: '{name}' is not found") from exc
        return view, engine

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
                raise NotFound(f"requested model '{name}' is not found")
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
            raise NotFound(f"requested model '{name}' version {version} is not found")
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
        telemetry = getattr(engine, "telemetry", None)
        if telemetry is not None:
            telemetry.request_finished(api="kserve", kind="stream" if view.stateful else "unary",
                                       code=code, seconds=seconds, texts=0)
