"""ModelRegistry: every model version of the repository, by name and version.

Invariants:
- Which versions are served follows each config.pbtxt ``version_policy`` (Triton's default:
  the latest one); an empty version selects the highest loaded version.
- A repository problem (unreadable config, metadata, labels, tokenizer) fails construction
  with a RepositoryError naming the file; a model that fails to load fails ``load_all``.
- Lookups follow server/catalog.py's ModelDirectory rule (NotFound naming what is served,
  Unavailable while loading).
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

from .catalog import ModelDirectory, ModelEntry
from .engine import ModelEngine
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


class ModelRegistry(ModelDirectory):
    """Engines of all served model versions in this process, keyed by (name, version)."""

    def __init__(self, settings: ServerSettings, telemetry=None) -> None:
        super().__init__()
        self.settings = settings
        self.telemetry = telemetry
        self.repository = Path(settings.repository)
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
        if settings.default_model is not None and settings.default_model not in names:
            raise RepositoryError(f"default model {settings.default_model!r} is not in the "
                                  f"repository (models: {', '.join(names)})")
        self._index(settings.default_model)

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

    # -- what front-ends need ------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every served version as plain data (sent to front-end processes)."""
        return [engine.entry() for engine in self._engines.values()]
