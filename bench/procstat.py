"""Process-group CPU time and memory from /proc (Linux), for server-side cost per request."""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after the last ')' is fixed.
    return text[text.rfind(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (a server and the helpers it spawned)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def group_cpu_seconds(pgid: int | None) -> float | None:
    """User+system CPU seconds of every live process in group ``pgid`` (None if unknown)."""
    if not pgid:
        return None
    total = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICKS


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """``tid -> (thread name, user+system CPU seconds)`` for every thread of ``pid``."""
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return threads


def thread_cpu_delta(before: dict, after: dict, top: int = 8) -> list[dict]:
    """CPU seconds each thread used between two ``thread_cpu_seconds`` snapshots, largest
    first (``name/tid``; the rest summed as ``others``)."""
    rows = []
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        if used > 0:
            rows.append({"thread": f"{name}/{tid}", "cpu_s": used})
    rows.sort(key=lambda row: -row["cpu_s"])
    if len(rows) > top:
        rows = rows[:top] + [{"thread": "others", "cpu_s": sum(r["cpu_s"] for r in rows[top:])}]
    return rows
