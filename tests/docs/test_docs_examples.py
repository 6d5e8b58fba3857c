"""Docs as tests: every example in README.md, train/DATA.md and docs/ runs (issue #15).

The marker scheme, what runs and how, is defined in tests/docs/doc_blocks.py. A doc whose
example no longer works, names a model the demo does not serve, or prints something other
than the output it shows fails here.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from doc_blocks import ROOT, DocError, doc_files, parse
from doc_session import DocSession, clone_layout, output_differs

DOCS = doc_files()
#: Tests on the demo's models: with RNNSERVE_SLOW=1 the first of them trains the real demo
#: (minutes on a busy 2-core machine; tests/conftest.py ``demo_outputs``).
ON_DEMO_MODELS = pytest.mark.timeout(1500)


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


def test_make_demo_is_rnnserve_demo():
    """The docs' servers are started with ``rnnserve demo``, the command ``make demo`` runs
    after installing; this keeps the two the same."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None and recipe[1].split() == ["$(BIN)/rnnserve", "demo"], recipe


@ON_DEMO_MODELS
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
