"""gRPC method handlers that parse their own request bytes.

grpc's ``request_deserializer`` hook turns a parse failure into UNKNOWN on unary calls and a
hung call on streams. These handlers receive the raw bytes instead and parse them in the
handler, so a malformed message (bad wire format, invalid UTF-8 in a string field) always
gets INVALID_ARGUMENT naming the method.

Invariants:
- a unary call with undecodable bytes never reaches the servicer;
- a server-streaming call with undecodable bytes never reaches the servicer either;
- on a bidirectional stream, an undecodable message ends the input there: everything
  accepted before it is answered as on a half-close, then the call ends INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

Parse = Callable[[bytes], object]
Serialize = Callable[[object], bytes]


def _malformed(method: str, exc: Exception) -> str:
    return (f"{method}: the request message could not be parsed ({type(exc).__name__}); "
            "send a valid protobuf message (string fields must be UTF-8)")


def _unary(method: str, behaviour, parse: Parse):
    async def handle(raw: bytes, context):
        try:
            request = parse(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError, UnicodeDecodeError, ...
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(method, exc))
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result

    return handle


def _unary_stream(method: str, behaviour, parse: Parse):
    async def handle(raw: bytes, context):
        try:
            request = parse(raw)
        except Exception as exc:  # noqa: BLE001 - see _unary
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(method, exc))
        result = behaviour(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                await context.write(response)
        else:
            await result            # a handler that writes with context.write itself

    return handle


def _bidi(method: str, behaviour, parse: Parse):
    async def handle(raw_requests, context):
        malformed: list[Exception] = []

        async def requests():
            async for raw in raw_requests:
                try:
                    request = parse(raw)
                except Exception as exc:  # noqa: BLE001 - see _unary
                    malformed.append(exc)
                    return
                yield request

        async for response in behaviour(requests(), context):
            yield response
        if malformed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                _malformed(method, malformed[0]))

    return handle


def generic_handler(service, servicer, parser_for: Callable[[object], Parse],
                    serializer_for: Callable[[object], Serialize]) -> grpc.GenericRpcHandler:
    """Handlers for every method of ``service`` (a ServiceDescriptor) on ``servicer``.

    ``parser_for(method)`` and ``serializer_for(method)`` give the request parser and the
    response serializer of one MethodDescriptor. Client-streaming methods are not supported.
    """
    handlers = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        parse, serialize = parser_for(method), serializer_for(method)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _bidi(method.full_name, behaviour, parse), response_serializer=serialize)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_stream(method.full_name, behaviour, parse), response_serializer=serialize)
        elif method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: client streaming is not wired")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.full_name, behaviour, parse), response_serializer=serialize)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
