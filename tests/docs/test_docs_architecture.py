"""docs/architecture.md's listings against the code and the files train and export write."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
from doc_blocks import ROOT, parse


def test_architecture_lists_the_server_modules_as_they_are():
    """docs/architecture.md's module table names every server/*.py, and nothing else."""
    table = next(block for block in parse("docs/architecture.md")
                 if "server/settings.py" in block.text)
    listed = []
    for line in table.text.splitlines():
        first = re.split(r"\s{2,}", line.strip())[0]
        if first.startswith("server/"):
            listed += [name if name.startswith("server/") else f"server/{name}"
                       for name in re.split(r",\s*", first)]
    modules = sorted(f"server/{p.name}" for p in (ROOT / "server").glob("*.py")
                     if p.name != "__init__.py")
    unlisted = [m for m in modules if not any(fnmatch.fnmatch(m, pattern) for pattern in listed)]
    missing = [p for p in listed if not any(fnmatch.fnmatch(m, p) for m in modules)]
    assert not unlisted, f"docs/architecture.md does not list {unlisted}"
    assert not missing, f"docs/architecture.md lists modules that do not exist: {missing}"


def _layout_block(prefix: str) -> set[str]:
    block = next(b for b in parse("docs/architecture.md") if b.text.startswith(prefix))
    return {line.split()[0].removeprefix(prefix) for line in block.text.splitlines()}


@pytest.mark.timeout(1500)   # with RNNSERVE_SLOW=1, may train the real demo
def test_architecture_layouts_are_what_train_and_export_write(demo_layout):
    """docs/architecture.md's checkpoint and repository listings, and its config.json
    example, against the files the demo's checkpoint and repository hold."""
    from rnnserve.demo import DEMO_NAMES

    checkpoint = demo_layout.root / "runs" / "demo" / "lstm"
    model = demo_layout.root / "model_repository" / DEMO_NAMES["lstm"]
    assert _layout_block("<ckpt>/") == {p.name for p in checkpoint.iterdir()}
    written = {re.sub(r"^\d+/", "<version>/", str(p.relative_to(model)))
               for p in model.rglob("*") if p.is_file()}
    assert _layout_block("<repo>/<model>/") == written
    example = next(b for b in parse("docs/architecture.md") if b.info == "json")
    assert json.loads(example.text).keys() == json.loads(
        (checkpoint / "config.json").read_text()).keys()
