"""What an illustrative shell block refers to, so that it cannot drift unnoticed either.

An illustrative block does not run, but its commands still name things that exist now:
``rnnserve SUB`` and ``python -m rnnserve.X`` with their ``--flags`` (each must appear in
that command's ``--help``), the project's ``*.sh`` scripts (the file, and each flag given in
its source: a script is never run to ask, some ignore ``--help``) and ``make TARGET`` (a
Makefile target). Placeholders (``R``, ``<repo>``, ``[--precision int8]``) are fine: only
flag names, targets and script paths are checked.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from doc_blocks import Block

_OPERATORS = {"&&", "||", "|", ";", "&"}
_PYTHONS = {"python", "python3"}


@dataclass(frozen=True)
class Command:
    """``program``: ``("rnnserve", SUB)``, ``("python", "-m", MODULE)`` or ``("script", PATH)``,
    and the flags the block gives it."""

    program: tuple[str, ...]
    flags: tuple[str, ...]


def logical_lines(text: str) -> list[list[str]]:
    """The block's commands as shell words: continuations joined, comments dropped,
    optional-argument brackets (``[--x y]``) removed."""
    joined = re.sub(r"\\\n", " ", text)
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        lines.append([word.strip("[]") for word in words if word.strip("[]")])
    return lines


def project_commands(block: Block) -> list[Command]:
    found = []
    for words in logical_lines(block.text):
        for i, word in enumerate(words):
            if word == "rnnserve" and i + 1 < len(words):
                program, rest = ("rnnserve", words[i + 1]), words[i + 2:]
            elif (word in _PYTHONS and words[i + 1:i + 2] == ["-m"]
                  and words[i + 2:i + 3] and words[i + 2].startswith("rnnserve.")):
                program, rest = ("python", "-m", words[i + 2]), words[i + 3:]
            elif word.endswith(".sh") and "/" in word:
                program, rest = ("script", word), words[i + 1:]
            else:
                continue
            found.append(Command(program, _flags(rest)))
    return found


def make_targets(block: Block) -> list[str]:
    return [words[i + 1] for words in logical_lines(block.text)
            for i, word in enumerate(words[:-1]) if word == "make" and words[i + 1][0] != "-"]


def scripts(block: Block) -> list[str]:
    return [word for words in logical_lines(block.text) for word in words
            if word.endswith(".sh") and "/" in word]


def _flags(words: list[str]) -> tuple[str, ...]:
    flags = []
    for word in words:
        if word == "--" or word in _OPERATORS:
            break
        if word.startswith("--"):
            flags.append(word.split("=", 1)[0])
    return tuple(flags)


def stale_references(block: Block, root: Path, makefile: str,
                     documentation: Callable[[tuple[str, ...]], str]) -> list[str]:
    """What ``block`` names that no longer exists; ``documentation(program)`` is the text
    that documents a program's flags (its --help, or a script's source)."""
    problems = []
    for command in project_commands(block):
        text = documentation(command.program)
        problems += [f"{block.where}: {' '.join(command.program)} has no {flag}"
                     for flag in command.flags if flag not in text]
    problems += [f"{block.where}: no make target {target!r}" for target in make_targets(block)
                 if not re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE)]
    problems += [f"{block.where}: no script {script}" for script in scripts(block)
                 if not (root / script).is_file()]
    return problems
