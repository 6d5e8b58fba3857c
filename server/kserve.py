"""``inference.GRPCInferenceService`` (KServe v2 as Triton extends it) on rnnserve's engines.

``register(server, registry, settings)`` adds the servicer to the grpc.aio server that also
serves the text API, on the same port. Every inference goes through the model's
``ModelEngine`` (``classify`` for ``<model>``, ``stream_step`` for ``<model>-stream``; see
kserve_models), so KServe and text-API traffic share one batcher and one sequence store and
are counted once by the engine's telemetry.

Status mapping: ServingError subclasses → their code and message; unknown model or version →
NOT_FOUND ("Request for unknown model: 'x' is not found"); malformed requests →
INVALID_ARGUMENT before anything reaches the engine; anything unexpected → INTERNAL (logged);
RPCs rnnserve does not offer → UNIMPLEMENTED naming the RPC. ModelStreamInfer puts a failed
request's message into ``error_message`` and keeps the stream open (kserve_stream).

Server shutdown: the app calls ``begin_drain()`` on the servicer ``register`` returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from importlib import metadata as importlib_metadata

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .errors import InvalidArgument, ServingError
from .guarded import generic_handler
from .kserve_infer import ParsedRequest, ServedShape, build_response, parse_request
from .kserve_models import full_shape, served_config, tensor_specs
from .kserve_registry import ServedModels
from .kserve_stats import view_statistics
from .kserve_stream import StreamSession, serve_stream
from .quota import ANONYMOUS, client_of

log = logging.getLogger(__name__)

API = "kserve"
SERVER_NAME = "rnnserve"
#: Extensions (Triton's names) that this server implements in full.
EXTENSIONS = ("classification", "sequence", "model_configuration", "statistics", "parameters")
#: RPCs of the service that rnnserve answers with UNIMPLEMENTED.
UNIMPLEMENTED_RPCS = {
    "SystemSharedMemoryStatus": "shared-memory tensors are not supported",
    "SystemSharedMemoryRegister": "shared-memory tensors are not supported",
    "SystemSharedMemoryUnregister": "shared-memory tensors are not supported",
    "CudaSharedMemoryStatus": "CUDA shared-memory tensors are not supported",
    "CudaSharedMemoryRegister": "CUDA shared-memory tensors are not supported",
    "CudaSharedMemoryUnregister": "CUDA shared-memory tensors are not supported",
    "TraceSetting": "tracing is not supported; use the Prometheus metrics and logs",
    "LogSettings": "log settings are fixed at start-up (RNNSERVE_LOG_LEVEL)",
}
#: Requests one ModelStreamInfer call may have in flight; reading pauses beyond it.
STREAM_WINDOW = 256


def _server_version() -> str:
    try:
        return importlib_metadata.version("rnnserve")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 servicer; stateless apart from the models it looks up per call."""

    def __init__(self, registry, settings=None) -> None:
        self._models = ServedModels(registry, settings)
        self._version = _server_version()
        self._readers: set[asyncio.Task] = set()
        self._draining = False
        self._settings_auth = bool(getattr(settings, "auth_enabled", False))

    # ------------------------------------------------------------------ health/metadata

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._models.server_ready())

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(
            ready=self._models.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request, context):
        try:
            view, engine = self._models.lookup(request.name, request.version)
            mbs = self._models.max_batch_size(engine)
            inputs, outputs = tensor_specs(len(engine.labels))
            return service_pb2.ModelMetadataResponse(
                name=view.name,
                versions=self._models.versions(view.base),
                platform=SERVER_NAME,
                inputs=[_tensor_metadata(spec, mbs) for spec in inputs],
                outputs=[_tensor_metadata(spec, mbs) for spec in outputs],
            )
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def ModelConfig(self, request, context):
        try:
            view, engine = self._models.lookup(request.name, request.version)
            config = served_config(
                view, self._models.repository_config(engine), len(engine.labels),
                **self._models.served_overrides(engine))
            return service_pb2.ModelConfigResponse(config=config)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def ModelStatistics(self, request, context):
        try:
            pairs = self._models.statistics_targets(request.name, request.version)
            return service_pb2.ModelStatisticsResponse(
                model_stats=[view_statistics(view, engine) for view, engine in pairs])
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def RepositoryModelLoad(self, request, context):
        """Triton's explicit load: (re)load the model from the repository, applying its
        version_policy; answers once the new versions are warm and READY. Only with
        ``--model-control explicit`` (else FAILED_PRECONDITION); config/file overrides are
        refused (INVALID_ARGUMENT): rnnserve serves only what the repository holds."""
        try:
            overrides = [key for key in request.parameters
                         if key == "config" or key.startswith("file:")]
            if overrides:
                raise InvalidArgument(f"RepositoryModelLoad parameters {overrides} are not "
                                      "supported: rnnserve loads models only as exported "
                                      "into the repository")
            await self._models.load(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def RepositoryModelUnload(self, request, context):
        """Triton's explicit unload: every version of the model leaves at once (no new
        sequences or stateless requests); open sequences finish on it for at most
        ``unload_wait_seconds``. ``unload_dependents`` has nothing to act on (no
        ensembles)."""
        try:
            await self._models.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def RepositoryIndex(self, request, context):
        models = [
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=name, version=version, state=state, reason=reason)
            for name, version, state, reason in self._models.index(ready=request.ready)
        ]
        return service_pb2.RepositoryIndexResponse(models=models)

    # ------------------------------------------------------------------------ inference

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("kserve ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error: {type(exc).__name__}")

    async def ModelStreamInfer(self, request_iterator, context):
        """Independent requests on one stream; see kserve_stream for the ordering rules."""
        session = StreamSession(functools.partial(self._infer, context=context), STREAM_WINDOW)
        async for item in serve_stream(session, request_iterator, context, self._readers,
                                       self._is_draining):
            yield item

    def begin_drain(self) -> None:
        """Server shutdown: open streams stop reading, flush their answers and end with
        UNAVAILABLE (unary calls already accepted complete normally)."""
        self._draining = True
        for reader in list(self._readers):
            reader.cancel()

    def _is_draining(self) -> bool:
        return self._draining

    async def _infer(self, request, context=None) -> service_pb2.ModelInferResponse:
        """One request; ``context`` (None in-process) names who a sequence step charges."""
        started = time.perf_counter()
        view, engine = self._models.lookup(request.model_name, request.model_version)
        served = ServedShape(view=view, max_batch_size=self._models.max_batch_size(engine),
                             num_labels=len(engine.labels), labels=tuple(engine.labels))
        try:
            parsed = parse_request(request, served)
        except ServingError as exc:
            self._models.record_rejected(engine, view=view, code=exc.code,
                                         seconds=time.perf_counter() - started)
            raise
        predictions = await self._run(engine, parsed, context, view, request.model_version)
        answered = predictions[0].version or str(engine.version)
        return build_response(request, served, answered, parsed.outputs, predictions)

    async def _run(self, engine, parsed: ParsedRequest, context, view, version: str):
        """Stateless rows go to ``classify``; a sequence step to ``stream_step``, where a
        start on an open id restarts it (Triton's behaviour for a repeated START). Only a
        sequence step works out its caller (per-client quota), so stateless calls skip it."""
        if parsed.sequence is None:
            return await engine.classify(parsed.texts, api=API)
        client = ANONYMOUS if context is None else client_of(context,
                                                             by_token=self._settings_auth)
        control = parsed.sequence
        engine = self._models.sequence_engine(view, version, control.sequence_id,
                                              control.start)
        prediction = await engine.stream_step(
            control.sequence_id, parsed.texts[0], start=control.start, end=control.end,
            api=API, restart=control.start, client=client)
        if not prediction.version:        # in-process: the engine the step went to
            prediction = dataclasses.replace(prediction, version=str(engine.version))
        return [prediction]


def _tensor_metadata(spec, max_batch_size: int):
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=full_shape(spec, max_batch_size))


def _unimplemented(rpc: str, reason: str):
    async def handler(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"{rpc} is not implemented by rnnserve: {reason}")

    handler.__name__ = rpc
    handler.__doc__ = f"UNIMPLEMENTED: {reason}."
    return handler


for _rpc, _reason in UNIMPLEMENTED_RPCS.items():
    setattr(KServeServicer, _rpc, _unimplemented(_rpc, _reason))


def register(server, registry, settings) -> KServeServicer:
    """Add the KServe v2 servicer to ``server`` (a ``grpc.aio.Server``); return it."""
    servicer = KServeServicer(registry, settings)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    server.add_generic_rpc_handlers((generic_handler(
        service, servicer,
        parser_for=lambda method: getattr(service_pb2, method.input_type.name).FromString,
        serializer_for=lambda method: getattr(
            service_pb2, method.output_type.name).SerializeToString),))
    return servicer


#: The full gRPC service name, for reflection and health.
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
