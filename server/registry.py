"""ModelRegistry: every model version of the repository, by name and version.

Invariants:
- Which versions are served follows each config.pbtxt ``version_policy`` (Triton's default:
  the latest one); an empty version selects the highest loaded version.
- A repository problem (unreadable config, metadata, labels, tokenizer) fails construction
  with a RepositoryError naming the file; a model that fails to load fails ``load_all``.
- ``get`` raises NotFound naming what is available, or Unavailable while loading.
- All engines share one SnapshotCodec (state keys) and one per-client SequenceQuota.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from rnnserve.repository import (
    CONFIG_FILE,
    RepositoryError,
    list_models,
    list_versions,
    read_model_config,
)

from .engine import ModelEngine
from .errors import InvalidArgument, NotFound, Unavailable
from .logs import log_event
from .quota import SequenceQuota
from .settings import ServerSettings
from .snapshot import SnapshotCodec, load_state_keys

log = logging.getLogger("rnnserve.server.registry")


def served_versions(config, available: list[str]) -> list[str]:
    """Versions selected by ``config.version_policy`` among ``available`` (ascending)."""
    if not available:
        return []
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = {str(v) for v in policy.specific.versions}
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if which == "latest" else 1
    return available[-max(1, count):]


class ModelRegistry:
    """Engines of all served model versions, keyed by (name, version)."""

    def __init__(self, settings: ServerSettings, telemetry=None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.repository = Path(settings.repository)
        self._engines: dict[tuple[str, str], ModelEngine] = {}
        self._latest: dict[str, str] = {}
        key = settings.state_key.get_secret_value() if settings.state_key else None
        self.snapshots = SnapshotCodec(load_state_keys(key, settings.state_key_file))
        self.quota = SequenceQuota(settings.max_sequences_per_client)
        names = list_models(self.repository)
        if not names:
            raise RepositoryError(f"model repository {self.repository} holds no model "
                                  f"(no <model>/{CONFIG_FILE})")
        for name in names:
            config = read_model_config(self.repository / name / CONFIG_FILE)
            versions = served_versions(config, list_versions(self.repository / name))
            if not versions:
                raise RepositoryError(f"model {name}: no version directory matches its "
                                      "version_policy")
            for version in versions:
                model_telemetry = telemetry.model(name, version) if telemetry is not None \
                    else None
                self._engines[(name, version)] = ModelEngine(
                    name, version, self.repository / name / version, config, settings,
                    model_telemetry, snapshots=self.snapshots, quota=self.quota)
            self._latest[name] = versions[-1]
        if settings.default_model is not None and settings.default_model not in self._latest:
            raise RepositoryError(f"default model {settings.default_model!r} is not in the "
                                  f"repository (models: {', '.join(names)})")
        self.default_model = settings.default_model or (names[0] if len(names) == 1 else "")

    # -- loading ------------------------------------------------------------------------

    async def load_all(self, on_ready: Callable[[ModelEngine], Awaitable[None]] | None = None
                       ) -> None:
        """Load and start every engine, one after the other; ``on_ready`` after each."""
        for engine in self._engines.values():
            try:
                await asyncio.to_thread(engine.load)
            except Exception as exc:
                log_event(log, "model_load_failed", level=logging.ERROR, model=engine.name,
                          version=engine.version, error=f"{type(exc).__name__}: {exc}")
                raise
            engine.start()
            if on_ready is not None:
                await on_ready(engine)

    async def close(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(engine.close(timeout) for engine in self._engines.values()))

    # -- lookup -------------------------------------------------------------------------

    def engines(self) -> list[ModelEngine]:
        return list(self._engines.values())

    def names(self) -> list[str]:
        return list(self._latest)

    def versions(self, name: str) -> list[str]:
        return [v for (n, v) in self._engines if n == name]

    def latest(self, name: str) -> str:
        return self._latest[name]

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self._engines.values())

    def get(self, name: str | None = None, version: str | int | None = None) -> ModelEngine:
        """The engine for ``name`` (empty: default model) and ``version`` (empty: latest)."""
        if not name:
            if not self.default_model:
                raise InvalidArgument("no model named and the server has no default model; "
                                      f"choose one of: {', '.join(self._latest)}")
            name = self.default_model
        if name not in self._latest:
            raise NotFound(f"model {name!r} is not served here; available: "
                           f"{', '.join(self._latest)}")
        version = str(version) if version not in (None, "", 0, "0") else self._latest[name]
        engine = self._engines.get((name, version))
        if engine is None:
            raise NotFound(f"model {name!r} has no version {version!r}; served versions: "
                           f"{', '.join(self.versions(name))}")
        if not engine.ready:
            raise Unavailable(f"model {name} version {version} is not ready yet; retry shortly")
        return engine
