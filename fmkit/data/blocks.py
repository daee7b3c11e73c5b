"""Streaming a text file as blocks of whole lines, so memory never depends on file size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK_BYTES = 4 << 20


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(bytes as uint8 array, number of the block's first line)`` for a text file.

    Each block ends at a newline (except the file's last, which may lack one); a line longer than
    ``block_bytes`` is kept whole.
    """
    line = 1
    carry = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block_bytes)
            if not chunk:
                if carry:
                    yield np.frombuffer(carry, dtype=np.uint8), line
                return
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            block, carry = data[: cut + 1], data[cut + 1 :]
            yield np.frombuffer(block, dtype=np.uint8), line
            line += block.count(b"\n")
