"""``inference.GRPCInferenceService`` (KServe v2 as Triton extends it) on rnnserve's engines.

``register(server, registry, settings, drain)`` adds the servicer to the grpc.aio server that also
serves the text API, on the same port. Every inference goes through the model's
``ModelEngine`` (``classify`` for ``<model>``, ``stream_step`` for ``<model>-stream``; see
kserve_models), so KServe and text-API traffic share one batcher and one sequence store and
are counted once by the engine's telemetry.

Status mapping: ServingError subclasses → their code and message; unknown model or version →
NOT_FOUND ("Request for unknown model: 'x' is not found"); malformed requests →
INVALID_ARGUMENT before anything reaches the engine; anything unexpected → INTERNAL (logged);
RPCs rnnserve does not offer → UNIMPLEMENTED naming the RPC.

ModelStreamInfer: one bidirectional stream of independent requests, read by the shared
stream pump (server/streaming.py, unordered): requests start in arrival order, run
concurrently (so one stream's requests batch together, at most ``STREAM_WINDOW`` in
flight) and are answered as they complete; a failed request's message goes into
``error_message`` (with an infer_response carrying its id) and the stream stays open. Server
shutdown (the server's ``Drain``, shared with the text API): reading stops, answers to
requests already read are flushed, then the stream ends UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from importlib import metadata as importlib_metadata

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .errors import InvalidArgument, ServingError
from .guarded import generic_handler
from .kserve_infer import ParsedRequest, ServedShape, build_response, parse_request
from .kserve_models import full_shape, served_config, tensor_specs
from .kserve_registry import ServedModels, view_statistics
from .quota import ANONYMOUS, caller
from .streaming import DRAINED, Drain, StreamPump

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
SHUTDOWN_MESSAGE = ("the server is shutting down; requests sent after the last response were "
                    "not read, resend them to another instance")


def _server_version() -> str:
    try:
        return importlib_metadata.version("rnnserve")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 servicer; stateless apart from the models it looks up per call."""

    def __init__(self, registry, settings, drain: Drain) -> None:
        self._models = ServedModels(registry, settings)
        self._version = _server_version()
        self._drain = drain
        self._settings = settings

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
        """Independent requests on one stream (module doc)."""
        async def submit(request):
            return None, self._stream_one(request, context)

        self._drain.track(context)
        pump = StreamPump(submit, window=STREAM_WINDOW, drain=self._drain, ordered=False)
        try:
            async for _, item in pump.outcomes(request_iterator):
                yield item
        except ServingError as error:
            if error is DRAINED:
                await context.abort(error.code, SHUTDOWN_MESSAGE)
            await context.abort(error.code, error.message)

    async def _stream_one(self, request, context) -> service_pb2.ModelStreamInferResponse:
        """One stream request's answer; a failure is answered, never raised."""
        try:
            response = await self._infer(request, context, kind="stream")
            return service_pb2.ModelStreamInferResponse(infer_response=response)
        except ServingError as exc:
            return _stream_error(request, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed request must not end the stream
            log.exception("kserve stream request failed")
            return _stream_error(request, f"internal error: {type(exc).__name__}")

    async def _infer(self, request, context=None, *, kind: str = "unary"
                     ) -> service_pb2.ModelInferResponse:
        """One request; ``context`` (None in-process) names who a sequence step charges;
        ``kind``: the call's, for a request no model takes (ModelStreamInfer: "stream")."""
        started = time.perf_counter()
        view, engine = self._models.lookup(request.model_name, request.model_version,
                                           request=(API, kind))
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
        client = ANONYMOUS if context is None else caller(context, self._settings)
        control = parsed.sequence
        engine = self._models.sequence_engine(view, version, control.sequence_id,
                                              control.start)
        prediction = await engine.stream_step(
            control.sequence_id, parsed.texts[0], start=control.start, end=control.end,
            api=API, restart=control.start, client=client)
        if not prediction.version:        # in-process: the engine the step went to
            prediction = dataclasses.replace(prediction, version=str(engine.version))
        return [prediction]


def _stream_error(request, message: str) -> service_pb2.ModelStreamInferResponse:
    """Triton's stream error: the message, plus an infer_response naming the request."""
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id),
    )


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


SERVICE_DESCRIPTOR = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def register(server, registry, settings, drain: Drain) -> KServeServicer:
    """Add the KServe v2 servicer to ``server`` (a ``grpc.aio.Server``); return it."""
    servicer = KServeServicer(registry, settings, drain)
    server.add_generic_rpc_handlers((generic_handler(
        SERVICE_DESCRIPTOR, servicer,
        parser_for=lambda method: getattr(service_pb2, method.input_type.name).FromString,
        serializer_for=lambda method: getattr(
            service_pb2, method.output_type.name).SerializeToString),))
    return servicer


#: The full gRPC service name, for reflection and health.
SERVICE_NAME = SERVICE_DESCRIPTOR.full_name
