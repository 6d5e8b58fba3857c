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
  device as two tiny ORT graphs (``Gather``; ``Gather`` + ``ScatterND`` whose output is bound
  to the pool value itself, so rows are updated in place): per step only token ids, lengths,
  row indices and logits cross the host boundary.

Invariants: placement happens before any sequence is opened (BatchExecutors are built when
the engine starts) and copies whatever the host arrays hold; a slot is written by at most one
thread at a time (a sequence has at most one chunk running, and the event loop only touches
slots of idle sequences), so concurrent scatters touch disjoint rows; each ORT call of the
pool completes (ORT synchronises its stream at the end of a run) before the next one starts,
so the model session reads what the gather wrote.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from .runtime import OnnxModel


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


def gather_graph(rows: int, hidden: int) -> bytes:
    """out[K, L, H] = src[rows]: ``src`` float [S, L, H], ``rows`` int64 [K]."""
    return onnx_model(
        "rnnserve_state_gather",
        [_node("Gather", ["src", "rows"], ["out"], "gather", axis=0)],
        [_value_info("src", FLOAT, ["S", rows, hidden]), _value_info("rows", INT64, ["K"])],
        [_value_info("out", FLOAT, ["K", rows, hidden])])


def scatter_graph(rows: int, hidden: int) -> bytes:
    """dst_out = dst with dst[slots[i, 0]] = src[rows[i]]: ``dst`` float [S, L, H], ``slots``
    int64 [K, 1], ``src`` float [B, L, H], ``rows`` int64 [K]. Bound with ``dst_out`` on
    ``dst``'s memory the update is in place (ScatterND copies only when they differ)."""
    return onnx_model(
        "rnnserve_state_scatter",
        [_node("Gather", ["src", "rows"], ["picked"], "pick", axis=0),
         _node("ScatterND", ["dst", "slots", "picked"], ["dst_out"], "scatter")],
        [_value_info("dst", FLOAT, ["S", rows, hidden]), _value_info("slots", INT64, ["K", 1]),
         _value_info("src", FLOAT, ["B", rows, hidden]), _value_info("rows", INT64, ["K"])],
        [_value_info("dst_out", FLOAT, ["S", rows, hidden])])


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

    def bind_input(self, binding, name: str, rows: int | None = None) -> None:
        shape = self.shape if rows is None else (rows, *self.shape[1:])
        binding.bind_input(name, self.device, self.device_id, np.float32, shape,
                           self.value.data_ptr())

    def bind_output(self, binding, name: str, rows: int | None = None) -> None:
        shape = self.shape if rows is None else (rows, *self.shape[1:])
        binding.bind_output(name, self.device, self.device_id, np.float32, shape,
                            self.value.data_ptr())


class DevicePool:
    """Pool values on one device plus the gather/scatter sessions that work on them."""

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
        self._gather = open_session(gather_graph(rows, hidden), model.settings, model.provider)
        self._scatter = open_session(scatter_graph(rows, hidden), model.settings,
                                     model.provider)
        # warm-up: both graphs once (the zero row gathered, and rewritten with zeros)
        zero = np.array([self.zero_row], np.int64)
        for tensor in self.tensors:
            self.gather_to_host(tensor, zero)
            self.scatter(tensor, zero, np.zeros((1, rows, hidden), np.float32),
                         np.zeros(1, np.int64))

    # the hot path (worker threads) --------------------------------------------------------

    def gather(self, source: DeviceTensor, rows: np.ndarray, target: DeviceTensor) -> None:
        """``target[:K] = source[rows]`` on the device (``rows`` int64 [K], host)."""
        binding = self._gather.io_binding()
        source.bind_input(binding, "src")
        binding.bind_cpu_input("rows", rows)
        target.bind_output(binding, "out", len(rows))
        self._gather.run_with_iobinding(binding)

    def gather_to_host(self, source: DeviceTensor, rows: np.ndarray) -> np.ndarray:
        """``source[rows]`` as a host array [K, L*D, H]."""
        binding = self._gather.io_binding()
        source.bind_input(binding, "src")
        binding.bind_cpu_input("rows", rows)
        binding.bind_output("out", "cpu")
        self._gather.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def scatter(self, target: DeviceTensor, slots: np.ndarray,
                source: DeviceTensor | np.ndarray, rows: np.ndarray,
                target_rows: int | None = None) -> None:
        """``target[slots[i]] = source[rows[i]]`` in place on the device; ``source`` is a
        device tensor (its first ``max(rows)+1`` rows are read) or a host array."""
        binding = self._scatter.io_binding()
        target.bind_input(binding, "dst", target_rows)
        target.bind_output(binding, "dst_out", target_rows)
        binding.bind_cpu_input("slots", slots.reshape(-1, 1))
        if isinstance(source, DeviceTensor):
            source.bind_input(binding, "src", int(rows.max()) + 1)
        else:
            binding.bind_cpu_input("src", np.ascontiguousarray(source, dtype=np.float32))
        binding.bind_cpu_input("rows", rows)
        self._scatter.run_with_iobinding(binding)

    # single slots (event loop: open, snapshot export and import) -------------------------

    def read(self, index: int, slot: int) -> np.ndarray:
        return self.gather_to_host(self.tensors[index], np.array([slot], np.int64))[0]

    def write(self, index: int, slot: int, value) -> None:
        array = np.broadcast_to(np.asarray(value, np.float32), self.state_shape)[None]
        self.scatter(self.tensors[index], np.array([slot], np.int64), array,
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
        """Decide where the pool lives for ``model``'s sessions (``mode`` is the
        ``state_pool`` setting: host, device, or auto = device on CUDA); moves it on the first
        call that says device. Returns the device pool, or None for host."""
        from .runtime import CUDA

        with self._lock:
            want = "host" if mode == "host" or (mode == "auto" and model.provider != CUDA) \
                else model.provider
            if self.placed and self.placed != want:
                raise RuntimeError(f"the state pool is placed for {self.placed}, but an "
                                   f"instance of the model wants {want}")
            self.placed = want
            if want == "host" or self.device is not None:
                return self.device
            self.device = DevicePool(self.host, model)
            self._slots = tuple(_DeviceSlots(self.device, k) for k in range(self.count))
            self.host = None          # the device copy is the state from now on
            return self.device
