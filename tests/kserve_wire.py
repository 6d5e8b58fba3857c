"""KServe v2 request building blocks shared by the KServe and fault suites."""

from __future__ import annotations

import struct


def raw_bytes(items: list[bytes]) -> bytes:
    """KServe BYTES wire format: per element a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def set_parameter(parameter, value) -> None:
    """An InferParameter from a Python value (bool, int, float, str; ('u', n) for uint64)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, tuple):
        parameter.uint64_param = value[1]
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value
