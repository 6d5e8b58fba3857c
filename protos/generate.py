"""Regenerate the Python code for ``protos/rnnserve/v1/*.proto``.

Usage: ``python -m rnnserve.protos.generate`` (or ``python protos/generate.py``).

The generated modules are committed, flat, next to this file (``sentiment_pb2.py``,
``sentiment_pb2.pyi``, ``sentiment_pb2_grpc.py``), and imported as
``rnnserve.protos.sentiment_pb2``. protoc writes ``from rnnserve.v1 import sentiment_pb2``
into the gRPC module; that import is rewritten to ``from rnnserve.protos import ...``.
The descriptors keep their proto path (``rnnserve/v1/sentiment.proto``), which is what
server reflection shows.

Invariant: the committed files equal the output of :func:`generate` for the committed
``.proto`` files (tests/server/test_protos.py checks it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("rnnserve/v1/sentiment.proto",)
PACKAGE = "rnnserve.protos"


def _postprocess(name: str, text: str) -> str:
    """Point imports of sibling generated modules at the installed package; mark stubs
    as generated for ruff (pyproject excludes only ``*_pb2*.py``)."""
    if name.endswith(".pyi"):
        text = "# ruff: noqa\n" + text
    return re.sub(r"^from rnnserve\.v1 import (\w+_pb2)", rf"from {PACKAGE} import \1",
                  text, flags=re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) for every proto and write the flat modules into ``out_dir``."""
    import grpc_tools  # dev dependency, only needed to regenerate
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTO_FILES:
            args = [
                "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", proto,
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed for {proto}")
        for produced in sorted(Path(tmp).rglob("*_pb2*.py*")):
            target = out_dir / produced.name
            target.write_text(_postprocess(produced.name, produced.read_text(encoding="utf-8")),
                              encoding="utf-8")
            written.append(target)
    return written


def main() -> int:
    for path in generate(PROTO_ROOT):
        print(path.relative_to(PROTO_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
