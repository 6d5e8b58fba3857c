"""docs/architecture.md §3 lists the server's modules as they are: every module of server/
is named there, and every server/ path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_module_list_matches_server_package():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"server/([a-z_]+\.py)", doc))
    modules = {path.name for path in (ROOT / "server").glob("*.py")} - {"__init__.py",
                                                                         "__main__.py"}
    assert modules - named == set(), "modules missing from docs/architecture.md §3"
    assert named - modules == set(), "docs/architecture.md names modules that do not exist"
