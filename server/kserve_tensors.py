"""KServe v2 tensor codec: BYTES wire encoding and typed/raw input contents.

Protocol facts (KServe v2 gRPC as Triton implements it):

- A BYTES tensor in ``raw_input_contents`` / ``raw_output_contents`` is the concatenation,
  in row-major order, of one element per entry: a 4-byte little-endian unsigned length
  followed by that many bytes.
- A request either carries every input in ``raw_input_contents`` (one entry per input, same
  order as ``inputs``) or none; an input whose data is raw must leave ``contents`` empty.
- Typed contents of a BYTES tensor live in ``contents.bytes_contents``, one entry per element.

Invariants of this module: nothing here touches the model or gRPC context; every malformed
payload raises :class:`errors.InvalidArgument` with a message naming the input
and model, so nothing malformed reaches the engine.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import InvalidArgument

_LENGTH = struct.Struct("<I")

def decode_bytes_elements(buffer: bytes, expected: int, *, what: str,
                          prefix: str = "") -> list[bytes]:
    """Split a raw BYTES tensor into exactly ``expected`` elements.

    ``what`` names the tensor in error messages (e.g. "inference input 'TEXT' for model 'm'");
    ``prefix`` starts every message (e.g. "[request id: 7] ").
    """
    view = memoryview(buffer)
    size = len(view)
    items: list[bytes] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise InvalidArgument(f"{prefix}{what}: truncated BYTES element length at byte offset {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidArgument(
                f"{prefix}{what}: element byte size indicates more data than available "
                f"(element {len(items)} declares {length} bytes, {size - offset} remain)"
            )
        items.append(bytes(view[offset:offset + length]))
        offset += length
        if len(items) > expected:
            break
    if len(items) != expected:
        raise InvalidArgument(
            f"{prefix}unexpected number of string elements {_count_text(len(items), expected)} "
            f"for {what}, expecting {expected}"
        )
    return items


def _count_text(found: int, expected: int) -> str:
    return f"more than {expected}" if found > expected else str(found)


def encode_bytes_elements(items) -> bytes:
    """Raw BYTES encoding of an iterable of ``bytes`` (length-prefixed, little-endian)."""
    parts = []
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def typed_contents_fields(contents) -> list[str]:
    """Names of the ``InferTensorContents`` fields that hold any data."""
    return [field.name for field, value in contents.ListFields() if len(value)]


def fp32_raw(array: np.ndarray) -> bytes:
    """Little-endian FP32 raw bytes of ``array`` (row-major)."""
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def format_shape(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"
