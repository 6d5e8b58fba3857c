"""The ``rnnserve.v1.Sentiment`` servicer (protos/rnnserve/v1/sentiment.proto).

Invariants:
- Every client mistake is answered with the status of its ServingError and a message saying
  what to fix; nothing but ServingError is mapped to a non-INTERNAL status.
- One StreamClassify call is one sequence (server-generated id). Chunks are submitted as
  they are read (pipelining), at most ``max_pending_chunks`` ahead of the responses (reading
  pauses beyond that: HTTP/2 flow control pushes back on the client), and answered in order.
- However a stream ends (end flag, half-close, error, client cancel, shutdown), its
  sequence is ended and its state freed; responses for chunks read before an error or a
  shutdown are sent before the error status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from grpc import aio
from rnnserve.protos import sentiment_pb2 as pb

from .encode import ResponseEncoder
from .errors import FailedPrecondition, Internal, InvalidArgument, ServingError, Unavailable
from .guarded import generic_handler
from .registry import ModelRegistry
from .settings import ServerSettings
from .wire import decode, decode_all, request_class

log = logging.getLogger("rnnserve.server.text_api")

SERVICE = "rnnserve.v1.Sentiment"

_EOF = object()


#: Methods whose handlers return responses already encoded (server/encode.py).
_PRE_ENCODED = frozenset({"Classify", "StreamClassify"})


def _passthrough(data: bytes) -> bytes:
    return data


class SentimentServicer:
    """Text-level API over the registry's engines."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._readers: set[asyncio.Task] = set()
        self._draining = False
        self._encoders: dict[str, ResponseEncoder] = {}

    def begin_drain(self) -> None:
        """Stop reading new chunks on open streams; they flush their answers and end with
        UNAVAILABLE (unary calls already accepted complete normally)."""
        self._draining = True
        for reader in list(self._readers):
            reader.cancel()

    # -- unary --------------------------------------------------------------------------

    async def Classify(self, request, context: aio.ServicerContext) -> bytes:
        try:
            engine = self.registry.get(decode(request.model, "model"),
                                       decode(request.version, "version"))
            predictions = await engine.classify(decode_all(request.texts, "texts"), api="text")
        except ServingError as error:
            await context.abort(error.code, error.message)
        return self._encoder(engine).classify(predictions)

    def _encoder(self, engine) -> ResponseEncoder:
        encoder = self._encoders.get(engine.key)
        if encoder is None:
            encoder = self._encoders[engine.key] = ResponseEncoder(engine.name, engine.version,
                                                                   engine.labels)
        return encoder

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse(default_model=self.registry.default_model)
        for engine in self.registry.engines():
            response.models.add(name=engine.name, version=engine.version, ready=engine.ready,
                                latest=engine.version == self.registry.latest(engine.name))
        return response

    async def GetModelMetadata(self, request, context) -> pb.ModelMetadata:
        try:
            name = decode(request.model, "model")
            engine = self.registry.get(name, decode(request.version, "version"))
        except ServingError as error:
            await context.abort(error.code, error.message)
        info = engine.describe()
        return pb.ModelMetadata(versions=self.registry.versions(engine.name), **info)

    # -- streaming ----------------------------------------------------------------------

    async def StreamClassify(self, requests: AsyncIterator, context: aio.ServicerContext):
        outbox: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(self.settings.max_pending_chunks)
        stream = _Stream()
        reader = asyncio.get_running_loop().create_task(
            self._read(requests, outbox, window, stream))
        self._readers.add(reader)
        if self._draining:
            reader.cancel()
        chunk_index = 0
        total_tokens = 0
        encoder = None
        sequence_id = ""
        why = "cancelled"
        try:
            while True:
                entry = await outbox.get()
                if entry is _EOF:
                    why = "ended"
                    return
                if isinstance(entry, ServingError):
                    await context.abort(entry.code, entry.message)
                future, first, reset, end = entry
                try:
                    prediction = await future
                except ServingError as error:
                    await context.abort(error.code, error.message)
                window.release()
                if reset:
                    chunk_index = total_tokens = 0
                if encoder is None:
                    encoder = self._encoder(stream.engine)
                    sequence_id = str(stream.key)
                chunk_index += 1
                total_tokens += prediction.tokens
                yield encoder.stream(prediction, chunk_index=chunk_index,
                                     total_tokens=total_tokens, sequence_id=sequence_id,
                                     end=end, header=first or reset)
        finally:
            reader.cancel()
            self._readers.discard(reader)
            if stream.engine is not None:
                stream.engine.end_sequence(stream.key, why=why)

    async def _read(self, requests: AsyncIterator, outbox: asyncio.Queue,
                    window: asyncio.Semaphore, stream: _Stream) -> None:
        """Submit chunks as they arrive; every outcome goes through ``outbox`` in order."""
        try:
            async for request in requests:
                await window.acquire()
                try:
                    outbox.put_nowait(self._submit(request, stream))
                except ServingError as error:
                    outbox.put_nowait(error)
                    return
                except Exception as exc:  # a bug: answer INTERNAL instead of hanging
                    log.exception("stream_submit_failed")
                    outbox.put_nowait(Internal(f"{type(exc).__name__} while reading the "
                                               "stream"))
                    return
            outbox.put_nowait(_EOF)
        except asyncio.CancelledError:
            if self._draining:
                outbox.put_nowait(Unavailable(
                    "the server is shutting down; chunks answered so far are final, reopen "
                    "the stream on another replica (the sequence state is not kept)"))
            raise

    def _submit(self, request, stream: _Stream):
        text = decode(request.text, "text")
        if stream.ended:
            raise FailedPrecondition("a chunk arrived after the chunk marked end; the "
                                     "sequence is finished, open a new stream")
        first = stream.engine is None
        if first:
            stream.engine = self.registry.get(decode(request.model, "model"),
                                              decode(request.version, "version"))
            stream.key = stream.engine.new_sequence_id()
        elif request.model or request.version:
            engine = stream.engine
            if (decode(request.model, "model") not in ("", engine.name)
                    or decode(request.version, "version") not in ("", engine.version)):
                raise InvalidArgument("only the first message of a stream may choose the "
                                      "model; later messages must leave model and version "
                                      "empty (or repeat them)")
        reset = bool(request.reset) and not first
        future = stream.engine.submit_step(stream.key, text, start=first or reset,
                                           restart=reset, end=request.end, api="text")
        if request.end:
            stream.ended = True
        return future, first, reset, bool(request.end)


class _Stream:
    __slots__ = ("ended", "engine", "key")

    def __init__(self) -> None:
        self.engine = None
        self.key = None
        self.ended = False


def add_to_server(servicer: SentimentServicer, server: aio.Server) -> None:
    """Register ``servicer``; requests are parsed in the handler through the UTF-8-tolerant
    mirrors (malformed bytes -> INVALID_ARGUMENT, see server/guarded.py)."""
    service = pb.DESCRIPTOR.services_by_name["Sentiment"]
    server.add_generic_rpc_handlers((generic_handler(
        service, servicer,
        parser_for=lambda method: request_class(method.input_type.name).FromString,
        serializer_for=lambda method: _passthrough if method.name in _PRE_ENCODED
        else getattr(pb, method.output_type.name).SerializeToString),))
