"""Docs as tests: every example in README.md, train/DATA.md and docs/ runs (issue #15).

The marker scheme, what runs and how, is defined in tests/docs/doc_blocks.py. A doc whose
example no longer works, names a model the demo does not serve, or prints something other
than the output it shows fails here.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from doc_blocks import ROOT, DocError, doc_files, parse
from doc_commands import stale_references
from doc_session import DocSession, clone_layout, output_differs

DOCS = doc_files()


def _has_examples(path: str) -> bool:
    try:
        return any(block.runs for block in parse(path))
    except DocError:
        return True         # test_doc_examples_run reports it too


DOCS_WITH_EXAMPLES = [path for path in DOCS if _has_examples(path)]


@pytest.mark.parametrize("path", DOCS)
def test_every_block_says_what_it_is(path):
    blocks = parse(path)      # raises DocError naming the block that breaks the scheme
    for block in blocks:
        assert block.text.strip(), f"{block.where}: empty block"


@pytest.mark.parametrize("path", DOCS)
def test_json_and_yaml_blocks_parse(path):
    for block in parse(path):
        if block.info == "json":
            json.loads(block.text)
        elif block.info == "yaml":
            yaml.safe_load(block.text)


@functools.cache
def _help(program: tuple[str, ...]) -> str:
    """What documents ``program``'s flags: its ``--help``, or a script's source."""
    if program[0] == "script":
        script = ROOT / program[1]
        return script.read_text() if script.is_file() else ""
    if program[0] == "rnnserve":
        argv = [str(Path(sys.executable).parent / "rnnserve"), *program[1:]]
    else:
        argv = [sys.executable, *program[1:]]
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(program)} --help: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.parametrize("path", DOCS)
def test_illustrative_commands_name_what_exists(path):
    """Illustrative blocks do not run, but their flags, make targets and scripts exist."""
    makefile = (ROOT / "Makefile").read_text()
    problems = [problem for block in parse(path)
                if block.marker == "illustrative" and block.info in ("bash", "sh")
                for problem in stale_references(block, ROOT, makefile, _help)]
    assert not problems, "\n".join(problems)


def test_make_demo_is_rnnserve_demo():
    """The docs' servers are started with ``rnnserve demo``, the command ``make demo`` runs
    after installing; this keeps the two the same."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None and recipe[1].split() == ["$(BIN)/rnnserve", "demo"], recipe


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


def test_architecture_layouts_are_what_train_and_export_write(demo_layout):
    """docs/architecture.md's checkpoint and repository listings, and its config.json
    example, against the files the demo's checkpoint and repository hold."""
    from rnnserve.demo import DEMO_NAMES

    checkpoint = demo_layout.root / "runs" / "demo" / "lstm"
    model = demo_layout.root / "model_repository" / DEMO_NAMES["lstm"]
    assert _layout_block("<ckpt>/") == {p.name for p in checkpoint.iterdir()}
    written = {str(p.relative_to(model)).replace("1/", "<version>/", 1)
               for p in model.rglob("*") if p.is_file()}
    assert _layout_block("<repo>/<model>/") == written
    example = next(b for b in parse("docs/architecture.md") if b.info == "json")
    assert json.loads(example.text).keys() == json.loads(
        (checkpoint / "config.json").read_text()).keys()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", DOCS_WITH_EXAMPLES)
def test_doc_examples_run(path, demo_layout, tmp_path):
    session = DocSession(clone_layout(tmp_path / "clone", demo_layout.root))
    last = None
    try:
        for block in parse(path):
            if block.marker == "server":
                session.start_server(block)
            elif block.runs:
                last = session.run(block)
                assert last.code == 0, last.report() + "\n--- server log\n" + \
                    session.server_log()[-3000:]
            elif block.marker == "output" and demo_layout.real:
                difference = output_differs(block, last)
                assert difference is None, difference
    finally:
        session.close()
