"""The ``rnnserve.v1.Sentiment`` servicer (protos/rnnserve/v1/sentiment.proto).

Invariants:
- Every client mistake is answered with the status of its ServingError and a message saying
  what to fix; nothing but ServingError is mapped to a non-INTERNAL status.
- Models are found by the server's one rule (server/catalog.py, shared with KServe): an
  empty name is the default model, ``<model>-stream`` names the same model.
- One StreamClassify call is one sequence (server-generated id), read by the shared
  stream pump (server/streaming.py, ordered): chunks are submitted as they are read
  (pipelining), at most ``max_pending_chunks`` ahead of the responses, answered in order.
- However a stream ends (end flag, half-close, error, client cancel, shutdown), its
  sequence is ended and its state freed; responses for chunks read before an error or a
  shutdown are sent before the error status.
- A stream ended by a drain carries its sequence's snapshot in the trailing metadata
  ``rnnserve-sequence-state-bin`` (taken after the last answered chunk), so the client can
  resume it on another replica with ``resume_state``.
- ExportSequence/ImportSequence address only KServe v2 sequence ids (int or str); a
  stream's server-generated id can never be named by them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from grpc import aio
from rnnserve.protos import sentiment_pb2 as pb

from .errors import FailedPrecondition, InvalidArgument, ServingError
from .guarded import generic_handler
from .prediction import Prediction
from .quota import caller
from .settings import ServerSettings
from .streaming import DRAINED, Drain, StreamPump
from .wire import decode, decode_all, request_class, sequence_id

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["Sentiment"]
SERVICE = SERVICE_DESCRIPTOR.full_name            # "rnnserve.v1.Sentiment"

#: Trailing-metadata key of the snapshot a drained stream ends with.
STATE_TRAILER = "rnnserve-sequence-state-bin"

#: How long a draining server waits for a new stream's first message (to give back the
#: state it brought) before refusing it without one.
FIRST_MESSAGE_SECONDS = 1.0

DRAIN_MESSAGE = ("the server is shutting down; chunks answered so far are final, reopen the "
                 "stream on another replica")
DRAIN_RESUME_MESSAGE = (DRAIN_MESSAGE + " and send the trailing metadata "
                        f"'{STATE_TRAILER}' as resume_state to continue this sequence")


class SentimentServicer:
    """Text-level API over the registry's engines."""

    def __init__(self, registry, settings: ServerSettings, drain: Drain) -> None:
        """``registry``: this process's ModelRegistry or a front-end's RemoteRegistry;
        ``drain``: the server's, shared with KServe."""
        self.registry = registry
        self.settings = settings
        self.drain = drain

    def _engine(self, request, kind: str | None = None):
        """The engine a request's model/version names (the server's lookup rule); ``kind``
        ("unary"/"stream") for an inference request, counted when no model takes it."""
        return self.registry.lookup(decode(request.model, "model"),
                                    decode(request.version, "version"), default=True,
                                    request=None if kind is None else ("text", kind))[1]

    # -- unary --------------------------------------------------------------------------

    async def Classify(self, request, context: aio.ServicerContext) -> pb.ClassifyResponse:
        try:
            engine = self._engine(request, "unary")
            predictions = await engine.classify(decode_all(request.texts, "texts"), api="text")
        except ServingError as error:
            await context.abort(error.code, error.message)
        return pb.ClassifyResponse(
            model=engine.name, version=predictions[0].version or engine.version,
            labels=engine.labels, predictions=[_prediction(p) for p in predictions])

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse(default_model=self.registry.default_model)
        for engine in self.registry.engines():
            response.models.add(name=engine.name, version=engine.version, ready=engine.ready,
                                latest=engine.version == self.registry.latest(engine.name))
        return response

    async def GetModelMetadata(self, request, context) -> pb.ModelMetadata:
        try:
            engine = self._engine(request)
        except ServingError as error:
            await context.abort(error.code, error.message)
        info = engine.describe()
        return pb.ModelMetadata(versions=self.registry.versions(engine.name), **info)

    # -- sequence state -----------------------------------------------------------------

    async def ExportSequence(self, request, context) -> pb.ExportSequenceResponse:
        try:
            engine = self._engine(request)
            blob, state = await engine.export_state(_sequence_key(request),
                                                    release=request.release)
        except ServingError as error:
            await context.abort(error.code, error.message)
        return pb.ExportSequenceResponse(state=blob, model=engine.name, version=engine.version,
                                         total_tokens=state.tokens, chunks=state.chunks,
                                         released=request.release)

    async def ImportSequence(self, request, context) -> pb.ImportSequenceResponse:
        try:
            key = _sequence_key(request)
            snapshot = self.registry.snapshots.decode(bytes(request.state))
            engine = self._snapshot_engine(request, snapshot)
            state = await engine.import_state(key, snapshot, client=self._client(context))
        except ServingError as error:
            await context.abort(error.code, error.message)
        response = pb.ImportSequenceResponse(model=engine.name, version=engine.version,
                                             total_tokens=state.tokens, chunks=state.chunks)
        if state.last is not None:
            response.prediction.CopyFrom(_prediction(state.last))
        return response

    def _snapshot_engine(self, request, snapshot):
        """The engine a snapshot goes to: the request's model, else the snapshot's own."""
        return self.registry.lookup(*_target(request, snapshot), default=True)[1]

    def _client(self, context) -> str:
        return caller(context, self.settings)

    # -- streaming ----------------------------------------------------------------------

    async def StreamClassify(self, requests: AsyncIterator, context: aio.ServicerContext):
        self.drain.track(context)
        requests = aiter(requests)
        opening = await self._first_message(requests)
        if opening is None:              # half-closed at once, or silent through a drain
            if self.drain.active:
                await context.abort(DRAINED.code, DRAIN_MESSAGE)
            return
        if self.drain.active:
            await self._refuse_drained(opening, context)
        stream = _Stream(self._client(context))
        pump = StreamPump(functools.partial(self._submit, stream=stream), ordered=True,
                          window=self.settings.max_pending_chunks, drain=self.drain)
        chunk_index = 0
        total_tokens = 0
        sequence_id = ""
        answered = False
        why = "cancelled"
        try:
            async for (first, reset, end, base), prediction in pump.outcomes(
                    _after(opening, requests)):
                answered = True
                if reset:
                    chunk_index = total_tokens = 0
                if base is not None:
                    chunk_index, total_tokens = base
                sequence_id = sequence_id or str(stream.key)
                chunk_index += 1
                total_tokens += prediction.tokens
                response = pb.StreamClassifyResponse(
                    prediction=_prediction(prediction), chunk_index=chunk_index,
                    total_tokens=total_tokens, sequence_id=sequence_id, end=end,
                    state=prediction.state or b"")
                if first or reset:         # the first answer names the model it came from
                    engine = stream.engine
                    response.model = engine.name
                    response.version = prediction.version or engine.version
                    response.labels.extend(engine.labels)
                yield response
            why = "ended"
        except ServingError as error:
            if error is DRAINED and not answered:   # the sequence is where the caller had it
                await self._refuse_drained(opening, context)
            if error is DRAINED:
                await self._abort_drained(context, stream)
            await context.abort(error.code, error.message)
        finally:
            if stream.engine is not None:
                stream.engine.end_sequence(stream.key, why=why)

    async def _first_message(self, requests: AsyncIterator):
        """The stream's first message, or None when the caller half-closes first. The
        handler reads it itself (never the pump, whose reader a drain cancels, losing a
        message caught mid-read): so a stream caught by a drain before anything was
        answered can always be given back the state it brought. Once a drain has begun it
        waits at most FIRST_MESSAGE_SECONDS (then None)."""
        reading = asyncio.ensure_future(anext(requests, None))
        try:
            if not self.drain.active:
                began = asyncio.ensure_future(self.drain.begun())
                try:
                    await asyncio.wait((reading, began), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    began.cancel()
            async with asyncio.timeout(FIRST_MESSAGE_SECONDS):
                return await reading
        except TimeoutError:
            return None
        finally:
            reading.cancel()

    async def _refuse_drained(self, opening, context) -> None:
        """End a stream that a drain caught before anything of it was answered with
        UNAVAILABLE and, as the trailer, the state its first message brought (empty for a
        new sequence): the client resends it all elsewhere, unchanged."""
        await context.abort(DRAINED.code, DRAIN_RESUME_MESSAGE,
                            trailing_metadata=((STATE_TRAILER, opening.resume_state),))

    async def _abort_drained(self, context, stream: _Stream) -> None:
        """End a drained stream with UNAVAILABLE and, when its sequence is still open and
        idle, its snapshot in the trailing metadata."""
        blob = None
        if stream.engine is not None and not stream.ended:
            try:
                blob, _ = await stream.engine.export_state(stream.key)
            except ServingError:
                blob = None
        if blob is None:
            await context.abort(DRAINED.code, DRAIN_MESSAGE)
        await context.abort(DRAINED.code, DRAIN_RESUME_MESSAGE,
                            trailing_metadata=((STATE_TRAILER, blob),))

    async def _submit(self, request, stream: _Stream):
        """One chunk -> ((first, reset, end, resumed counts), its prediction future)."""
        text = decode(request.text, "text")
        if stream.ended:
            raise FailedPrecondition("a chunk arrived after the chunk marked end; the "
                                     "sequence is finished, open a new stream")
        first = stream.engine is None
        resume = bytes(request.resume_state)
        if resume and not first:
            raise InvalidArgument("resume_state is only allowed on the first message of a "
                                  "stream; open a new stream to resume another sequence")
        if first and resume:
            return await self._resume(request, stream, text, resume)
        if first:
            stream.engine = self._engine(request, "stream")
            stream.key = stream.engine.new_sequence_id()
        elif request.model or request.version:
            engine = stream.engine
            model = decode(request.model, "model")
            view = self.registry.resolve(model) if model else None
            if ((model and (view is None or view.base != engine.name))
                    or decode(request.version, "version") not in ("", engine.version)):
                raise InvalidArgument("only the first message of a stream may choose the "
                                      "model; later messages must leave model and version "
                                      "empty (or repeat them)")
        reset = bool(request.reset) and not first
        future = stream.engine.submit_step(stream.key, text, start=first or reset,
                                           restart=reset, end=request.end, api="text",
                                           client=stream.client,
                                           export=bool(request.export_state))
        if request.end:
            stream.ended = True
        return (first, reset, bool(request.end), None), future

    async def _resume(self, request, stream: _Stream, text: str, blob: bytes):
        """First message with resume_state: open the stream's sequence from the snapshot,
        then run ``text`` (if any) on it."""
        snapshot = self.registry.snapshots.decode(blob)
        blank = not text or text.isspace()
        if blank and not request.end and snapshot.header.last is None:
            raise InvalidArgument("resume_state holds a sequence that has seen no text and "
                                  "this message has none either; send some text")
        engine = self._snapshot_engine(request, snapshot)
        key = engine.new_sequence_id()
        stream.engine, stream.key = engine, key    # set first: a cancel mid-import ends it
        state = await engine.import_state(key, snapshot, client=stream.client)
        if request.end:
            stream.ended = True
        if blank and not request.end:      # answer with the restored running prediction
            future = asyncio.get_running_loop().create_future()
            last = state.last
            exported = (await engine.export_state(key))[0] if request.export_state else None
            future.set_result(Prediction(last.label, last.probabilities, last.logits, 0,
                                         last.label_index, exported))
            # the same running prediction again: its chunk_index is the snapshot's last
            return (True, False, False, (state.chunks - 1, state.tokens)), future
        future = engine.submit_step(key, text, start=False, end=request.end, api="text",
                                    client=stream.client, export=bool(request.export_state))
        return (True, False, bool(request.end), (state.chunks, state.tokens)), future


class _Stream:
    __slots__ = ("client", "ended", "engine", "key")

    def __init__(self, client: str) -> None:
        self.client = client
        self.engine = None
        self.key = None
        self.ended = False


async def _after(opening, requests: AsyncIterator) -> AsyncIterator:
    """``opening`` (a stream's first message, already read), then the rest of the stream."""
    yield opening
    async for request in requests:
        yield request


def _prediction(prediction: Prediction) -> pb.Prediction:
    return pb.Prediction(label=prediction.label, label_index=prediction.label_index,
                         probabilities=prediction.probabilities.tolist(),
                         logits=prediction.logits.tolist(), tokens=prediction.tokens)


def _target(request, snapshot) -> tuple[str, str]:
    """Model and version a snapshot goes to: the request's, else the snapshot's own."""
    name = decode(request.model, "model")
    version = decode(request.version, "version")
    if not name:
        return snapshot.header.model, version or snapshot.header.version
    return name, version


def _sequence_key(request) -> int | str:
    """The v2 sequence id a SequenceRef names (INVALID_ARGUMENT when unset or empty)."""
    which = request.sequence.WhichOneof("id")
    key = None
    if which == "sequence_id":
        key = sequence_id(int(request.sequence.sequence_id), "sequence.sequence_id")
    elif which == "sequence_name":
        key = sequence_id(decode(request.sequence.sequence_name, "sequence.sequence_name"),
                          "sequence.sequence_name")
    if key is not None:
        return key
    raise InvalidArgument("name the sequence: set sequence.sequence_id (a positive integer) "
                          "or sequence.sequence_name (a non-empty string), as in the v2 "
                          "sequence_id parameter")


def add_to_server(servicer: SentimentServicer, server: aio.Server) -> None:
    """Register ``servicer``; requests are parsed in the handler through the UTF-8-tolerant
    mirrors (malformed bytes -> INVALID_ARGUMENT, see server/guarded.py)."""
    server.add_generic_rpc_handlers((generic_handler(
        SERVICE_DESCRIPTOR, servicer,
        parser_for=lambda method: request_class(method.input_type.name).FromString,
        serializer_for=lambda method: getattr(pb, method.output_type.name).SerializeToString),))
