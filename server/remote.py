"""A front-end process's view of the engine process (``--workers N``).

:class:`RemoteRegistry` is the ``ModelRegistry`` the servicers see in a front-end: the same
lookup rule (server/catalog.py), built from the catalog the engine sends. Its
:class:`RemoteEngine` handles offer the servicer-facing part of ``ModelEngine``
(``classify``, ``submit_step`` / ``stream_step``, ``end_sequence``, ``export_state``,
``import_state``, ``describe`` and the attributes KServe reports) and run everything in the
engine process over one channel (server/ipc.py, server/engine_host.py).

Invariants:
- ``get(name)`` without a version returns a *floating* handle: its requests name no version,
  so the engine process picks the latest version it serves at that moment (and the version
  of an open sequence for its steps); answers carry the version that gave them
  (``Prediction.version``). A catalog that lags a reload therefore never sends a request to
  an unloaded version.
- The catalog mirrors the engine's directory: served versions, the state of the others
  (``status``) and the unloaded versions still finishing sequences (``retiring_engine``).
- Requests leave in call order on one channel, so a sequence's steps reach the engine in
  the order the servicer submitted them, and their futures resolve in that order.
- Every request's future settles: with the engine's answer, or UNAVAILABLE when the
  engine process goes away.
- Every request is reported to this process's telemetry once, when its future settles,
  with the time from here (server/accounting.py); the engine does not report it again.
- Nothing here imports ONNX Runtime or the tokenizer: a front-end starts fast.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence

from tritonclient.grpc import model_config_pb2

from .accounting import report_when_settled
from .catalog import ModelDirectory, ModelEntry, StepAwaiting, StreamKey
from .errors import Unavailable
from .ipc import Channel, error_from, unpack_prediction
from .prediction import Prediction, SequenceInfo
from .quota import ANONYMOUS
from .snapshot import Snapshot, SnapshotCodec, load_state_keys

ENGINE_GONE = "the engine process is not available; retry on another replica"


class EngineLink:
    """Request/answer over the channel to the engine process."""

    def __init__(self, on_catalog: Callable[[list[ModelEntry], str], None],
                 on_lost: Callable[[], None]) -> None:
        self._on_catalog = on_catalog
        self._on_lost = on_lost
        self._channel: Channel | None = None
        self._pending: dict[int, tuple[asyncio.Future, Callable | None]] = {}
        self._ids = itertools.count(1)
        self.serving = asyncio.Event()

    async def connect(self, sock) -> None:
        self._channel = await Channel.open(sock, self._receive, self._closed)

    def request(self, kind: str, *args, decode: Callable | None = None) -> asyncio.Future:
        """Send ``(kind, id, *args)``; the future resolves to ``decode(payload)``."""
        future = asyncio.get_running_loop().create_future()
        if self._channel is None or self._channel.closed:
            future.set_exception(Unavailable(ENGINE_GONE))
            return future
        request_id = next(self._ids)
        self._pending[request_id] = (future, decode)
        self._channel.send((kind, request_id, *args))
        return future

    def notify(self, kind: str, *args) -> None:
        if self._channel is not None:
            self._channel.send((kind, 0, *args))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == "ok" or kind == "err":
            future, decode = self._pending.pop(message[1], (None, None))
            if future is None or future.done():
                return
            if kind == "err":
                future.set_exception(error_from(message[2], message[3]))
            else:
                try:
                    future.set_result(decode(message[2]) if decode else message[2])
                except Exception as exc:  # noqa: BLE001 - a bad payload fails its request only
                    future.set_exception(exc)
        elif kind == "catalog":
            self._on_catalog(*message[1:])
        elif kind == "serve":
            self.serving.set()

    def _closed(self, exc) -> None:
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(Unavailable(ENGINE_GONE))
        self._on_lost()


class RemoteEngine(StepAwaiting):
    """One model version served by the engine process, as the servicers use it."""

    def __init__(self, entry: ModelEntry, link: EngineLink, telemetry=None) -> None:
        self.name = entry.name
        self.version = entry.version
        self.labels = list(entry.labels)
        self.config = model_config_pb2.ModelConfig.FromString(entry.config)
        self.options = entry.options
        self.streaming = entry.streaming
        self.ready = entry.ready
        self.provider = entry.provider
        self._description = entry.description
        self._link = link
        self.telemetry = telemetry
        self._route = entry.version        # the version requests name ("" = floating)

    def floating(self) -> RemoteEngine:
        """This model's handle whose requests go to whatever version the engine serves as
        the latest (or where the sequence is open)."""
        handle = copy.copy(self)
        handle._route = ""
        return handle

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    def describe(self) -> dict:
        return dict(self._description)

    def _prediction(self, packed) -> Prediction:
        return unpack_prediction(packed, self.labels)

    def _answer(self, answer) -> Prediction:
        version, packed = answer
        return unpack_prediction(packed, self.labels, version)

    def _info(self, packed) -> SequenceInfo:
        tokens, chunks, last = packed
        return SequenceInfo(tokens, chunks, None if last is None else self._prediction(last))

    async def classify(self, texts: Sequence[str], *, api: str = "text") -> list[Prediction]:
        labels, started = self.labels, time.perf_counter()
        future = self._link.request(
            "classify", self.name, self._route, list(texts),
            decode=lambda answer: [unpack_prediction(p, labels, answer[0])
                                   for p in answer[1]])
        report_when_settled(self.telemetry, future, api=api, kind="unary", started=started,
                            texts=len(texts))
        return await future

    def new_sequence_id(self) -> Hashable:
        return StreamKey(("stream", f"{os.getpid()}-{next(_stream_ids)}"))

    def submit_step(self, sequence_id: Hashable, text: str | None = None, *,
                    start: bool = False, end: bool = False, restart: bool = False,
                    api: str = "text", client: str = ANONYMOUS,
                    export: bool = False) -> asyncio.Future:
        started = time.perf_counter()
        future = self._link.request("step", self.name, self._route, sequence_id, text, start,
                                    end, restart, client, export, decode=self._answer)
        report_when_settled(self.telemetry, future, api=api, kind="stream", started=started,
                            texts=1)
        return future

    def end_sequence(self, sequence_id: Hashable, *, why: str = "ended") -> None:
        self._link.notify("end", self.name, self._route, sequence_id, why)

    async def export_state(self, sequence_id: Hashable, *, release: bool = False
                           ) -> tuple[bytes, SequenceInfo]:
        blob, info = await self._link.request("export", self.name, self._route, sequence_id,
                                              release)
        return blob, self._info(info)

    async def import_state(self, sequence_id: Hashable, snapshot: Snapshot, *,
                           client: str = ANONYMOUS) -> SequenceInfo:
        return await self._link.request("import", self.name, self._route, sequence_id,
                                        snapshot, client, decode=self._info)


_stream_ids = itertools.count(1)


class RemoteRegistry(ModelDirectory):
    """The engine process's models, as a front-end process serves them."""

    def __init__(self, settings, telemetry=None) -> None:
        super().__init__()
        self.settings = settings
        self.telemetry = telemetry
        key = settings.state_key.get_secret_value() if settings.state_key else None
        self.snapshots = SnapshotCodec(load_state_keys(key, settings.state_key_file))
        self.link = EngineLink(self._catalog, self._lost)
        self._floating: dict[tuple[str, str], RemoteEngine] = {}
        self.catalog_received = asyncio.Event()
        self.lost = asyncio.Event()

    def _catalog(self, entries: list[ModelEntry], default_model: str,
                 status: dict | None = None, retiring: list[ModelEntry] = ()) -> None:
        engines = {}
        for entry in entries:
            engines[(entry.name, entry.version)] = self._handle(entry)
        self._engines = engines
        self._floating = {key: engine.floating() for key, engine in engines.items()}
        self._retiring = [self._handle(entry) for entry in retiring]
        self._status = dict(status or {})
        self._index(default_model or None)
        self.catalog_received.set()
        self._changed()

    def _handle(self, entry: ModelEntry) -> RemoteEngine:
        telemetry = self.telemetry.model(entry.name, entry.version) \
            if self.telemetry is not None else None
        return RemoteEngine(entry, self.link, telemetry)

    def lookup(self, name: str, version: str = "", *, default: bool = False,
               request: tuple[str, str] | None = None):
        """The directory's rule; without a version, a floating handle (module doc)."""
        view, engine = super().lookup(name, version, default=default, request=request)
        if version in ("", "0"):
            engine = self._floating.get((engine.name, engine.version), engine)
        return view, engine

    def sequence_engine(self, name: str, version: str | None, key, start: bool):
        """The handle a sequence step goes through: the engine process routes it."""
        return self.get(name, version)

    async def load_model(self, name: str) -> None:
        await self.link.request("load", name)

    async def unload_model(self, name: str) -> None:
        await self.link.request("unload", name)

    def _lost(self) -> None:
        for engine in [*self._engines.values(), *self._floating.values()]:
            engine.ready = False
        self.lost.set()

    async def load_all(self, on_ready: Callable[[RemoteEngine], Awaitable[None]] | None = None
                       ) -> None:
        """Tell the supervisor this front-end listens, then wait until it says serve."""
        await self.catalog_received.wait()
        self.link.notify("listening", os.getpid())
        await self.link.serving.wait()
        if on_ready is not None:
            for engine in self._engines.values():
                await on_ready(engine)

    async def close(self, timeout: float | None = None) -> None:
        """Nothing to finish here: the engine process finishes the admitted work."""
