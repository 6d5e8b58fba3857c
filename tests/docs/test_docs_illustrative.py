"""Illustrative blocks do not run; what they name must still exist (tests/docs/doc_commands.py)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import ROOT, doc_files, parse
from doc_commands import stale_references


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


@pytest.mark.parametrize("path", doc_files())
def test_illustrative_commands_name_what_exists(path):
    """Illustrative blocks do not run, but their flags, make targets and scripts exist."""
    makefile = (ROOT / "Makefile").read_text()
    problems = [problem for block in parse(path)
                if block.marker == "illustrative" and block.info in ("bash", "sh")
                for problem in stale_references(block, ROOT, makefile, _help)]
    assert not problems, "\n".join(problems)
