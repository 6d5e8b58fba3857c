"""docs/architecture.md's listings against the code and the files train and export write."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
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


def _sketched_classes() -> dict[str, str]:
    """Class name -> its part of the interface sketches (illustrative python blocks)."""
    classes = {}
    for block in parse("docs/architecture.md"):
        if block.info == "python" and block.marker == "illustrative":
            for part in re.split(r"^(?=class )", block.text, flags=re.MULTILINE):
                if part.startswith("class "):
                    classes[re.match(r"class (\w+)", part)[1]] = part
    return classes


def _server_class(name: str):
    for path in sorted((ROOT / "server").glob("*.py")):
        if re.search(rf"^class {name}\b", path.read_text(), re.MULTILINE):
            return getattr(importlib.import_module(f"rnnserve.server.{path.stem}"), name)
    raise AssertionError(f"docs/architecture.md sketches class {name}; server/ has none")


@pytest.mark.parametrize("name", sorted(_sketched_classes()))
def test_architecture_sketches_name_real_methods_and_fields(name):
    """Each sketched method exists (async where the sketch says so) and takes the parameters
    the sketch names; each sketched field is one the class has."""
    sketch, cls = _sketched_classes()[name], _server_class(name)
    source = inspect.getsource(cls)
    for is_async, method, params in re.findall(r"(async\s+)?def\s+(\w+)\s*\(([^)]*)\)", sketch):
        real = getattr(cls, method, None)
        assert real is not None, f"{name}.{method} does not exist"
        assert bool(is_async) == inspect.iscoroutinefunction(real), f"{name}.{method} async?"
        named = {m[1] for p in params.split(",") if (m := re.match(r"\s*\**(\w+)", p))}
        missing = named - {"self"} - set(inspect.signature(real).parameters)
        assert not missing, f"{name}.{method} has no parameters {sorted(missing)}"
    body = re.sub(r"(async\s+)?def\s+\w+\s*\([^)]*\)[^\n]*", "", sketch.split("\n", 1)[1])
    for field in re.findall(r"(?:^|;)\s*(\w+):", body, re.MULTILINE):
        known = (field in getattr(cls, "__dataclass_fields__", {}) or hasattr(cls, field)
                 or f"self.{field} =" in source or f"self.{field}:" in source)
        assert known, f"{name}.{field} is not a field of {cls.__module__}.{name}"
