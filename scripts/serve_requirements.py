"""Print the serve image's requirements, taken from pyproject.toml's pins.

``python3 scripts/serve_requirements.py --flavor cpu|gpu [pyproject.toml]``

pyproject's ``[serve]`` extra pins ``onnxruntime-gpu``. The GPU image installs it as is; the
CPU image swaps in ``onnxruntime`` at the same version (a few MB instead of hundreds, and no
CUDA libraries to find). Reading the pins from pyproject keeps it the one place they live.
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


def serve_requirements(pyproject: Path, flavor: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["optional-dependencies"]["serve"])
    if flavor == "cpu":
        pattern = re.compile(rf"^{re.escape(GPU_RUNTIME)}(?=[=<>!~ ;\[]|$)")
        swapped = [pattern.sub(CPU_RUNTIME, r) for r in requirements]
        if swapped == requirements:
            raise SystemExit(f"{pyproject}: [serve] has no {GPU_RUNTIME} pin to swap")
        requirements = swapped
    return requirements


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
