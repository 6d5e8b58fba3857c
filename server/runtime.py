"""ONNX Runtime sessions: execution-provider choice, options, I/O binding, warm-up.

Invariants:
- ``select_provider`` decides CUDA vs CPU once per process and device, before any session
  exists, by probing the CUDA libraries with ``ctypes`` (never by letting ORT fail loudly).
  The decision and its reason are logged once, as one line.
- An :class:`OnnxModel` checks at load that the graph has exactly the I/O of
  docs/architecture.md §2, so ``run`` never meets a surprise.
- ``run`` is called by one thread at a time per OnnxModel (its instance worker); the CUDA
  path reuses preallocated device buffers and therefore relies on that.
- State and logits cross the graph boundary as float32 whatever the model's precision.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.repository import RepositoryMetadata

from .logs import log_event
from .settings import ServerSettings

log = logging.getLogger("rnnserve.server.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# ORT's process-wide logger prints every provider-bridge failure as an error; everything
# this server needs to say about providers it says itself, once.
ort.set_default_logger_severity(3)

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class RuntimeUnavailable(RuntimeError):
    """The requested device cannot be used (``--device cuda`` without usable CUDA)."""


@dataclass(frozen=True)
class ProviderChoice:
    provider: str          # CPU or CUDA
    reason: str            # one human sentence, logged at start-up


def _cuda_probe(device_id: int) -> tuple[bool, str]:
    """(usable, reason) for CUDA without creating an ORT session or printing anything."""
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA execution provider"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        ort.preload_dlls()  # loads CUDA/cuDNN from nvidia-* wheels when present; quiet
    capi = Path(ort.__file__).parent / "capi"
    provider_lib = capi / "libonnxruntime_providers_cuda.so"
    if provider_lib.exists():
        try:
            ctypes.CDLL(str(provider_lib), mode=getattr(os, "RTLD_LAZY", 1))
        except OSError as exc:
            # "undefined symbol" means every dependency loaded and only ORT-internal symbols
            # (resolved when ORT itself loads the provider) are missing: CUDA is fine.
            if "undefined symbol" not in str(exc):
                return False, f"CUDA libraries are not loadable ({exc})"
    major = (getattr(ort, "cuda_version", "") or "12").split(".")[0]
    for name in (f"libcudart.so.{major}", "libcudart.so"):
        try:
            cudart = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False, f"libcudart.so.{major} is not installed"
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return False, f"no CUDA device is visible (cudaGetDeviceCount status {status})"
    if device_id >= count.value:
        return False, f"CUDA device {device_id} requested but only {count.value} visible"
    return True, f"CUDA device {device_id} of {count.value} is usable"


_choices: dict[tuple[str, int], ProviderChoice] = {}
_choices_lock = threading.Lock()


def select_provider(device: str, device_id: int = 0) -> ProviderChoice:
    """Resolve ``auto|cpu|cuda`` to one provider; logs the decision once per process."""
    key = (device, device_id)
    with _choices_lock:
        if key in _choices:
            return _choices[key]
        if device == "cpu":
            choice = ProviderChoice(CPU, "--device cpu was requested")
        else:
            usable, why = _cuda_probe(device_id)
            if usable:
                choice = ProviderChoice(CUDA, why)
            elif device == "cuda":
                raise RuntimeUnavailable(f"--device cuda: {why}")
            else:
                choice = ProviderChoice(CPU, f"CUDA not usable: {why}; running on CPU")
        _choices[key] = choice
    log_event(log, "execution_provider", provider=choice.provider, device=device,
              reason=choice.reason)
    return choice


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset and cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session_options(settings: ServerSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Default: every CPU this process may use but one, which the event loop (gRPC,
    # tokenization, batching) needs while ORT computes; at least one.
    options.intra_op_num_threads = settings.intra_op_threads or max(1, available_cpus() - 1)
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _GRAPH_LEVELS[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if settings.intra_op_spinning else "0")
    return options


def _cuda_options(settings: ServerSettings) -> dict[str, object]:
    strategy = {"next_power_of_two": "kNextPowerOfTwo",
                "same_as_requested": "kSameAsRequested"}[settings.cuda_arena_extend_strategy]
    options: dict[str, object] = {"device_id": settings.cuda_device_id,
                                  "arena_extend_strategy": strategy}
    if settings.cuda_mem_limit_bytes:
        options["gpu_mem_limit"] = settings.cuda_mem_limit_bytes
    return options


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds of one ORT call over ``rows`` rows padded to ``steps`` time steps:
    ``call + steps * (step + row_step * rows)`` -- a per-call overhead, a per-time-step
    overhead (small-matrix inefficiency) and the per-row work. Measured at load
    (:meth:`OnnxModel.calibrate`); only the ratios matter."""

    call: float
    step: float
    row_step: float

    def cost(self, rows: int, steps: int) -> float:
        return self.call + steps * (self.step + self.row_step * rows)



class OnnxModel:
    """One ORT session of one model version (one execution instance)."""

    def __init__(self, path: Path, metadata: RepositoryMetadata, settings: ServerSettings,
                 *, max_batch_size: int) -> None:
        choice = select_provider(settings.device, settings.cuda_device_id)
        started = time.perf_counter()
        options = session_options(settings)
        self.session = None
        if choice.provider == CUDA:
            try:
                self.session = ort.InferenceSession(
                    str(path), sess_options=options,
                    providers=[(CUDA, _cuda_options(settings)), CPU])
            except Exception as exc:  # any CUDA set-up failure
                if settings.device == "cuda":
                    raise RuntimeUnavailable(f"{path}: CUDA session failed: {exc}") from exc
                log_event(log, "execution_provider_fallback", level=logging.WARNING,
                          model=str(path), provider=CPU, reason=f"{exc}"[:300])
        if self.session is None:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=[CPU])
        self.load_seconds = time.perf_counter() - started
        self.provider = self.session.get_providers()[0]
        if choice.provider == CUDA and self.provider != CUDA and settings.device == "cuda":
            raise RuntimeUnavailable(f"{path}: ORT could not place the model on CUDA")
        self.state_names = tuple(metadata.state_names)
        self.state_out_names = tuple(f"{name}_out" for name in self.state_names)
        self.state_shape = metadata.state_shape
        self.num_labels = metadata.num_labels
        self.max_batch_size = max_batch_size
        _check_signature(self.session, metadata, path)
        # Read-only zero state, [max_batch_size, L*D, H]; a batch of B uses its first B rows.
        self._zeros = np.zeros((max_batch_size, *self.state_shape), dtype=np.float32)
        self._zeros.flags.writeable = False
        self._logits_only = ["logits"]
        self._all_outputs = ["logits", *self.state_out_names]
        self._device = None
        if self.provider == CUDA:
            self._device = _DeviceBuffers(self, settings.cuda_device_id)

    # -- inference ----------------------------------------------------------------------

    def run(self, ids: np.ndarray, lengths: np.ndarray, states: Sequence[np.ndarray] | None,
            *, want_state: bool) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Run one batch.

        ``ids`` int64 [B, T] (C-contiguous), ``lengths`` int64 [B] with 1 <= lengths <= T,
        ``states`` one float32 [B, L*D, H] array per state name, or None for all-zero state.
        Returns logits float32 [B, labels] and, when ``want_state``, the output states
        (else an empty tuple). Raises whatever ORT raises; the caller maps it to INTERNAL.
        """
        if self._device is not None:
            return self._device.run(ids, lengths, states, want_state=want_state)
        batch = ids.shape[0]
        feeds = {"input_ids": ids, "lengths": lengths}
        if states is None:
            zero = self._zeros[:batch] if batch <= self.max_batch_size else \
                np.zeros((batch, *self.state_shape), dtype=np.float32)
            for name in self.state_names:
                feeds[name] = zero
        else:
            for name, array in zip(self.state_names, states, strict=True):
                feeds[name] = array
        if want_state:
            logits, *out = self.session.run(self._all_outputs, feeds)
            return logits, tuple(out)
        return self.session.run(self._logits_only, feeds)[0], ()

    def calibrate(self, max_batch: int, chunk_length: int, repeats: int = 3) -> CostModel | None:
        """Fit :class:`CostModel` from a few timed zero-state runs (best of ``repeats``):
        batch 1 and ``max_batch`` at two lengths. None when the shapes allow no fit."""
        short, long = min(4, chunk_length), min(32, chunk_length)
        if long <= short:
            return None

        def seconds(batch: int, steps: int) -> float:
            ids = np.ones((batch, steps), dtype=np.int64)
            lengths = np.full(batch, steps, dtype=np.int64)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                self.run(ids, lengths, None, want_state=False)
                best = min(best, time.perf_counter() - started)
            return best

        span = long - short
        one_short, one_long = seconds(1, short), seconds(1, long)
        per_step_one = max(0.0, (one_long - one_short) / span)
        row_step = 0.0
        if max_batch > 1:
            per_step_many = max(0.0, (seconds(max_batch, long) - seconds(max_batch, short))
                                / span)
            row_step = max(0.0, (per_step_many - per_step_one) / (max_batch - 1))
        step = max(0.0, per_step_one - row_step)
        call = max(one_short - short * (step + row_step),
                   seconds(1, 1) - (step + row_step), 0.0)
        return CostModel(call=call, step=step, row_step=row_step)

    def warmup(self, batch_sizes: Sequence[int], time_steps: Sequence[int]) -> float:
        """Run each batch size at each length once (zero state); returns seconds spent."""
        started = time.perf_counter()
        for batch in batch_sizes:
            for steps in time_steps:
                ids = np.ones((batch, steps), dtype=np.int64)
                lengths = np.full(batch, steps, dtype=np.int64)
                self.run(ids, lengths, None, want_state=True)
        return time.perf_counter() - started


class _DeviceBuffers:
    """CUDA I/O binding with preallocated device memory (one caller at a time).

    - token ids and lengths are bound from host memory (ORT copies them up once);
    - an all-zero input state is bound to one preallocated zeroed device buffer of
      ``max_batch_size`` rows; a batch of B rows binds its first B rows (batch-major, so a
      prefix of the buffer is exactly a [B, L*D, H] tensor) -- no host->device copy;
    - output states the caller does not want are bound to a device scratch buffer the same
      way, so they never travel back to the host; logits (and wanted states) are fetched.
    """

    def __init__(self, model: OnnxModel, device_id: int) -> None:
        self.model = model
        self.device_id = device_id
        shape = (model.max_batch_size, *model.state_shape)
        self.zeros = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), "cuda",
                                                      device_id)
        self.scratch = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda",
                                                                  device_id)
                        for _ in model.state_out_names]

    def run(self, ids, lengths, states, *, want_state):
        model = self.model
        batch = ids.shape[0]
        if batch > model.max_batch_size:
            raise ValueError(f"batch of {batch} rows exceeds max_batch_size "
                             f"{model.max_batch_size}")
        shape = (batch, *model.state_shape)
        binding = model.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("lengths", lengths)
        for index, name in enumerate(model.state_names):
            if states is None:
                binding.bind_input(name, "cuda", self.device_id, np.float32, shape,
                                   self.zeros.data_ptr())
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(states[index]))
        binding.bind_output("logits", "cpu")
        for index, name in enumerate(model.state_out_names):
            if want_state:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, "cuda", self.device_id, np.float32, shape,
                                    self.scratch[index].data_ptr())
        model.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()
        if want_state:
            return logits, tuple(value.numpy() for value in outputs[1:])
        return logits, ()


def _check_signature(session: ort.InferenceSession, metadata: RepositoryMetadata,
                     path: Path) -> None:
    """Raise ValueError unless the graph's I/O is the contract's (names, types, ranks)."""
    rows, hidden = metadata.state_shape
    want_inputs = {"input_ids": ("tensor(int64)", 2), "lengths": ("tensor(int64)", 1)}
    want_outputs = {"logits": ("tensor(float)", 2)}
    for name in metadata.state_names:
        want_inputs[name] = ("tensor(float)", 3)
        want_outputs[f"{name}_out"] = ("tensor(float)", 3)
    have_inputs = {i.name: i for i in session.get_inputs()}
    have_outputs = {o.name: o for o in session.get_outputs()}
    if set(have_inputs) != set(want_inputs):
        raise ValueError(f"{path}: inputs {sorted(have_inputs)} != contract "
                         f"{sorted(want_inputs)}")
    missing = set(want_outputs) - set(have_outputs)
    if missing:
        raise ValueError(f"{path}: missing outputs {sorted(missing)}")
    for table, have in ((want_inputs, have_inputs), (want_outputs, have_outputs)):
        for name, (dtype, rank) in table.items():
            arg = have[name]
            if arg.type != dtype or len(arg.shape) != rank:
                raise ValueError(f"{path}: {name} is {arg.type}{arg.shape}, contract says "
                                 f"{dtype} of rank {rank}")
            if rank == 3 and list(arg.shape[1:]) != [rows, hidden]:
                raise ValueError(f"{path}: {name} has shape {arg.shape}, metadata says "
                                 f"[batch, {rows}, {hidden}]")
