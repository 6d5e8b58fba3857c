"""How many CPUs this process may use, and what ``--workers auto`` means.

Invariant: ``available_cpus()`` is at least 1 and never more than the CPUs the process may
run on (taskset / cpuset affinity) nor than its cgroup CPU quota rounded up (a container
limited to 2 CPUs on a 64-core host counts 2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: cgroup v2 CPU limit of the current cgroup: "<quota> <period>" or "max <period>".
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _quota_cpus() -> int | None:
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may use (affinity, then the cgroup quota)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _quota_cpus()
    return max(1, min(cpus, quota) if quota else cpus)


def resolve_workers(workers: int | str) -> int:
    """Front-end processes for ``--workers``: ``auto`` = the CPUs available, else the number."""
    if workers == "auto":
        return available_cpus()
    return max(1, int(workers))
