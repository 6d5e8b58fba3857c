"""The fenced code blocks of the project's docs, and what the docs test does with each.

This docstring is the one definition of the marker scheme (the README's "Tests" section
points here). An HTML comment on the line right before a fence says how a block is treated:

- no marker, info string ``bash``, ``sh`` or ``python``: an example. It runs, in document
  order, in a directory laid out like a clone after ``make demo`` (the project's files,
  ``model_repository/`` and ``runs/demo/`` holding the demo's ``sentiment-lstm`` and
  ``sentiment-gru``), bash as ``bash -e -o pipefail``, python with the project's interpreter,
  and must exit 0 within its timeout.
- ``<!-- server -->`` before a ``bash`` block: the block starts the server that the file's
  later examples talk to. It runs in the background until the file's last block has run; the
  next block starts once gRPC health answers SERVING on the block's ``--port`` (default 8001).
- ``<!-- output -->`` before a ``text`` block: what the example right above it prints,
  compared as doctest does with ELLIPSIS and NORMALIZE_WHITESPACE (``...`` matches anything).
  Outputs name the demo models' answers, so they are compared when the served models are the
  demo's own (RNNSERVE_SLOW=1, as in CI); with the quick stand-in models only exit status is.
- ``<!-- illustrative: REASON -->``: not run. REASON says why it cannot run in CI (a GPU, an
  image build, a dataset rnnserve does not ship, minutes of benchmark) and is required.

Any other info string (``text``, ``json``, ``yaml``, ``promql``) is not an example and never
runs; ``json`` and ``yaml`` blocks must parse. A fence without an info string, an unknown
marker or a marker on the wrong kind of block fails the docs test: every block says what it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Generated pages are not hand-written docs: docs/search/report.md is written by
#: rnnserve.train.report and records the command its run used.
GENERATED = {"docs/search/report.md"}

RUNNABLE = {"bash", "sh", "python"}
DATA = {"text", "json", "yaml", "promql"}
MARKERS = {"server", "output", "illustrative"}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+)(?P<info>.*)$")
_MARKER = re.compile(r"^<!--\s*(?P<name>[a-z-]+)\s*(?::\s*(?P<reason>.*?))?\s*-->$")


def doc_files() -> list[str]:
    """The docs whose blocks are checked, relative to the project root."""
    paths = ["README.md", "train/DATA.md"]
    paths += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
    return [p for p in paths if p not in GENERATED]


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence."""

    path: str
    line: int
    info: str
    text: str
    marker: str | None = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.info in RUNNABLE and self.marker in (None, "server")


class DocError(ValueError):
    """A block the scheme above does not allow; the message says where and why."""


def parse(path: str) -> list[Block]:
    """Every fenced block of ``path`` (relative to the root), validated against the scheme."""
    return parse_text(path, (ROOT / path).read_text(encoding="utf-8"))


def parse_text(path: str, markdown: str) -> list[Block]:
    """:func:`parse` for markdown already read; ``path`` only names it in errors."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, ticks, info = fence["indent"], fence["ticks"], fence["info"].strip()
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i].removeprefix(indent))
            i += 1
        if i == len(lines):
            raise DocError(f"{path}:{start + 1}: fence never closed")
        i += 1
        marker, reason = _marker_before(lines, start, path)
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n", marker, reason))
    _validate(blocks)
    return blocks


def _marker_before(lines: list[str], fence: int, path: str) -> tuple[str | None, str]:
    previous = lines[fence - 1].strip() if fence > 0 else ""
    if not previous.startswith("<!--"):
        return None, ""
    match = _MARKER.match(previous)
    if match is None or match["name"] not in MARKERS:
        raise DocError(f"{path}:{fence}: {previous!r} is not a docs-test marker "
                       f"({', '.join(sorted(MARKERS))}; tests/docs/doc_blocks.py)")
    return match["name"], (match["reason"] or "").strip()


def _validate(blocks: list[Block]) -> None:
    previous: Block | None = None
    for block in blocks:
        if not block.info:
            raise DocError(f"{block.where}: a fence without an info string; say what the block "
                           f"is ({', '.join(sorted(RUNNABLE | DATA))})")
        if block.info not in RUNNABLE | DATA:
            raise DocError(f"{block.where}: unknown info string {block.info!r}")
        if block.marker == "illustrative" and not block.reason:
            raise DocError(f"{block.where}: <!-- illustrative: REASON --> needs its reason")
        if block.marker == "server" and block.info != "bash":
            raise DocError(f"{block.where}: <!-- server --> marks a bash block")
        if block.marker == "output" and (block.info != "text" or previous is None
                                         or not previous.runs):
            raise DocError(f"{block.where}: <!-- output --> marks a text block right after an "
                           f"example that runs")
        if block.marker in ("server", "illustrative") and block.info not in RUNNABLE:
            raise DocError(f"{block.where}: only bash and python blocks are examples")
        previous = block
