"""Code exactly as the docs print it, for tests that run it against their own servers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def classify_stream():
    """``classify_stream`` as docs/server.md prints it ("A client that survives drains").

    Only the block's imports and definitions run: its last lines call the function against
    the demo's server on localhost:8001, which tests/docs runs; the tests here bring their
    own servers.
    """
    path = DOCS / "server.md"
    block = re.search(r"A client that survives drains.*?```python\n(.*?)```",
                      path.read_text(encoding="utf-8"), re.DOTALL)
    assert block, "docs/server.md lost its drain-resume example"
    tree = ast.parse(block.group(1), str(path))
    tree.body = [node for node in tree.body
                 if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef)]
    namespace: dict = {}
    exec(compile(tree, str(path), "exec"), namespace)    # noqa: S102 - our own docs
    return namespace["classify_stream"]
