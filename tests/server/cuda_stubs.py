"""Stub CUDA/cuDNN libraries for testing the CUDA probe and fallback on a host without a GPU.

``build_stubs(directory)`` compiles, with gcc, one small shared library per soname that
ONNX Runtime's CUDA provider library is linked against (the driver ``libcuda.so.1``, the CUDA
runtime, cuBLAS, cuBLASLt, cuRAND) plus cuDNN (in a separate folder, so a test can leave it
out). Each stub exports every symbol the installed provider library imports from it (read
with ``readelf``, with the same symbol versions), so the provider library loads with every
symbol resolved, exactly as with the real libraries; every call then fails with status 999
(cudaErrorUnknown) except the few the probe asks, which answer from environment variables:

- ``STUB_CUDA_DRIVER_VERSION`` (cuDriverGetVersion/cudaDriverGetVersion, default 13000),
- ``STUB_CUINIT_STATUS`` (cuInit, default 0), ``STUB_CUDA_DEVICES`` (device count, default 1),
- ``STUB_CUDART_STATUS`` (cudaGetDeviceCount's status, default 0),
- ``STUB_CUDNN_VERSION`` (cudnnGetVersion, default 91000).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

PROVIDER = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"

#: soname -> (version node or None, symbols the probe calls beyond the provider's imports).
LIBRARIES = {
    "libcuda.so.1": (None, ["cuInit", "cuDriverGetVersion", "cuDeviceGetCount"]),
    "libcudart.so.13": ("libcudart.so.13", ["cudaGetDeviceCount", "cudaRuntimeGetVersion",
                                            "cudaDriverGetVersion"]),
    "libcublas.so.13": ("libcublas.so.13", []),
    "libcublasLt.so.13": ("libcublasLt.so.13", []),
    "libcurand.so.10": (None, []),
}
CUDNN = {"libcudnn.so.9": ["cudnnGetVersion"], "libcudnn_ops.so.9": [],
         "libcudnn_adv.so.9": []}

_SPECIAL = {
    "cuInit": "int cuInit(unsigned f) { return env(\"STUB_CUINIT_STATUS\", 0); }",
    "cuDriverGetVersion": "int cuDriverGetVersion(int *v) "
                          "{ *v = env(\"STUB_CUDA_DRIVER_VERSION\", 13000); return 0; }",
    "cudaDriverGetVersion": "int cudaDriverGetVersion(int *v) "
                            "{ *v = env(\"STUB_CUDA_DRIVER_VERSION\", 13000); return 0; }",
    "cudaRuntimeGetVersion": "int cudaRuntimeGetVersion(int *v) { *v = 13000; return 0; }",
    "cuDeviceGetCount": "int cuDeviceGetCount(int *n) "
                        "{ *n = env(\"STUB_CUDA_DEVICES\", 1); return 0; }",
    "cudaGetDeviceCount": "int cudaGetDeviceCount(int *n) { int s = env(\"STUB_CUDART_STATUS\""
                          ", 0); *n = s ? 0 : env(\"STUB_CUDA_DEVICES\", 1); return s; }",
    "cudnnGetVersion": "unsigned long cudnnGetVersion(void) "
                       "{ return env(\"STUB_CUDNN_VERSION\", 91000); }",
    "cudaGetErrorName": "const char *cudaGetErrorName(int e) { return \"cudaErrorStub\"; }",
    "cudaGetErrorString": "const char *cudaGetErrorString(int e) "
                          "{ return \"stub CUDA runtime: no real GPU behind it\"; }",
    "cublasGetStatusName": "const char *cublasGetStatusName(int e) { return \"STUB\"; }",
    "cublasGetStatusString": "const char *cublasGetStatusString(int e) { return \"stub\"; }",
    "__cudaRegisterFatBinary": "void *__cudaRegisterFatBinary(void *f) { static void *h[8]; "
                               "return h; }",
}

_PRELUDE = """#include <stdlib.h>
static int env(const char *name, int fallback) {
    const char *v = getenv(name); return v ? atoi(v) : fallback;
}
"""


def provider_imports() -> dict[str | None, list[str]]:
    """Version node (None: unversioned) -> function names the provider library imports."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(PROVIDER)], check=True,
                         capture_output=True, text=True).stdout
    imports: dict[str | None, list[str]] = defaultdict(list)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[6] != "UND" or fields[3] != "FUNC":
            continue
        name, _, version = fields[7].partition("@")
        version = re.sub(r"\s*\(\d+\)$", "", version) or None
        imports[version].append(name)
    return imports


def _source(functions: list[str]) -> str:
    lines = [_PRELUDE]
    for name in sorted(set(functions)):
        lines.append(_SPECIAL.get(name, f"long {name}(void) {{ return 999; }}"))
    lines.append("int rnnserve_stub_marker(void) { return 1; }")
    return "\n".join(lines) + "\n"


def _compile(directory: Path, soname: str, version: str | None, functions: list[str]) -> None:
    source = directory / f"{soname}.c"
    source.write_text(_source(functions))
    command = ["gcc", "-shared", "-fPIC", "-O0", "-w", "-o", str(directory / soname),
               f"-Wl,-soname,{soname}", str(source)]
    if version:
        script = directory / f"{soname}.map"
        script.write_text(f"{version} {{ global: *; }};\n")
        command.append(f"-Wl,--version-script={script}")
    subprocess.run(command, check=True, capture_output=True)


def tools_missing() -> str:
    """Why stubs cannot be built here ("" when they can)."""
    for tool in ("gcc", "readelf"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not PROVIDER.exists():
        return f"{PROVIDER} is not in this onnxruntime build"
    return ""


def build_stubs(directory: Path) -> tuple[Path, Path]:
    """Compile the stubs; returns (cuda_dir, cudnn_dir) for LD_LIBRARY_PATH."""
    cuda_dir, cudnn_dir = directory / "cuda", directory / "cudnn"
    cuda_dir.mkdir(parents=True, exist_ok=True)
    cudnn_dir.mkdir(parents=True, exist_ok=True)
    imports = provider_imports()
    for soname, (version, extra) in LIBRARIES.items():
        functions = list(extra)
        if version is not None:
            functions += imports.get(version, [])
        elif soname == "libcuda.so.1":
            functions += [f for f in imports.get(None, []) if f.startswith("cu")
                          and not f.startswith("cuda")]
        _compile(cuda_dir, soname, version, functions)
    for soname, functions in CUDNN.items():
        _compile(cudnn_dir, soname, None, functions)
    return cuda_dir, cudnn_dir
