"""Number formatting shared by the search report's verdicts, tables and plots.

Invariant: every function maps ``None`` to ``"n/a"`` and never raises on a missing value.
"""

from __future__ import annotations


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def count(value: int | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} M"
    if value >= 10_000:
        return f"{value / 1e3:.1f} k"
    return str(value)


def seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} ms"


def name(cell: str) -> str:
    return cell.upper()


def relative(a: float, b: float) -> float:
    """How much smaller ``a`` is than ``b`` as a fraction of ``b`` (negative: larger)."""
    return (b - a) / b if b else 0.0
