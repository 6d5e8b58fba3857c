"""ModelRegistry: every model version of the repository, by name and version, loaded and
unloaded while serving (``--model-control poll|explicit``, docs/server.md "Live model
repository").

Invariants:
- Which versions are served follows each config.pbtxt ``version_policy`` (Triton's default:
  the latest one), re-read on every scan and explicit load; an empty version selects the
  highest served version. Refused versions do not count: the policy picks among the
  loadable ones, so a broken new export never unloads the version serving before it.
- At start-up a repository problem (unreadable config, metadata, labels, tokenizer) fails
  construction with a RepositoryError naming the file; a model that fails to load fails
  ``load_all``. While serving, a version that cannot be read, does not match its config or
  fails to load is refused instead: one ``model_version_refused`` log line, the lifecycle
  counter, status UNAVAILABLE with the reason; it is retried only once its files change.
- A new version is loaded and warmed in a thread (status LOADING) and only then enters the
  directory READY, all at once; an unloaded version leaves the directory at once (no new
  sequences or stateless requests), finishes its open sequences for at most
  ``unload_wait_seconds`` and is then closed.
- Scans, loads and unloads run one at a time (one lock).
- A sequence step without START goes to the version where its id is open
  (``sequence_engine``), served or unloading; a START goes to the requested (else latest)
  version and ends that id on every other version of the model.
- Lookups follow server/catalog.py's ModelDirectory rule (NotFound naming what is served,
  Unavailable while loading).
- All engines share one SnapshotCodec (state keys) and one per-client SequenceQuota.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
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
from .errors import FailedPrecondition, NotFound
from .lifecycle_metrics import LifecycleMetrics
from .logs import log_event
from .quota import SequenceQuota
from .settings import ServerSettings
from .snapshot import SnapshotCodec, load_state_keys
from .version_check import check_config_matches, version_signature

log = logging.getLogger("rnnserve.server.registry")

LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"
#: How often an unloaded version checks whether its last open sequence ended.
RETIRE_CHECK_SECONDS = 0.05


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
        self.lifecycle = LifecycleMetrics(telemetry)
        self._refused: dict[tuple[str, str], tuple] = {}   # version -> files signature
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._closers: set[asyncio.Task] = set()
        names = list_models(self.repository)
        if not names:
            raise RepositoryError(f"model repository {self.repository} holds no model "
                                  f"(no <model>/{CONFIG_FILE})")
        for name in names:
            config = read_model_config(self.repository / name / CONFIG_FILE)
            available = list_versions(self.repository / name)
            versions = served_versions(config, available)
            if not versions:
                raise RepositoryError(f"model {name}: no version directory matches its "
                                      "version_policy")
            for version in set(available) - set(versions):
                self._status[(name, version)] = (UNAVAILABLE, "not selected by version_policy")
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
        self._default = self.default_model    # an only model stays the default when others

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
        if self._poller is not None:
            self._poller.cancel()
        for closer in list(self._closers):
            closer.cancel()
        engines = [*self._engines.values(), *self._retiring]
        await asyncio.gather(*(engine.close(timeout) for engine in engines))

    # -- live repository -----------------------------------------------------------------

    def start_polling(self) -> asyncio.Task:
        """Rescan the repository every ``poll_seconds`` until ``close()``."""
        async def poll() -> None:
            while True:
                await asyncio.sleep(self.settings.poll_seconds)
                try:
                    await self.scan()
                except Exception as exc:  # noqa: BLE001 - the next poll tries again
                    log_event(log, "repository_scan_failed", level=logging.ERROR,
                              error=f"{type(exc).__name__}: {exc}")

        self._poller = asyncio.get_running_loop().create_task(poll(), name="rnnserve-poll")
        return self._poller

    def _serialized(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def scan(self) -> None:
        """Bring every model in line with the repository and its version policies."""
        async with self._serialized():
            names = set(list_models(self.repository))
            for name in sorted(names | {n for n, _ in self._engines}
                               | {n for n, _ in self._status}):
                await self._sync_model(name)

    async def load_model(self, name: str) -> None:
        """``RepositoryModelLoad`` (explicit mode): (re)load ``name`` from the repository,
        as a scan would; FAILED_PRECONDITION when a version it should serve was refused."""
        self._check_explicit("load")
        async with self._serialized():
            if not (self.repository / name / CONFIG_FILE).is_file():
                raise NotFound(f"failed to load '{name}': no such model in the repository "
                               f"{self.repository}")
            refused = await self._sync_model(name, retry=True)
        if refused:
            version, reason = refused[0]
            raise FailedPrecondition(f"failed to load '{name}' version {version}: {reason}")

    async def unload_model(self, name: str) -> None:
        """``RepositoryModelUnload`` (explicit mode): unload every version of ``name``;
        unloading a model that is in the repository but not served does nothing."""
        self._check_explicit("unload")
        async with self._serialized():
            served = [v for n, v in self._engines if n == name]
            if not served and not (self.repository / name / CONFIG_FILE).is_file():
                raise NotFound(f"failed to unload '{name}': no such model")
            for version in served:
                self._unload(name, version, "unloaded")

    def _check_explicit(self, action: str) -> None:
        mode = self.settings.model_control
        if mode != "explicit":
            raise FailedPrecondition(f"explicit model {action} is not allowed: the server "
                                     f"runs with --model-control {mode}; start it with "
                                     "--model-control explicit")

    async def _sync_model(self, name: str, *, retry: bool = False) -> list[tuple[str, str]]:
        """Load the versions ``name``'s policy selects among the loadable ones and unload
        the others; returns the versions refused by this call as (version, reason)."""
        model_path = self.repository / name
        if not (model_path / CONFIG_FILE).is_file():
            for version in [v for n, v in self._engines if n == name]:
                self._unload(name, version, "removed from the repository")
            return []
        try:
            config = read_model_config(model_path / CONFIG_FILE)
        except RepositoryError as exc:             # keeps serving what it serves
            signature = version_signature(model_path, "")
            if retry or self._refused.get((name, "")) != signature:
                self._refuse(name, "", signature, f"{exc}")
            return [("", f"{exc}")]
        self._refused.pop((name, ""), None)
        before = (dict(self._status), set(self._engines))
        available = list_versions(model_path)
        for key in [k for k in self._status if k[0] == name and k[1] not in available]:
            del self._status[key]                         # directory gone: forget it
        refused: list[tuple[str, str]] = []
        while True:
            loadable = [v for v in available if v not in {r for r, _ in refused}
                        and not self._still_refused(name, v, retry)]
            wanted = served_versions(config, loadable)
            missing = [v for v in wanted if (name, v) not in self._engines]
            if not missing:
                break
            reason = await self._load(name, missing[0], config)
            if reason is not None:
                refused.append((missing[0], reason))
        for version in [v for n, v in self._engines if n == name and v not in wanted]:
            self._unload(name, version, "not selected by version_policy"
                         if version in available else "removed from the repository")
        for version in available:
            if (name, version) not in self._engines and (name, version) not in self._status:
                self._status[(name, version)] = (UNAVAILABLE, "not selected by version_policy")
        if (dict(self._status), set(self._engines)) != before:
            self._changed()
        return refused

    def _still_refused(self, name: str, version: str, retry: bool) -> bool:
        signature = self._refused.get((name, version))
        if signature is None:
            return False
        if signature == version_signature(self.repository / name, version) and not retry:
            return True
        del self._refused[(name, version)]
        return False

    async def _load(self, name: str, version: str, config) -> str | None:
        """Load, warm and start one version, then serve it; the refusal reason or None."""
        key = (name, version)
        signature = version_signature(self.repository / name, version)
        self._status[key] = (LOADING, "")
        self._changed()
        telemetry = self.telemetry.model(name, version) if self.telemetry is not None else None
        try:
            engine = await asyncio.to_thread(
                ModelEngine, name, version, self.repository / name / version, config,
                self.settings, telemetry, snapshots=self.snapshots, quota=self.quota)
            check_config_matches(config, engine.metadata)
            await asyncio.to_thread(engine.load)
        except Exception as exc:  # noqa: BLE001 - any failure refuses this version only
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if self.telemetry is not None and key not in self._engines:
                self.telemetry.remove_model(name, version)
            self._refuse(name, version, signature, reason)
            return reason
        engine.start()
        self._engines[key] = engine
        self._status.pop(key, None)
        self._index(self.settings.default_model or self._default or None)
        self.lifecycle.record(name, version, "load", "ok")
        log_event(log, "model_version_ready", model=name, version=version,
                  seconds=round(engine.load_seconds, 3))
        self._changed()
        return None

    def _refuse(self, name: str, version: str, signature, reason: str) -> None:
        """One refusal: log line, counter, status (``version`` "": the model's config)."""
        self._refused[(name, version)] = signature
        if version:
            self._status[(name, version)] = (UNAVAILABLE, f"refused: {reason}")
        self.lifecycle.record(name, version, "load", "refused")
        log_event(log, "model_version_refused", level=logging.WARNING, model=name,
                  version=version, reason=reason)
        self._changed()

    def _unload(self, name: str, version: str, reason: str) -> None:
        """Take ``name``/``version`` out of the directory now; close it once its open
        sequences ended (at most ``unload_wait_seconds`` later)."""
        engine = self._engines.pop((name, version))
        self._index(self.settings.default_model or self._default or None)
        engine.retire()
        self._retiring.append(engine)
        self._status[(name, version)] = (UNAVAILABLE, reason)
        log_event(log, "model_version_unloading", model=name, version=version, reason=reason,
                  open_sequences=engine.open_sequences)
        self._changed()
        closer = asyncio.get_running_loop().create_task(self._close_retired(engine))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_retired(self, engine: ModelEngine) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.unload_wait_seconds
        while engine.open_sequences and loop.time() < deadline:
            await asyncio.sleep(RETIRE_CHECK_SECONDS)
        ended = engine.open_sequences
        await engine.close(timeout=self.settings.grace_seconds)
        if engine in self._retiring:
            self._retiring.remove(engine)
        if self.telemetry is not None and (engine.name, engine.version) not in self._engines:
            self.telemetry.remove_model(engine.name, engine.version)
        self.lifecycle.record(engine.name, engine.version, "unload", "ok")
        log_event(log, "model_version_unloaded", model=engine.name, version=engine.version,
                  sequences_ended=ended)
        self._changed()

    # -- sequence routing ----------------------------------------------------------------

    def sequence_engine(self, name: str, version: str | None, key: Hashable, start: bool):
        """The engine a sequence step goes to (see the module invariants)."""
        name = name or self.default_model
        version = str(version) if version not in (None, "", 0, "0") else ""
        if not start:
            for engine in [*self._engines.values(), *reversed(self._retiring)]:
                if (engine.name == name and (not version or engine.version == version)
                        and engine.store.find(key) is not None):
                    return engine
            return self.get(name, version)
        engine = self.get(name, version)
        for other in [*self._engines.values(), *self._retiring]:
            if (other.name == name and other is not engine
                    and other.store.find(key) is not None):
                other.end_sequence(key, why="restarted")
        return engine

    # -- what front-ends need ------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every served version as plain data (sent to front-end processes)."""
        return [engine.entry() for engine in self._engines.values()]

    def catalog_message(self) -> tuple:
        """What a front-end process needs to mirror this directory (server/remote.py)."""
        return ("catalog", self.entries(), self.default_model, dict(self._status),
                [engine.entry() for engine in self._retiring])
