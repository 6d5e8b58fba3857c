"""ONNX Runtime sessions: execution-provider choice, options, I/O binding, warm-up.

Invariants:
- ``select_provider`` decides CUDA vs CPU once per process and device, before any session
  exists, with server/cuda_probe.py (driver, CUDA libraries, runtime, cuDNN; never by letting
  ORT fail loudly). The decision, its reason and the versions found are logged once.
- ORT's own fallback is off (``enable_fallback=0``): a session asked for CUDA either has CUDA
  as its first provider, a first 1-row run in every binding mode and its device buffers, or
  it is a failure. Failure under ``--device cuda`` raises :class:`RuntimeUnavailable` (the
  server exits with the reason); under ``--device auto`` it logs one
  ``execution_provider_fallback`` warning, the process's choice becomes CPU (later sessions
  do not retry) and the model runs on CPU. The same holds for failures during warm-up and
  calibration. ORT prints nothing to stdout and only fatal lines to stderr.
- A model's ``provider`` is where it really runs: int8 models (``DynamicQuantizeLSTM`` has no
  CUDA kernel) are pinned to CPU, and so are fp16 models without a GPU accuracy check unless
  ``allow_unverified_fp16`` (``--device cuda`` refuses them instead).
- TF32 is a setting (``cuda_tf32``, default off), never ORT's default.
- An :class:`OnnxModel` checks at load that the graph has exactly the I/O of
  docs/architecture.md §2, so ``run`` never meets a surprise.
- ``run`` is called by one thread at a time per OnnxModel (its instance worker); the CUDA
  path reuses preallocated device buffers and therefore relies on that.
- ``lengths`` always reaches ORT from host memory: the LSTM/GRU kernels read
  ``sequence_lens`` on the host, so binding it on the device would cost a copy back.
- State and logits cross the graph boundary as float32 whatever the model's precision.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.repository import RepositoryMetadata

from .composition import CostModel
from .cpus import available_cpus
from .cuda_probe import CudaProbe, probe_cuda
from .logs import log_event
from .settings import ServerSettings
from .state_pool import DeviceTensor

log = logging.getLogger("rnnserve.server.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# ORT's process-wide logger prints provider-bridge failures ("[E:onnxruntime...] Failed to
# load library") on stderr; everything this server needs to say about providers it says
# itself, once, so only fatal ORT lines pass.
ort.set_default_logger_severity(4)

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: Metadata validation key an export on a GPU sets (1.0) once fp16 arithmetic on CUDA was
#: checked against fp32; without it fp16 runs on CUDA only with ``allow_unverified_fp16``.
FP16_CUDA_VALIDATED = "fp16_cuda_validated"


class RuntimeUnavailable(RuntimeError):
    """The requested device cannot be used (``--device cuda`` without usable CUDA)."""


@dataclass(frozen=True)
class ProviderChoice:
    provider: str          # CPU or CUDA
    reason: str            # one human sentence, logged at start-up


_choices: dict[tuple[str, int], ProviderChoice] = {}
_choices_lock = threading.Lock()


def select_provider(device: str, device_id: int = 0) -> ProviderChoice:
    """Resolve ``auto|cpu|cuda`` to one provider; logs the decision once per process."""
    key = (device, device_id)
    report: CudaProbe | None = None
    with _choices_lock:
        if key in _choices:
            return _choices[key]
        if device == "cpu":
            choice = ProviderChoice(CPU, "--device cpu was requested")
        else:
            report = probe_cuda(device_id)
            if report.usable:
                choice = ProviderChoice(CUDA, report.reason)
            elif device == "cuda":
                raise RuntimeUnavailable(f"--device cuda: {report.reason}")
            else:
                choice = ProviderChoice(CPU, f"CUDA not usable: {report.reason}; running on "
                                             "CPU")
        _choices[key] = choice
    broken = report is not None and report.driver_found and not report.usable
    log_event(log, "execution_provider", level=logging.WARNING if broken else logging.INFO,
              provider=choice.provider, device=device, reason=choice.reason,
              **({} if report is None else report.fields()))
    return choice


_ORT_CALL_FAILURE = re.compile(r"(CUDA|CUBLAS|CUDNN|CURAND|CUFFT) failure .*", re.DOTALL)


def failure_text(exc: BaseException) -> str:
    """One readable line for an ORT exception: the ``CUDA failure N: ...`` part when ORT's
    message has one (its C++ signature noise dropped), else the message; at most 500 chars."""
    text = str(exc)
    match = _ORT_CALL_FAILURE.search(text)
    if match:
        text = match.group(0)
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}"[:500]


def _cuda_failed(device: str, device_id: int, reason: str, model: Path) -> None:
    """After a CUDA failure past the probe: raise for ``--device cuda``; for ``auto`` make
    CPU the process's choice (so later sessions do not retry) and warn once."""
    if device == "cuda":
        raise RuntimeUnavailable(f"--device cuda: {model}: {reason}")
    with _choices_lock:
        previous = _choices.get((device, device_id))
        _choices[(device, device_id)] = ProviderChoice(
            CPU, f"CUDA not usable: {reason}; running on CPU")
    if previous is None or previous.provider == CUDA:
        log_event(log, "execution_provider_fallback", level=logging.WARNING,
                  model=str(model), provider=CPU, reason=f"CUDA not usable: {reason}"[:500])


def session_options(settings: ServerSettings, sessions: int = 1) -> ort.SessionOptions:
    """Options of one of ``sessions`` ORT sessions that run side by side."""
    options = ort.SessionOptions()
    # Default: every CPU this process may use but one, which the event loop (gRPC,
    # tokenization, batching) needs while ORT computes, shared among the sessions; at
    # least one.
    options.intra_op_num_threads = settings.intra_op_threads or \
        max(1, (available_cpus() - 1) // sessions)
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _GRAPH_LEVELS[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if settings.intra_op_spinning else "0")
    return options


def cuda_provider_options(settings: ServerSettings) -> dict[str, object]:
    """CUDA provider options; every numerics choice explicit (TF32 from the settings)."""
    strategy = {"next_power_of_two": "kNextPowerOfTwo",
                "same_as_requested": "kSameAsRequested"}[settings.cuda_arena_extend_strategy]
    options: dict[str, object] = {"device_id": settings.cuda_device_id,
                                  "arena_extend_strategy": strategy,
                                  "use_tf32": "1" if settings.cuda_tf32 else "0"}
    if settings.cuda_mem_limit_bytes:
        options["gpu_mem_limit"] = settings.cuda_mem_limit_bytes
    return options


def cpu_pin_reason(metadata: RepositoryMetadata, settings: ServerSettings) -> str:
    """Why this model must run on CPU even when CUDA is usable ("" when it need not)."""
    if metadata.precision == "int8":
        return ("int8 models run on CPU: ORT 1.31 has no CUDA kernel for DynamicQuantizeLSTM "
                "and the quantized MatMul/Gather nodes")
    if metadata.precision == "fp16" and not settings.allow_unverified_fp16 and \
            metadata.validation.get(FP16_CUDA_VALIDATED, 0.0) != 1.0:
        return ("fp16 arithmetic on CUDA was never checked against fp32 for this model "
                f"(metadata validation {FP16_CUDA_VALIDATED} is not 1; its fp16 weights were "
                "validated on CPU): --device auto serves it on CPU, --device cuda refuses it; "
                "set allow_unverified_fp16 to serve it on CUDA anyway")
    return ""


def open_session(model: Path | bytes, settings: ServerSettings,
                 provider: str, sessions: int = 1) -> ort.InferenceSession:
    """An ORT session of ``model`` (a file or serialized bytes) on ``provider`` with ORT's own
    fallback off, one of ``sessions`` side by side; for CUDA, raises unless CUDA really is
    the session's first provider. Prints nothing."""
    options = session_options(settings, sessions)
    providers: list = [(CUDA, cuda_provider_options(settings)), CPU] if provider == CUDA \
        else [CPU]
    source = model if isinstance(model, bytes) else str(model)
    with contextlib.redirect_stdout(io.StringIO()):
        session = ort.InferenceSession(source, sess_options=options, providers=providers,
                                       enable_fallback=0)
    if provider == CUDA and session.get_providers()[0] != CUDA:
        raise RuntimeError("ORT created the session without the CUDA provider (its library "
                           f"did not load; session providers {session.get_providers()})")
    return session


class SignatureError(ValueError):
    """The graph's I/O is not the contract's (a model problem, never a device one)."""


_pinned_logged: set[str] = set()


class OnnxModel:
    """One ORT session of one model version (one execution instance)."""

    def __init__(self, path: Path, metadata: RepositoryMetadata, settings: ServerSettings,
                 *, max_batch_size: int, sessions: int = 1) -> None:
        """``sessions``: how many instances of this model run side by side (they share
        the CPUs: server/runtime.py ``session_options``)."""
        self.path = Path(path)
        self.settings = settings
        self.sessions = sessions
        self.state_names = tuple(metadata.state_names)
        self.state_out_names = tuple(f"{name}_out" for name in self.state_names)
        self.state_shape = metadata.state_shape
        self.num_labels = metadata.num_labels
        self.max_batch_size = max_batch_size
        self.metadata = metadata
        # Read-only zero state, [max_batch_size, L*D, H]; a batch of B uses its first B rows.
        self._zeros = np.zeros((max_batch_size, *self.state_shape), dtype=np.float32)
        self._zeros.flags.writeable = False
        self._logits_only = ["logits"]
        self._all_outputs = ["logits", *self.state_out_names]
        self._device: _DeviceBuffers | None = None       # IOBinding path of run() (CUDA)
        self._bound: _DeviceBuffers | None = None        # IOBinding path of run_bound()
        #: Why this model runs on CPU although CUDA is usable ("" otherwise).
        self.pinned = ""
        started = time.perf_counter()
        choice = select_provider(settings.device, settings.cuda_device_id)
        provider = choice.provider
        if provider == CUDA:
            self.pinned = cpu_pin_reason(metadata, settings)
            if self.pinned:
                if settings.device == "cuda" and metadata.precision == "fp16":
                    raise RuntimeUnavailable(f"--device cuda: {path}: {self.pinned}")
                if str(path) not in _pinned_logged:
                    _pinned_logged.add(str(path))
                    log_event(log, "execution_provider_pinned", level=logging.WARNING,
                              model=str(path), precision=metadata.precision, provider=CPU,
                              reason=self.pinned)
                provider = CPU
        if provider == CUDA:
            try:
                self._open(CUDA)
                self._first_run()
            except SignatureError:
                raise
            except Exception as exc:  # noqa: BLE001 - any CUDA failure: fall back or stop
                self._device = None
                self.session = None
                _cuda_failed(settings.device, settings.cuda_device_id,
                             failure_text(exc), self.path)
                provider = CPU
        if provider == CPU:
            self._open(CPU)
        self.load_seconds = time.perf_counter() - started

    def _open(self, provider: str) -> None:
        self.session = open_session(self.path, self.settings, provider, self.sessions)
        self.provider = self.session.get_providers()[0]
        _check_signature(self.session, self.metadata, self.path)
        self._device = _DeviceBuffers(self) if self.provider == CUDA else None
        self._bound = self._device

    @property
    def device_name(self) -> str:
        """ORT's name of the memory this model's session computes in: "cuda" or "cpu"."""
        return "cuda" if self.provider == CUDA else "cpu"

    @property
    def uses_device_pool(self) -> bool:
        """Sequence state of this model will live in device memory (``state_pool``)."""
        mode = self.settings.state_pool
        return mode == "device" or (mode == "auto" and self.provider == CUDA)

    @property
    def device_id(self) -> int:
        return self.settings.cuda_device_id if self.provider == CUDA else 0

    def _first_run(self) -> None:
        """One 1-row, 1-step run in every binding mode (where a CUDA session that was
        created fine fails first: kernels, cuDNN, device memory)."""
        self._each_mode(1, 1)

    def _each_mode(self, batch: int, steps: int) -> None:
        """Run ``batch`` x ``steps`` once in every binding mode: zero or given input state,
        output state wanted or not (each binds different buffers on CUDA)."""
        ids = np.ones((batch, steps), dtype=np.int64)
        lengths = np.full(batch, steps, dtype=np.int64)
        if self.uses_device_pool:
            shape = (batch, *self.state_shape)
            self.run_bound(ids, lengths,
                           [DeviceTensor(shape, self.device_name, self.device_id)
                            for _ in self.state_names],
                           [DeviceTensor(shape, self.device_name, self.device_id)
                            for _ in self.state_names])
        if self._device is None:      # plain feeds: one path whatever the mode
            self.run(ids, lengths, None, want_state=True)
            return
        given = tuple(np.zeros((batch, *self.state_shape), np.float32)
                      for _ in self.state_names)
        for states in (None, given):
            for want_state in (True, False):
                self.run(ids, lengths, states, want_state=want_state)

    def _guarded(self, work: Callable[[], float | CostModel | None]):
        """Run load-time ``work`` (warm-up, calibration); a failure on CUDA is a CUDA
        failure (stop for ``--device cuda``, else reopen on CPU once and redo the work)."""
        if self.provider != CUDA:
            return work()
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - any CUDA failure: fall back or stop
            self._device = None
            _cuda_failed(self.settings.device, self.settings.cuda_device_id,
                         failure_text(exc), self.path)
            self._open(CPU)
            return work()

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

    def run_bound(self, ids: np.ndarray, lengths: np.ndarray, states: Sequence,
                  outputs: Sequence) -> np.ndarray:
        """Run one batch of B rows with input and output state in device memory (the device
        state pool's path): ``states`` and ``outputs`` are one server.state_pool.DeviceTensor
        per state name, of at least B rows, on this model's device; their first B rows are
        bound. Returns logits float32 [B, labels] on the host."""
        if self._bound is None:
            self._bound = _DeviceBuffers(self)
        return self._bound.run_bound(ids, lengths, states, outputs)

    def calibrate(self, max_batch: int, chunk_length: int, repeats: int = 3) -> CostModel | None:
        """Fit :class:`CostModel` from a few timed zero-state runs (best of ``repeats``):
        batch 1 and ``max_batch`` at two lengths. None when the shapes allow no fit."""
        return self._guarded(lambda: self._calibrate(max_batch, chunk_length, repeats))

    def _calibrate(self, max_batch: int, chunk_length: int, repeats: int) -> CostModel | None:
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
        """Run each batch size at each length once in every binding mode (zero or given
        state, state wanted or not), so no buffer or kernel is first used by live traffic;
        returns seconds spent."""
        started = time.perf_counter()

        def work() -> float:
            for batch in batch_sizes:
                for steps in time_steps:
                    self._each_mode(batch, steps)
            return 0.0

        self._guarded(work)
        return time.perf_counter() - started


class _DeviceBuffers:
    """I/O binding with preallocated device memory (one caller at a time); the device is the
    model's ("cuda", or "cpu" when the device state pool is driven on CPU).

    - token ids and lengths are bound from host memory (ORT copies them up once);
    - an all-zero input state is bound to one preallocated zeroed device buffer of
      ``max_batch_size`` rows; a batch of B rows binds its first B rows (batch-major, so a
      prefix of the buffer is exactly a [B, L*D, H] tensor) -- no host->device copy;
    - output states the caller does not want are bound to a device scratch buffer the same
      way, so they never travel back to the host; logits (and wanted states) are fetched.
    """

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.device = model.device_name
        self.device_id = model.device_id
        shape = (model.max_batch_size, *model.state_shape)
        self.zeros = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), self.device,
                                                      self.device_id)
        self.scratch = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32,
                                                                  self.device, self.device_id)
                        for _ in model.state_out_names]

    def run_bound(self, ids, lengths, states, outputs) -> np.ndarray:
        model = self.model
        batch = ids.shape[0]
        binding = model.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("lengths", lengths)      # the RNN kernels read it on the host
        for name, tensor in zip(model.state_names, states, strict=True):
            tensor.bind_input(binding, name, batch)
        binding.bind_output("logits", "cpu")
        for name, tensor in zip(model.state_out_names, outputs, strict=True):
            tensor.bind_output(binding, name, batch)
        model.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def run(self, ids, lengths, states, *, want_state):
        model = self.model
        batch = ids.shape[0]
        if batch > model.max_batch_size:
            raise ValueError(f"batch of {batch} rows exceeds max_batch_size "
                             f"{model.max_batch_size}")
        shape = (batch, *model.state_shape)
        binding = model.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("lengths", lengths)      # the RNN kernels read it on the host
        for index, name in enumerate(model.state_names):
            if states is None:
                binding.bind_input(name, self.device, self.device_id, np.float32, shape,
                                   self.zeros.data_ptr())
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(states[index]))
        binding.bind_output("logits", "cpu")
        for index, name in enumerate(model.state_out_names):
            if want_state:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.device, self.device_id, np.float32, shape,
                                    self.scratch[index].data_ptr())
        model.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()
        if want_state:
            return logits, tuple(value.numpy() for value in outputs[1:])
        return logits, ()


def _check_signature(session: ort.InferenceSession, metadata: RepositoryMetadata,
                     path: Path) -> None:
    """Raise SignatureError unless the graph's I/O is the contract's (names, types, ranks)."""
    rows, hidden = metadata.state_shape
    want_inputs = {"input_ids": ("tensor(int64)", 2), "lengths": ("tensor(int64)", 1)}
    want_outputs = {"logits": ("tensor(float)", 2)}
    for name in metadata.state_names:
        want_inputs[name] = ("tensor(float)", 3)
        want_outputs[f"{name}_out"] = ("tensor(float)", 3)
    have_inputs = {i.name: i for i in session.get_inputs()}
    have_outputs = {o.name: o for o in session.get_outputs()}
    if set(have_inputs) != set(want_inputs):
        raise SignatureError(f"{path}: inputs {sorted(have_inputs)} != contract "
                         f"{sorted(want_inputs)}")
    missing = set(want_outputs) - set(have_outputs)
    if missing:
        raise SignatureError(f"{path}: missing outputs {sorted(missing)}")
    for table, have in ((want_inputs, have_inputs), (want_outputs, have_outputs)):
        for name, (dtype, rank) in table.items():
            arg = have[name]
            if arg.type != dtype or len(arg.shape) != rank:
                raise SignatureError(f"{path}: {name} is {arg.type}{arg.shape}, contract says "
                                 f"{dtype} of rank {rank}")
            if rank == 3 and list(arg.shape[1:]) != [rows, hidden]:
                raise SignatureError(f"{path}: {name} has shape {arg.shape}, metadata says "
                                 f"[batch, {rows}, {hidden}]")
