"""Streaming a text file as blocks of whole lines, so memory never depends on file size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK_BYTES = 4 << 20


def iter_line_blocks(path: Path,
                     block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(bytes as a uint8 array, number of the block's first line)`` for a text file.

    Each block ends at a newline (the file's last may lack one); a line longer than the buffer
    grows it. The file is read into one reused buffer, so a yielded array is only valid until the
    next block is requested: parse it before asking for more.
    """
    buf = bytearray(block_bytes)
    filled = 0
    line = 1
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
                    yield np.frombuffer(buf, dtype=np.uint8, count=filled), line
                return
            filled += n
            cut = buf.rfind(b"\n", 0, filled) + 1
            if cut == 0:
                continue
            yield np.frombuffer(buf, dtype=np.uint8, count=cut), line
            line += buf.count(b"\n", 0, cut)
            rest = filled - cut
            buf[:rest] = buf[cut:filled]
            filled = rest
