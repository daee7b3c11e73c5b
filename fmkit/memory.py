"""Memory for large arrays: temporary blocks go back to the OS when freed; training tables get
huge pages where the system gives them, and their pages in one call.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed, after which
same-sized blocks (our per-block parse arrays) come from the heap, fragment it, and peak memory
creeps up with the size of the file. Fixing the threshold at glibc's default (128 KiB) turns
that adjustment off. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import mmap
from pathlib import Path

import numpy as np

from fmkit import cgroups
from fmkit.errors import FMKitError

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.cache
def release_large_blocks_to_os() -> bool:
    """Fix malloc's mmap threshold once per process; True if it took effect."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


HUGE_PAGE_BYTES = 2 << 20
MADV_POPULATE_WRITE = 23  # Linux 5.14+; Python's mmap module names it from 3.13 only


def prefaulted_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed C-ordered array in a mapping of its own (page-aligned, so rows of whole cache
    lines start on cache lines), on 2 MiB pages where the kernel's transparent huge pages allow
    them, with its pages mapped before it is returned.

    For tables the kernels read and write at random rows, as the training tables are: on 4 KiB
    pages nearly every row a step touches of a large table misses the processor's TLB, which
    slowed the FM's training steps markedly (docs/performance.md, session 54); numpy asks for
    huge pages for its own large arrays, but a mapping of ours gets them only when it asks.
    The pages are mapped at once (MADV_POPULATE_WRITE, else a write to each page;
    MAP_POPULATE where huge pages cannot be asked for): a fault per page on first touch cost
    more than mapping them in one call. Where MAP_POPULATE is missing (not Linux) this is
    ``np.zeros``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if nbytes == 0 or populate is None:
        return np.zeros(shape, dtype)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    huge = getattr(mmap, "MADV_HUGEPAGE", None)
    if huge is None or nbytes < HUGE_PAGE_BYTES:
        mapping = mmap.mmap(-1, nbytes, flags=flags | populate)
    else:
        mapping = mmap.mmap(-1, nbytes, flags=flags)
        with contextlib.suppress(OSError):  # transparent huge pages off: 4 KiB pages
            mapping.madvise(huge)
        try:
            mapping.madvise(MADV_POPULATE_WRITE)
        except OSError:  # an older kernel: a write to each page maps it
            np.frombuffer(mapping, np.uint8)[:: mmap.PAGESIZE] = 0
    return np.frombuffer(mapping, dtype).reshape(shape)  # the array keeps the mapping alive


class TooLarge(FMKitError):
    """The model would not fit in the memory this machine (or container) has."""


def _read_number(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().split()[0]
        return None if text == "max" else int(text)
    return None


def available_bytes(root: Path = cgroups.ROOT, proc: Path = cgroups.PROC) -> int | None:
    """Memory a new allocation can get: the kernel's MemAvailable, or less under the memory
    limit of this process's cgroup or a parent's (a container's, a systemd unit's
    ``MemoryMax=``: :func:`fmkit.cgroups.limiting`); None where neither is known (not
    Linux)."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    limit_name, usage_name = (("memory.max", "memory.current") if cgroups.unified(root) else
                              ("memory.limit_in_bytes", "memory.usage_in_bytes"))
    for directory in cgroups.limiting("memory", root, proc):
        limit = _read_number(directory / limit_name)
        if limit is not None and limit < 1 << 60:
            found.append(max(limit - (_read_number(directory / usage_name) or 0), 0))
    return min(found) if found else None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(what: str, parts: list[tuple[str, float]], advice: str,
               held: str = "its weights and optimizer state") -> None:
    """Refuse, before anything is allocated, a model whose ``parts`` (name, bytes) exceed the
    memory available: one message with the estimate, the largest parts and what to change
    (instead of a MemoryError or an allocator's traceback after seconds of work). ``held``:
    what the parts are, in the message."""
    total = sum(size for _, size in parts)
    available = available_bytes()
    if available is None or total <= available:
        return
    largest = sorted(parts, key=lambda part: -part[1])[:3]
    shown = "; ".join(f"{name}: {_size(size)}" for name, size in largest)
    raise TooLarge(f"{what} needs about {_size(total)} for {held}, "
                   f"more than the {_size(available)} of memory available (largest: {shown}). "
                   f"{advice}")
