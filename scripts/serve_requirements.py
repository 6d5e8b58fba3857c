"""Print the serve image's requirements, taken from pyproject.toml's pins.

``python3 scripts/serve_requirements.py --flavor cpu|gpu [pyproject.toml]``

pyproject's ``[serve]`` extra pins ``onnxruntime-gpu``. The GPU image installs it with its
``[cuda,cudnn]`` extras, which bring the CUDA runtime and cuDNN from PyPI (nvidia-* wheels)
so that no CUDA base image is needed; the CPU image swaps in ``onnxruntime`` at the same
version (a few MB instead of hundreds, and no CUDA libraries to find). Only the package name
and extras change; the version is pyproject's, the one place pins live.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

GPU_RUNTIME = "onnxruntime-gpu"
CPU_RUNTIME = "onnxruntime"
# onnxruntime-gpu's extras that pull the CUDA libraries it was built against from PyPI.
GPU_EXTRAS = "[cuda,cudnn]"


def serve_requirements(pyproject: Path, flavor: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["optional-dependencies"]["serve"])
    pattern = re.compile(rf"^{re.escape(GPU_RUNTIME)}(?=[=<>!~ ;]|$)")
    replacement = CPU_RUNTIME if flavor == "cpu" else GPU_RUNTIME + GPU_EXTRAS
    swapped = [pattern.sub(replacement, r) for r in requirements]
    if swapped == requirements:
        raise SystemExit(f"{pyproject}: [serve] has no plain {GPU_RUNTIME} pin to swap")
    return swapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=["cpu", "gpu"], required=True)
    parser.add_argument("pyproject", nargs="?", type=Path,
                        default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{r}\n" for r in serve_requirements(args.pyproject, args.flavor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
