"""Reading request fields: UTF-8 text and v2 sequence ids (both APIs), and the text API's
request classes that accept any bytes where the public API says ``string``.

proto3 ``string`` fields must hold UTF-8. Python's protobuf rejects invalid UTF-8 while
parsing, and a request that fails to deserialize becomes INTERNAL in gRPC -- the wrong answer
for a client mistake. ``string`` and ``bytes`` share one wire encoding, so the server parses
requests with mirror classes whose top-level ``string`` fields are ``bytes`` (built at import
from the public descriptors, in a private descriptor pool) and decodes the text itself,
answering INVALID_ARGUMENT that names the field and item.

Invariant: a mirror class parses exactly the bytes the public class serializes; clients and
reflection only ever see the public ``rnnserve.v1`` messages.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from rnnserve.protos import sentiment_pb2

from .errors import InvalidArgument


def _mirror(file_descriptor) -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    for message in proto.message_type:          # nested types (map entries) stay as they are
        for field in message.field:
            if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {message.name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{proto.package}.{message.name}"))
        for message in proto.message_type}


_MIRRORS = _mirror(sentiment_pb2.DESCRIPTOR)


def request_class(name: str) -> type:
    """The bytes-tolerant parser class for public message ``rnnserve.v1.<name>``."""
    return _MIRRORS[name]


def decode(value: bytes, field: str) -> str:
    """UTF-8 text of one ``string`` field, or INVALID_ARGUMENT naming the field."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{field} is not valid UTF-8 (byte {exc.start}); send "
                              "UTF-8 text") from None


def sequence_id(value: int | str, field: str) -> int | str | None:
    """A KServe v2 sequence id as both APIs accept it: a positive integer or a non-empty
    string; None when unset (0 or ""); INVALID_ARGUMENT for a negative integer."""
    if value in (0, ""):
        return None
    if isinstance(value, int) and value < 0:
        raise InvalidArgument(f"{field} must be a positive integer or a non-empty string, "
                              f"got {value}")
    return value


def decode_all(values, field: str) -> list[str]:
    """UTF-8 texts of a repeated ``string`` field; the error names the bad item."""
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        for index, value in enumerate(values):
            decode(value, f"{field}[{index}]")
        raise
