"""Memory for large arrays: temporary blocks go back to the OS when freed; tables that are
written whole at once get their pages in one call.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed, after which
same-sized blocks (our per-block parse arrays) come from the heap, fragment it, and peak memory
creeps up with the size of the file. Fixing the threshold at glibc's default (128 KiB) turns
that adjustment off. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap

import numpy as np

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


def prefaulted_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed C-ordered array in a mapping of its own (page-aligned, so rows of whole cache
    lines start on cache lines) whose pages the kernel maps in one call (MAP_POPULATE).

    For tables written whole right after they are made, as the training tables are: one fault
    per 4 KiB page on first touch cost 0.13-0.29 s per 128 MiB on this project's VMs, populating
    0.04 s. Where MAP_POPULATE is missing (not Linux) this is ``np.zeros``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if nbytes == 0 or populate is None:
        return np.zeros(shape, dtype)
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(mapping, dtype).reshape(shape)  # the array keeps the mapping alive
