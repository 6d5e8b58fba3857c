"""Errors the serving path raises, each bound to one gRPC status code.

Invariant: every failure a client can cause or observe is a :class:`ServingError` whose
``message`` says what went wrong and what to change; servicers map it to a status with
:func:`status_of` and never leak a Python traceback. docs/errors.md lists when each is used.
"""

from __future__ import annotations

import asyncio

import grpc


class ServingError(Exception):
    """Base class; ``code`` is the gRPC status a servicer answers with."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(ServingError):
    code = grpc.StatusCode.ABORTED


class Internal(ServingError):
    code = grpc.StatusCode.INTERNAL


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a call that raised ``exc`` reports."""
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL
