"""Keep streaming memory flat: large temporary arrays go back to the OS when freed.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed, after which
same-sized blocks (our per-block parse arrays) come from the heap, fragment it, and peak memory
creeps up with the size of the file. Fixing the threshold at glibc's default (128 KiB) turns
that adjustment off. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

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
