"""Sequence state snapshots: the opaque blob that moves an open sequence between replicas.

ExportSequence (and a stream's ``export_state`` or drain trailer) turns a sequence's carried
state into bytes; ImportSequence (or a stream's ``resume_state``) opens a sequence from them
on any replica serving the same model file. Clients treat the blob as opaque.

Layout of format 1 (integers big-endian)::

    magic    4 bytes   b"RNSQ"
    format   1 byte    1
    tag kind 1 byte    0 = SHA-256 digest, 1 = HMAC-SHA256 under a configured state key
    hlen     4 bytes   length of the header
    header   hlen      UTF-8 JSON: model, version, model fingerprint, state names and
                       shapes, tokens/chunks so far, the last prediction, creation time
    states   ...       the state tensors, float32 little-endian, in header order
    tag      32 bytes  digest or HMAC of every byte before it

Invariants:
- ``decode`` checks the length, magic, format and tag before it parses a single byte of the
  header, so corrupted or (with a key) forged blobs are refused without being interpreted.
- A decoded snapshot's tensors have exactly the shapes its header declares and hold only
  finite values; its last prediction (if any) is finite and label-sized.
- With state keys configured, only HMAC-tagged blobs are accepted (a plain digest proves
  nothing about who made it); the first key signs, every key verifies (rotation: new,old).
- Every refusal is a ServingError saying what is wrong: a damaged, unknown or unsigned blob
  is INVALID_ARGUMENT; a well-formed blob this server cannot verify is FAILED_PRECONDITION.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import FailedPrecondition, InvalidArgument

MAGIC = b"RNSQ"
FORMAT = 1
SUPPORTED_FORMATS = (FORMAT,)
TAG_DIGEST = 0
TAG_HMAC = 1
TAG_BYTES = 32
_PREFIX = struct.Struct(">4sBBI")
#: Headers are small (names, counts, one prediction); anything larger is not ours.
MAX_HEADER_BYTES = 64 * 1024
#: Shortest accepted state key: it is the whole secret.
MIN_KEY_LENGTH = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StateSpec(_Strict):
    name: str
    shape: tuple[int, int]


class LastPrediction(_Strict):
    label_index: int = Field(ge=0)
    logits: list[float]
    probabilities: list[float]


class SnapshotHeader(_Strict):
    """What a snapshot says about itself (validated after the tag checks out)."""

    model: str
    version: str
    #: SHA-256 of the model.onnx the state was computed with.
    fingerprint: str
    cell: str
    states: list[StateSpec]
    tokens: int = Field(ge=0)
    chunks: int = Field(ge=0)
    last: LastPrediction | None = None
    created_unix: float


@dataclass(frozen=True)
class Snapshot:
    header: SnapshotHeader
    states: tuple[np.ndarray, ...]


class SnapshotCodec:
    """Encodes and checks snapshots with this server's state keys (none: digest only)."""

    def __init__(self, keys: list[bytes] | None = None) -> None:
        self.keys = list(keys or [])      # checked by load_state_keys

    @property
    def signed(self) -> bool:
        return bool(self.keys)

    def encode(self, header: SnapshotHeader, states: tuple[np.ndarray, ...]) -> bytes:
        head = header.model_dump_json().encode("utf-8")
        kind = TAG_HMAC if self.keys else TAG_DIGEST
        parts = [_PREFIX.pack(MAGIC, FORMAT, kind, len(head)), head]
        parts.extend(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in states)
        body = b"".join(parts)
        return body + self._tag(kind, body, self.keys[0] if self.keys else b"")

    def decode(self, blob: bytes) -> Snapshot:
        """The snapshot in ``blob``; InvalidArgument / FailedPrecondition when refused."""
        if len(blob) < _PREFIX.size + TAG_BYTES:
            raise InvalidArgument(f"sequence state is {len(blob)} bytes, too short to be a "
                                  "snapshot; pass the bytes ExportSequence returned, unchanged")
        magic, fmt, kind, hlen = _PREFIX.unpack_from(blob)
        if magic != MAGIC:
            raise InvalidArgument("sequence state is not an rnnserve snapshot (bad magic); "
                                  "pass the bytes ExportSequence returned, unchanged")
        if fmt not in SUPPORTED_FORMATS:
            raise InvalidArgument(f"sequence state has snapshot format {fmt}; this server "
                                  f"reads format {', '.join(map(str, SUPPORTED_FORMATS))}")
        body, tag = blob[:-TAG_BYTES], blob[-TAG_BYTES:]
        self._verify(kind, body, tag)
        if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(body):
            raise InvalidArgument("sequence state is damaged (header length out of range)")
        try:
            header = SnapshotHeader.model_validate_json(body[_PREFIX.size:_PREFIX.size + hlen])
        except ValidationError as exc:
            raise InvalidArgument(f"sequence state has an invalid header: "
                                  f"{_describe(exc)}") from None
        return Snapshot(header, _states(header, body[_PREFIX.size + hlen:]))

    def _verify(self, kind: int, body: bytes, tag: bytes) -> None:
        if kind == TAG_DIGEST:
            if self.keys:
                raise InvalidArgument("sequence state is not signed, and this server only "
                                      "accepts snapshots signed with its state key")
            if not hmac.compare_digest(self._tag(TAG_DIGEST, body, b""), tag):
                raise InvalidArgument("sequence state is damaged (checksum mismatch)")
            return
        if kind != TAG_HMAC:
            raise InvalidArgument(f"sequence state has unknown integrity tag kind {kind}")
        if not self.keys:
            raise FailedPrecondition("sequence state is signed with a state key, but this "
                                     "server has none configured (set RNNSERVE_STATE_KEY or "
                                     "RNNSERVE_STATE_KEY_FILE like the exporting replica)")
        if not any(hmac.compare_digest(self._tag(TAG_HMAC, body, key), tag)
                   for key in self.keys):
            raise InvalidArgument("sequence state failed its integrity check (damaged, or "
                                  "signed with a key this server does not hold)")

    @staticmethod
    def _tag(kind: int, body: bytes, key: bytes) -> bytes:
        if kind == TAG_HMAC:
            return hmac.new(key, body, hashlib.sha256).digest()
        return hashlib.sha256(body).digest()


def _states(header: SnapshotHeader, payload: bytes) -> tuple[np.ndarray, ...]:
    sizes = [spec.shape[0] * spec.shape[1] for spec in header.states]
    if any(spec.shape[0] <= 0 or spec.shape[1] <= 0 for spec in header.states):
        raise InvalidArgument("sequence state declares an empty state tensor")
    if sum(sizes) * 4 != len(payload):
        raise InvalidArgument(f"sequence state is damaged: {len(payload)} bytes of state for "
                              f"{sum(sizes)} declared values")
    arrays = []
    offset = 0
    for spec, size in zip(header.states, sizes, strict=True):
        array = np.frombuffer(payload, dtype="<f4", count=size, offset=offset)
        offset += size * 4
        if not np.isfinite(array).all():
            raise InvalidArgument(f"sequence state tensor {spec.name!r} holds NaN or "
                                  "infinite values")
        arrays.append(array.reshape(spec.shape).astype(np.float32))
    last = header.last
    if last is not None and not (np.isfinite(last.logits).all()
                                 and np.isfinite(last.probabilities).all()):
        raise InvalidArgument("sequence state's last prediction holds NaN or infinite values")
    return tuple(arrays)


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "header"
    return f"{where}: {error.get('msg', 'invalid')}"[:200]


def model_fingerprint(path: Path) -> str:
    """SHA-256 of a model file: snapshots only resume on the exact graph that made them."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_keys(key: str | None, key_file: Path | None) -> list[bytes]:
    """State keys from a comma-separated value and/or a file (one per line, ``#`` comments);
    the first key signs. Raises ValueError naming the problem."""
    keys: list[str] = []
    if key:
        keys.extend(part.strip() for part in key.split(",") if part.strip())
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read state key file {key_file}: {exc.strerror}") from None
        keys.extend(line.strip() for line in lines
                    if line.strip() and not line.strip().startswith("#"))
        if not keys:
            raise ValueError(f"state key file {key_file} holds no key")
    short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ValueError(f"state keys must be at least {MIN_KEY_LENGTH} characters")
    return [k.encode("utf-8") for k in keys]
