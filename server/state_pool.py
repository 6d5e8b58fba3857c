"""The sequence-state pool: host numpy arrays, or ORT values on the serving device.

:class:`StatePool` is what ``SequenceStore.pool`` is. Read as a sequence it yields one
array-like per state tensor (``pool[k][slot]`` reads a slot's ``[L*D, H]`` state as a host
array, ``pool[k][slot] = value`` writes it), which is all the store, snapshot export and import
need, whatever the placement:

- host (the CPU path, unchanged): ``numpy`` arrays ``[capacity, L*D, H]`` (``np.zeros``, so
  the OS commits pages only for slots in use); the worker gathers and scatters with numpy.
- device (``place``, called by the first BatchExecutor of a model whose session decides it):
  one ORT value ``[capacity + 1, L*D, H]`` per state tensor on the session's device (CUDA, or
  CPU when a test drives the same code path); row ``capacity`` is all zeros and never
  written, so "start from zero state" is a gather of that row. Gather and scatter run on the
  device as two tiny ORT graphs over all state tensors at once (``Gather``; ``Gather`` +
  ``ScatterND`` whose output is bound to the pool value itself, so rows are updated in
  place): per step two small ORT calls, and only token ids, lengths, row indices and logits
  cross the host boundary.

Invariants: placement happens before any sequence is opened (BatchExecutors are built when
the engine starts) and copies whatever the host arrays hold; a slot is written by at most one
thread at a time (a sequence has at most one chunk running, and the event loop only touches
slots of idle sequences), so concurrent scatters touch disjoint rows; each ORT call of the
pool completes (ORT synchronises its stream at the end of a run) before the next one starts,
so the model session reads what the gather wrote.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .logs import log_event

if TYPE_CHECKING:
    from .runtime import OnnxModel

log = logging.getLogger("rnnserve.server.state_pool")


# -- a minimal ONNX encoder (the server does not depend on the onnx package) ----------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


FLOAT, INT64 = 1, 7


def _value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    tensor = _field(1, elem_type) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor))


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str,
          **ints: int) -> bytes:
    body = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
    body += _field(3, name) + _field(4, op)
    for key, value in ints.items():
        body += _field(5, _field(1, key) + _field(3, value) + _field(20, 2))  # INT attribute
    return body


def onnx_model(name: str, nodes: Sequence[bytes], inputs: Sequence[bytes],
               outputs: Sequence[bytes], opset: int = 17) -> bytes:
    """Serialized ModelProto (IR 8, default domain at ``opset``)."""
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, name)
    graph += b"".join(_field(11, i) for i in inputs) + b"".join(_field(12, o) for o in outputs)
    return (_field(1, 8) + _field(2, "rnnserve") + _field(7, graph)
            + _field(8, _field(1, "") + _field(2, opset)))


def gather_graph(rows: int, hidden: int, count: int = 1) -> bytes:
    """``out{k}[K, L, H] = src{k}[rows]`` for k < ``count``: ``src{k}`` float [S, L, H],
    ``rows`` int64 [K] (one call gathers every state tensor of a model)."""
    return onnx_model(
        "rnnserve_state_gather",
        [_node("Gather", [f"src{k}", "rows"], [f"out{k}"], f"gather{k}", axis=0)
         for k in range(count)],
        [*(_value_info(f"src{k}", FLOAT, ["S", rows, hidden]) for k in range(count)),
         _value_info("rows", INT64, ["K"])],
        [_value_info(f"out{k}", FLOAT, ["K", rows, hidden]) for k in range(count)])


def scatter_graph(rows: int, hidden: int, count: int = 1) -> bytes:
    """``dst_out{k}`` = ``dst{k}`` with ``dst{k}[slots[i, 0]] = src{k}[rows[i]]`` for
    k < ``count``: ``dst{k}`` float [S, L, H], ``slots`` int64 [K, 1], ``src{k}`` float
    [B, L, H], ``rows`` int64 [K]. Bound with ``dst_out{k}`` on ``dst{k}``'s memory the
    update is in place (ScatterND copies only when they differ)."""
    nodes = []
    for k in range(count):
        nodes.append(_node("Gather", [f"src{k}", "rows"], [f"picked{k}"], f"pick{k}", axis=0))
        nodes.append(_node("ScatterND", [f"dst{k}", "slots", f"picked{k}"], [f"dst_out{k}"],
                           f"scatter{k}"))
    return onnx_model(
        "rnnserve_state_scatter", nodes,
        [*(_value_info(f"dst{k}", FLOAT, ["S", rows, hidden]) for k in range(count)),
         _value_info("slots", INT64, ["K", 1]),
         *(_value_info(f"src{k}", FLOAT, ["B", rows, hidden]) for k in range(count)),
         _value_info("rows", INT64, ["K"])],
        [_value_info(f"dst_out{k}", FLOAT, ["S", rows, hidden]) for k in range(count)])


# -- device tensors ---------------------------------------------------------------------------

class DeviceTensor:
    """A float32 ``[rows, L*D, H]`` buffer on one ORT device; binds any row prefix."""

    __slots__ = ("device", "device_id", "shape", "value")

    def __init__(self, shape: tuple[int, int, int], device: str, device_id: int,
                 initial: np.ndarray | None = None) -> None:
        self.shape = shape
        self.device = device
        self.device_id = device_id
        self.value = ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shape, np.float32) if initial is None else
            np.ascontiguousarray(initial, dtype=np.float32), device, device_id)

    def _shape(self, rows: int | None) -> tuple[int, int, int]:
        if rows is None:
            return self.shape
        if not 0 < rows <= self.shape[0]:
            raise ValueError(f"cannot bind {rows} rows of a {self.shape[0]}-row device tensor")
        return (rows, *self.shape[1:])

    def bind_input(self, binding, name: str, rows: int | None = None) -> None:
        binding.bind_input(name, self.device, self.device_id, np.float32, self._shape(rows),
                           self.value.data_ptr())

    def bind_output(self, binding, name: str, rows: int | None = None) -> None:
        binding.bind_output(name, self.device, self.device_id, np.float32, self._shape(rows),
                            self.value.data_ptr())


class DevicePool:
    """Pool values on one device plus the gather/scatter sessions that work on them (one
    pair for all state tensors at once, the worker's path; one for a single tensor, the
    per-slot path)."""

    def __init__(self, host: Sequence[np.ndarray], model: OnnxModel) -> None:
        from .runtime import open_session

        capacity, rows, hidden = host[0].shape
        self.capacity = capacity
        self.zero_row = capacity                      # row ``capacity``: always zeros
        self.provider = model.provider
        self.device = model.device_name
        self.device_id = model.device_id
        self.state_shape = (rows, hidden)
        self.tensors = tuple(
            DeviceTensor((capacity + 1, rows, hidden), self.device, self.device_id,
                         np.concatenate([array, np.zeros((1, rows, hidden), np.float32)]))
            for array in host)
        self._sessions = {}
        for count in sorted({1, len(host)}):
            self._sessions[count] = tuple(
                open_session(graph(rows, hidden, count), model.settings, model.provider)
                for graph in (gather_graph, scatter_graph))
        # warm-up: every graph once (the zero row gathered, and rewritten with zeros)
        zero = np.array([self.zero_row], np.int64)
        for tensors in ({len(host): self.tensors, 1: self.tensors[:1]}).values():
            self.gather_to_host(tensors, zero)
            self.scatter(tensors, zero, [np.zeros((1, rows, hidden), np.float32)
                                         for _ in tensors], np.zeros(1, np.int64))

    # the hot path (worker threads) --------------------------------------------------------

    def gather(self, sources: Sequence[DeviceTensor], rows: np.ndarray,
               targets: Sequence[DeviceTensor]) -> None:
        """``targets[k][:K] = sources[k][rows]`` on the device (``rows`` int64 [K], host)."""
        session = self._sessions[len(sources)][0]
        binding = session.io_binding()
        for k, (source, target) in enumerate(zip(sources, targets, strict=True)):
            source.bind_input(binding, f"src{k}")
            target.bind_output(binding, f"out{k}", len(rows))
        binding.bind_cpu_input("rows", rows)
        session.run_with_iobinding(binding)

    def gather_to_host(self, sources: Sequence[DeviceTensor],
                       rows: np.ndarray) -> list[np.ndarray]:
        """``sources[k][rows]`` as host arrays [K, L*D, H]."""
        session = self._sessions[len(sources)][0]
        binding = session.io_binding()
        for k, source in enumerate(sources):
            source.bind_input(binding, f"src{k}")
            binding.bind_output(f"out{k}", "cpu")
        binding.bind_cpu_input("rows", rows)
        session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()]

    def scatter(self, targets: Sequence[DeviceTensor], slots: np.ndarray,
                sources: Sequence[DeviceTensor | np.ndarray], rows: np.ndarray,
                target_rows: int | None = None) -> None:
        """``targets[k][slots[i]] = sources[k][rows[i]]`` in place on the device; a source is
        a device tensor (its first ``max(rows)+1`` rows are read) or a host array."""
        session = self._sessions[len(targets)][1]
        binding = session.io_binding()
        for k, (target, source) in enumerate(zip(targets, sources, strict=True)):
            target.bind_input(binding, f"dst{k}", target_rows)
            target.bind_output(binding, f"dst_out{k}", target_rows)
            if isinstance(source, DeviceTensor):
                source.bind_input(binding, f"src{k}", int(rows.max()) + 1)
            else:
                binding.bind_cpu_input(f"src{k}", np.ascontiguousarray(source, np.float32))
        binding.bind_cpu_input("slots", slots.reshape(-1, 1))
        binding.bind_cpu_input("rows", rows)
        session.run_with_iobinding(binding)

    # single slots (event loop: open, snapshot export and import) -------------------------

    def read(self, index: int, slot: int) -> np.ndarray:
        return self.gather_to_host(self.tensors[index:index + 1],
                                   np.array([slot], np.int64))[0][0]

    def write(self, index: int, slot: int, value) -> None:
        array = np.broadcast_to(np.asarray(value, np.float32), self.state_shape)[None]
        self.scatter(self.tensors[index:index + 1], np.array([slot], np.int64), [array],
                     np.zeros(1, np.int64))


class _DeviceSlots:
    """``pool[k]`` of a device pool: one state tensor's slots, read and written per slot."""

    __slots__ = ("index", "pool")

    def __init__(self, pool: DevicePool, index: int) -> None:
        self.pool = pool
        self.index = index

    def __getitem__(self, slot: int) -> np.ndarray:
        return self.pool.read(self.index, int(slot))

    def __setitem__(self, slot: int, value) -> None:
        self.pool.write(self.index, int(slot), value)


class StatePool:
    """One slot array per state tensor; host numpy until :meth:`place` moves it."""

    def __init__(self, count: int, capacity: int, state_shape: tuple[int, int]) -> None:
        self.host: tuple[np.ndarray, ...] | None = tuple(
            np.zeros((capacity, *state_shape), dtype=np.float32) for _ in range(count))
        self.count = count
        self.device: DevicePool | None = None
        self.placed = ""              # "", "host" or the provider the device pool is on
        self._slots: tuple = self.host
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator:
        return iter(self._slots)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self._slots[index]

    def place(self, model: OnnxModel, mode: str) -> DevicePool | None:
        """Decide, once (the first executor of the model decides), where the pool lives:
        ``mode`` is the ``state_pool`` setting (host, device, or auto = device when
        ``model`` runs on CUDA). Moves the pool to ``model``'s device when that is the
        answer. Returns the device pool, or None for host. A device pool that cannot be
        made stays on the host with a warning under auto, and stops start-up under device."""
        from .runtime import CUDA, RuntimeUnavailable

        with self._lock:
            if self.placed:
                if self.device is not None and self.device.provider != model.provider:
                    raise RuntimeError(f"the state pool is on {self.device.provider}, but an "
                                       f"instance of the model runs on {model.provider}")
                return self.device
            if mode == "device" or (mode == "auto" and model.provider == CUDA):
                try:
                    self.device = DevicePool(self.host, model)
                except Exception as exc:  # device memory, sessions: any failure, say why
                    if mode == "device":
                        raise RuntimeUnavailable(f"state_pool=device: the state pool cannot "
                                                 f"be placed on {model.provider}: {exc}") from exc
                    log_event(log, "state_pool_on_host", level=logging.WARNING,
                              provider=model.provider, reason=f"{type(exc).__name__}: {exc}"[:500])
            if self.device is None:
                self.placed = "host"
                return None
            self.placed = model.provider
            self._slots = tuple(_DeviceSlots(self.device, k) for k in range(self.count))
            self.host = None          # the device copy is the state from now on
            return self.device
