"""Figures the fault tests measure (cases tried, requests, errors, RSS), collected for the
end-of-run summary that tests/conftest.py prints, so CI logs carry them without ``-s``."""

from __future__ import annotations

LINES: list[str] = []


def report(text: str) -> None:
    """Print ``text`` (seen with ``-s``) and keep it for the terminal summary."""
    text = text.strip("\n")
    print("\n" + text)
    LINES.append(text)
