"""Streaming a text file as blocks of whole lines, so memory never depends on file size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba import njit

BLOCK_BYTES = 4 << 20


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Yield a text file as uint8 arrays of whole lines.

    Each block ends at a newline (the file's last may lack one); a line longer than the buffer
    grows it. The file is read into one reused buffer, so a yielded array is only valid until the
    next block is requested: parse it before asking for more.
    """
    buf = bytearray(block_bytes)
    filled = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            if filled == len(buf):
                grown = bytearray(2 * len(buf))
                grown[:filled] = buf
                buf = grown
            with memoryview(buf) as free:
                n = f.readinto(free[filled:])
            if not n:
                if filled:
                    yield np.frombuffer(buf, dtype=np.uint8, count=filled)
                return
            filled += n
            cut = buf.rfind(b"\n", 0, filled) + 1
            if cut == 0:
                continue
            yield np.frombuffer(buf, dtype=np.uint8, count=cut)
            rest = filled - cut
            buf[:rest] = buf[cut:filled]
            filled = rest


def iter_line_blocks(path: Path,
                     block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, int]]:
    """:func:`iter_blocks` with the number of each block's first line (readers whose parser
    counts lines itself use :func:`iter_blocks` and skip this extra pass)."""
    line = 1
    for block in iter_blocks(path, block_bytes):
        yield block, line
        line += count_newlines(block, 0, block.size)


@njit(cache=True, nogil=True)
def count_newlines(buf: np.ndarray, start: int, stop: int) -> int:
    """Newlines in ``buf[start:stop]`` (a vectorized loop)."""
    total = 0
    for q in range(start, stop):
        total += buf[q] == 10
    return total
