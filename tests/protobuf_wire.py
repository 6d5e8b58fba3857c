"""Protobuf wire-format pieces for tests that build messages by hand (malformed, or with
fields the schema does not know)."""

from __future__ import annotations


def field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
