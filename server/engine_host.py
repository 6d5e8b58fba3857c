"""The engine process's side of ``--workers N``: each front-end's requests, run on the
engines of this process's ``ModelRegistry``.

Requests a front-end sends (server/ipc.py framing), answered ``ok``/``err`` unless their
request id is 0:

=========  ==========================================================  ===================
kind       arguments after the request id                              ``ok`` payload
=========  ==========================================================  ===================
classify   model, version, texts                                       (version,
                                                                       [prediction, ...])
step       model, version, key, text, start, end, restart, client,     (version, prediction)
           export
end        model, version, key, why                                    (none)
export     model, version, key, release                                (blob, info)
import     model, version, key, snapshot, client                       info
load       model                                                       (none)
unload     model                                                       (none)
listening  pid                                                         (none)
=========  ==========================================================  ===================

(``prediction`` as ``ipc.pack_prediction``; ``info`` = tokens, chunks, packed last or None;
``version`` the model version that answered.)

An empty ``version`` is the client's "no version": stateless requests and sequence starts
go to the latest version served *now* (not the one a front-end's catalog named), and every
other sequence request to the version where its sequence is open
(``ModelRegistry.sequence_engine``), so a front-end's catalog may lag a reload harmlessly.

Invariants:
- A front-end's requests reach the engines in the order it sent them (each is handled as it
  arrives, without a suspension point before the engine has it), so a sequence's steps keep
  their order and the engine's admission errors are exactly the in-process ones.
- Stream sequences (server-generated ids, ``catalog.StreamKey``) opened through a channel end
  when that channel closes (the front-end exited or was killed); KServe sequences (client
  ids) stay open, so a client can continue them through any other front-end.
- While the channel is open, every request with an id gets exactly one answer.
- Requests are reported to telemetry by the front-end that received them (the time includes
  this hop), so the engines here run them with ``api=None`` (server/accounting.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .catalog import StreamKey
from .ipc import Channel, error_reply, pack_prediction
from .logs import log_event

log = logging.getLogger("rnnserve.server.engine_host")


class FrontendLink:
    """The engine side of one front-end's channel."""

    def __init__(self, registry, index: int, on_listening: Callable[[FrontendLink], None],
                 on_closed: Callable[[FrontendLink], None]) -> None:
        self.registry = registry
        self.index = index
        self.pid = 0
        self.channel: Channel | None = None
        self._on_listening = on_listening
        self._on_closed = on_closed
        self._streams: dict[StreamKey, object] = {}    # open stream sequence -> engine
        self._handlers = {"classify": self._classify, "step": self._step, "end": self._end,
                          "export": self._export, "import": self._import,
                          "load": self._load, "unload": self._unload,
                          "listening": self._listening}

    async def open(self, sock) -> None:
        self.channel = await Channel.open(sock, self._receive, self._closed)

    def send(self, message: tuple) -> None:
        if self.channel is not None:
            self.channel.send(message)

    # -- dispatch -----------------------------------------------------------------------

    def _receive(self, message: tuple) -> None:
        kind, request_id, *args = message
        handler = self._handlers.get(kind)
        if handler is None:
            log_event(log, "ipc_unknown_message", level=logging.ERROR, kind=str(kind)[:40])
            return
        try:
            handler(request_id, *args)
        except Exception as exc:  # noqa: BLE001 - answered, the channel keeps serving
            if not hasattr(exc, "code"):
                log_event(log, "ipc_request_failed", level=logging.ERROR, kind=kind,
                          error=f"{type(exc).__name__}: {exc}"[:300])
            if request_id:
                self.send(error_reply(request_id, exc))

    def _reply_when_done(self, request_id: int, future, pack: Callable) -> None:
        def done(f) -> None:
            if f.cancelled():
                self.send(("err", request_id, "CANCELLED", "cancelled by the engine"))
            elif f.exception() is not None:
                self.send(error_reply(request_id, f.exception()))
            else:
                self.send(("ok", request_id, pack(f.result())))

        future.add_done_callback(done)

    def _closed(self, exc) -> None:
        for key, engine in list(self._streams.items()):
            engine.end_sequence(key, why="cancelled")
        self._streams.clear()
        self._on_closed(self)

    # -- requests -----------------------------------------------------------------------

    def _classify(self, request_id, model, version, texts) -> None:
        engine = self.registry.get(model, version)
        future = engine.submit_classify(texts, api=None)
        answered = engine.version
        self._reply_when_done(request_id, future, lambda predictions: (
            answered, [pack_prediction(p) for p in predictions]))

    def _step(self, request_id, model, version, key, text, start, end, restart, client,
              export) -> None:
        engine = self.registry.sequence_engine(model, version, key, start)
        future = engine.submit_step(key, text, start=start, end=end, restart=restart, api=None,
                                    client=client, export=export)
        answered = engine.version
        if isinstance(key, StreamKey):
            if end:
                self._streams.pop(key, None)
            else:
                self._streams[key] = engine
        self._reply_when_done(request_id, future,
                              lambda prediction: (answered, pack_prediction(prediction)))

    def _end(self, request_id, model, version, key, why) -> None:
        self._streams.pop(key, None)
        self.registry.sequence_engine(model, version, key, False).end_sequence(key, why=why)

    def _export(self, request_id, model, version, key, release) -> None:
        engine = self.registry.sequence_engine(model, version, key, False)
        blob, state = engine.export_sequence(key, release=release)
        if release:
            self._streams.pop(key, None)
        last = None if state.last is None else pack_prediction(state.last)
        self.send(("ok", request_id, (blob, (state.tokens, state.chunks, last))))

    def _import(self, request_id, model, version, key, snapshot, client) -> None:
        engine = self.registry.get(model, version)
        state = engine.import_sequence(key, snapshot, client=client)
        if isinstance(key, StreamKey):
            self._streams[key] = engine
        last = None if state.last is None else pack_prediction(state.last)
        self.send(("ok", request_id, (state.tokens, state.chunks, last)))

    def _load(self, request_id, model) -> None:
        future = asyncio.ensure_future(self.registry.load_model(model))
        self._reply_when_done(request_id, future, lambda _: None)

    def _unload(self, request_id, model) -> None:
        future = asyncio.ensure_future(self.registry.unload_model(model))
        self._reply_when_done(request_id, future, lambda _: None)

    def _listening(self, request_id, pid) -> None:
        self.pid = pid
        self._on_listening(self)
