"""How many cores this process may use: the CPUs it may run on, capped by a container's CPU
quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), which ``os.cpu_count()`` and numba's
default thread count do not see. More threads than the quota allows are throttled in turn, and
whatever waits on them waits a throttling period."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP) -> float | None:
    """The cores the cgroup's CPU quota allows (e.g. 1.5), or None without a quota."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may run on, at most the whole cores of its quota (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cpu_quota(root)
    if quota is not None:
        cpus = min(cpus or 1, math.floor(quota + 1e-9))
    return max(1, cpus or 1)


def limit_threads(root: Path = CGROUP) -> int:
    """Cap numba's threads at :func:`available_cpus` unless ``$NUMBA_NUM_THREADS`` chose
    them; returns the thread count."""
    import numba

    if "NUMBA_NUM_THREADS" not in os.environ:
        numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, available_cpus(root)))
    return numba.get_num_threads()
