"""Can this process run ONNX Runtime's CUDA provider? Asked with ``ctypes``, before any session.

The probe walks what ORT will need, in the order ORT needs it, and stops at the first thing
missing, with one sentence that names it:

1. the ORT build has a CUDA execution provider;
2. the NVIDIA driver (``libcuda.so.1``): loads, its CUDA version is at least the one ORT was
   built for (CUDA 13 needs driver R580 or newer), ``cuInit`` succeeds and sees a device;
3. the CUDA provider library and everything it is linked against (cuBLAS, cuBLASLt, cuRAND,
   the CUDA runtime, the driver) load with every symbol resolved;
4. the CUDA runtime agrees (``cudaGetDeviceCount``; status 35 means the driver is too old for
   this runtime, not "no device");
5. cuDNN ``major`` is installed, complete (the RNN kernels live in ``libcudnn_adv``) and
   reports that major version. ORT's provider library is not linked against cuDNN: it opens
   it only when a kernel first needs it, so without this step a host without cuDNN passes.

Invariants: the probe prints nothing (``preload_dlls`` chatter is swallowed), never creates an
ORT session, never raises (every failure is a reason), and is cheap enough to run once per
process. Passing it is necessary, not sufficient: the session and a first run can still fail,
which server/runtime.py checks separately.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"

#: cuDNN major version ORT 1.31's CUDA provider is built against.
CUDNN_MAJOR = 9

#: Oldest Linux driver branch per CUDA major (NVIDIA's CUDA compatibility table).
DRIVER_BRANCH = {12: "R525", 13: "R580"}

#: Driver-API (cu*) and runtime-API (cuda*) status codes worth a sentence of their own.
STATUS_MEANING = {
    3: "the driver failed to initialise (is the nvidia kernel module loaded?)",
    34: "libcuda.so.1 is the toolkit's stub library, not a real driver",
    35: "the NVIDIA driver is too old for this CUDA runtime",
    36: "the NVIDIA driver is too old for a call this runtime made",
    46: "the CUDA devices are busy or unavailable (exclusive-process mode?)",
    100: "no CUDA device is visible: CUDA_VISIBLE_DEVICES, container --gpus, or no GPU",
    101: "the requested CUDA device ordinal does not exist",
    304: "the operating system refused the CUDA call (device nodes missing in the container?)",
    802: "the system is not ready for CUDA (fabric manager not running?)",
    803: "the NVIDIA kernel module and user-space driver versions do not match",
    804: "this GPU does not support the forward-compatibility driver in use",
}


def status_text(status: int) -> str:
    """``status N (meaning)`` for a CUDA driver or runtime status code."""
    meaning = STATUS_MEANING.get(status)
    return f"status {status}" + (f": {meaning}" if meaning else "")


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12040) as text ("12.4")."""
    return f"{version // 1000}.{version % 1000 // 10}"


@dataclass
class CudaProbe:
    """What the probe found; ``usable`` with ``reason`` saying why (not)."""

    usable: bool = False
    reason: str = ""
    build_cuda: str = ""              # CUDA version this onnxruntime was built for, "13.0"
    driver_cuda: str = ""             # newest CUDA the installed driver supports, "13.1"
    runtime_cuda: str = ""            # version of the loaded libcudart
    cudnn: str = ""                   # "9.10.2"
    devices: int = 0
    #: libcuda.so.1 loaded: this host has an NVIDIA driver, so CUDA not being usable is a
    #: fault worth a warning, not the normal state of a CPU-only host.
    driver_found: bool = False

    def fields(self) -> dict[str, object]:
        """The non-empty figures, for the start-up log line."""
        return {key: value for key, value in (
            ("cuda_build", self.build_cuda), ("cuda_driver", self.driver_cuda),
            ("cuda_runtime", self.runtime_cuda), ("cudnn", self.cudnn),
            ("cuda_devices", self.devices)) if value}


def _load(name: str, mode: int | None = None) -> ctypes.CDLL:
    return ctypes.CDLL(name) if mode is None else ctypes.CDLL(name, mode=mode)


def _loaded_folder(soname: str) -> Path | None:
    """Folder of the already loaded library ``soname`` (from /proc/self/maps), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        if path.endswith("/" + soname):
            return Path(path).parent
    return None


def _int_call(function, *args) -> tuple[int, int]:
    """(status, value) of a CUDA ``f(int *out)`` style call."""
    value = ctypes.c_int(0)
    status = function(*args, ctypes.byref(value))
    return int(status), int(value.value)


def probe_cuda(device_id: int = 0) -> CudaProbe:
    """Check, in ORT's order, everything the CUDA provider needs (see the module docstring)."""
    report = CudaProbe(build_cuda=str(getattr(ort, "cuda_version", "") or ""))
    try:
        _probe(report, device_id)
    except Exception as exc:  # noqa: BLE001 - a probe never raises; say what went wrong
        report.usable, report.reason = False, f"CUDA probe failed: {type(exc).__name__}: {exc}"
    return report


def _probe(report: CudaProbe, device_id: int) -> None:
    def fail(reason: str) -> None:
        report.usable, report.reason = False, reason

    if CUDA not in ort.get_available_providers():
        return fail("this onnxruntime build has no CUDA execution provider")
    build_major = int((report.build_cuda or "12").split(".")[0])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        ort.preload_dlls()      # CUDA/cuDNN from nvidia-* wheels when installed; quiet

    # 2. the driver
    try:
        driver = _load("libcuda.so.1")
    except OSError as exc:
        return fail(f"the NVIDIA driver is not installed (libcuda.so.1: {exc})")
    report.driver_found = True
    status, version = _int_call(driver.cuDriverGetVersion)
    if status == 0 and version:
        report.driver_cuda = cuda_version_text(version)
        if version // 1000 < build_major:
            branch = DRIVER_BRANCH.get(build_major, "a newer driver")
            return fail(f"the NVIDIA driver supports CUDA {report.driver_cuda} but this "
                        f"onnxruntime needs CUDA {report.build_cuda}: install driver "
                        f"{branch} or newer")
    status = int(driver.cuInit(0))
    if status != 0:
        return fail(f"the NVIDIA driver cannot be used (cuInit {status_text(status)})")
    status, count = _int_call(driver.cuDeviceGetCount)
    if status != 0:
        return fail(f"the NVIDIA driver cannot count devices (cuDeviceGetCount "
                    f"{status_text(status)})")
    if count == 0:
        return fail(f"the NVIDIA driver sees 0 CUDA devices ({STATUS_MEANING[100]})")
    report.devices = count
    if device_id >= count:
        return fail(f"CUDA device {device_id} requested but only {count} visible")

    # 3. the provider library and its linked CUDA libraries, every symbol resolved
    capi = Path(ort.__file__).parent / "capi"
    provider = capi / "libonnxruntime_providers_cuda.so"
    if provider.exists():
        try:
            _load(str(capi / "libonnxruntime_providers_shared.so"), os.RTLD_GLOBAL)
            _load(str(provider), os.RTLD_NOW)
        except OSError as exc:
            return fail(f"CUDA libraries are not loadable ({exc})")

    # 4. the runtime
    for name in (f"libcudart.so.{build_major}", "libcudart.so"):
        with contextlib.suppress(OSError):
            cudart = _load(name)
            break
    else:
        return fail(f"libcudart.so.{build_major} is not installed")
    status, version = _int_call(cudart.cudaRuntimeGetVersion)
    if status == 0 and version:
        report.runtime_cuda = cuda_version_text(version)
    status, count = _int_call(cudart.cudaGetDeviceCount)
    if status != 0:
        return fail(f"the CUDA runtime cannot use the device (cudaGetDeviceCount "
                    f"{status_text(status)})")
    if count == 0:
        return fail(f"the CUDA runtime sees 0 CUDA devices ({STATUS_MEANING[100]})")

    # 5. cuDNN (opened by ORT only when the first RNN kernel runs)
    major = CUDNN_MAJOR
    try:
        cudnn = _load(f"libcudnn.so.{major}")
    except OSError as exc:
        return fail(f"cuDNN {major} is not installed (libcudnn.so.{major}: {exc}); the "
                    "LSTM/GRU kernels need it (pip install nvidia-cudnn-cu"
                    f"{build_major}, or the system package)")
    cudnn.cudnnGetVersion.restype = ctypes.c_size_t
    version = int(cudnn.cudnnGetVersion())
    report.cudnn = f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    if version // 10000 != major:
        return fail(f"cuDNN {report.cudnn} is installed but this onnxruntime needs cuDNN "
                    f"{major}")
    # cuDNN opens its parts next to itself (the nvidia-cudnn wheel's folder is on no search
    # path), so look there first.
    folder = _loaded_folder(f"libcudnn.so.{major}")
    for part in ("ops", "adv"):
        name = f"libcudnn_{part}.so.{major}"
        try:
            _load(str(folder / name) if folder and (folder / name).exists() else name)
        except OSError as exc:
            return fail(f"cuDNN {report.cudnn} is incomplete (libcudnn_{part}.so.{major}: "
                        f"{exc})")
    report.usable = True
    report.reason = (f"CUDA device {device_id} of {report.devices} is usable (driver CUDA "
                     f"{report.driver_cuda or '?'}, runtime {report.runtime_cuda or '?'}, "
                     f"cuDNN {report.cudnn})")
