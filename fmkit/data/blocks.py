"""Streaming a text file as blocks of whole lines, so memory never depends on file size.

Every reader opens its input through :func:`open_input`, which decompresses gzip, bzip2 and xz
files as they stream (told by their magic number, whatever their name): Criteo's and most
public click logs are distributed as ``.gz``. It also notes the files it has open, so a
:class:`PassMeter` can tell how far a pass has read.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from fmkit.compile_cache import kernel
from fmkit.compression import DECOMPRESSION_ERRORS, ZSTD_MAGIC, by_magic
from fmkit.errors import DataError

BLOCK_BYTES = 4 << 20
BOM = b"\xef\xbb\xbf"
T = TypeVar("T")
# each input file open for reading, by path (as given): its file on disk, whose offset says how
# far reading has come (PassMeter)
_OPEN: dict[str, BinaryIO] = {}


@contextlib.contextmanager
def open_input(path: str | Path) -> Iterator[BinaryIO]:
    """``path``'s bytes: as stored, or decompressed when it is gzip, bzip2 or xz, without the
    UTF-8 byte-order mark Windows tools put first (Excel's "CSV UTF-8"). Reading a damaged
    compressed file raises :class:`~fmkit.errors.DataError` naming it. Works on pipes (the
    first bytes are peeked, not read)."""
    with open(path, "rb") as f, _noted(str(path), f):
        head = f.peek(6)[:6]
        if head.startswith(ZSTD_MAGIC):
            raise DataError(str(path), None, "is zstd-compressed: decompress it first (zstd -d); "
                            "fmkit reads gzip, bzip2 and xz files as they are")
        codec = by_magic(head)
        if codec is None:
            yield _past_bom(f)
            return
        try:
            with codec.reader(f) as stream:
                yield _past_bom(stream)
        except DECOMPRESSION_ERRORS as e:
            raise DataError(str(path), None, f"cannot decompress: {e or 'the file is truncated'}"
                            ) from None


@contextlib.contextmanager
def _noted(path: str, f: BinaryIO) -> Iterator[None]:
    """``f`` noted as the open file of ``path`` while the block runs."""
    _OPEN[path] = f
    try:
        yield
    finally:
        if _OPEN.get(path) is f:
            del _OPEN[path]


class PassMeter:
    """Counts the rows a pass over ``files`` (read in this order, each through
    :func:`open_input`) yields and, as each batch is yielded, the share of the files' bytes
    read (a compressed file's compressed bytes): from the two, the pass's total rows, which a
    first epoch's progress shows. Both are taken where the rows are read, so rows held ahead of
    training (read ahead, a shuffle buffer) do not bias the guess."""

    GUESS_AFTER = 0.01  # the share of the bytes to read before guessing

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self.progress: tuple[int, float] = (0, 0.0)  # (rows, share of bytes), set together

    def counted(self, batches: Iterator[T]) -> Iterator[T]:
        """``batches`` (each with ``n_rows``), counted as a new pass."""
        names = [str(file) for file in self.files]
        sizes = [file.stat().st_size if file.is_file() else 0 for file in self.files]
        before = list(itertools.accumulate(sizes, initial=0))  # bytes of the files before each
        rows, at, self.progress = 0, 0, (0, 0.0)
        for batch in batches:
            rows += batch.n_rows
            # the open file: the one read last, or one after it (files are read in order)
            at = next((i for i in range(at, len(names)) if names[i] in _OPEN), at)
            f = _OPEN.get(names[at]) if names else None
            if f is not None and before[-1]:  # (pipes have no size)
                self.progress = rows, (before[at] + min(f.tell(), sizes[at])) / before[-1]
            yield batch

    def estimated_rows(self) -> int | None:
        """The pass's rows, guessed; None before there is enough to guess from."""
        rows, fraction = self.progress
        return round(rows / fraction) if fraction >= self.GUESS_AFTER else None


def compressed(path: str | Path) -> bool:
    """Whether ``path`` starts as a compressed stream (gzip, bzip2, xz or zstd): its size on
    disk says little of its rows'."""
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith(ZSTD_MAGIC) or by_magic(head) is not None


def _past_bom(stream):
    """``stream`` after a UTF-8 byte-order mark, if it starts with one."""
    if stream.peek(3)[:3] == BOM:
        stream.read(3)
    return stream


def read_input(path: str | Path) -> bytes:
    """A whole input file's bytes, decompressed (see :func:`open_input`): for inputs that are
    held in memory anyway (a recommendation catalogue, a JSON request body)."""
    with open_input(path) as f:
        return f.read()


def read_input_lines(path: str | Path) -> Iterator[str]:
    """An input file's lines (decompressed, see :func:`open_input`), as UTF-8 text without
    their line ends, one at a time: for inputs read record by record, which must not be held
    whole (the contexts of ``fmkit recommend``). A missing or unreadable file, or a line that
    is not UTF-8, is a :class:`~fmkit.errors.DataError` naming it (and the line)."""
    number = 0
    try:
        with open_input(path) as f:
            for number, raw in enumerate(f, start=1):  # noqa: B007 (the error names it)
                yield raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError(str(path), number, "not valid UTF-8 text") from None
    except OSError as e:
        raise DataError(str(path), None, f"cannot read: {e.strerror or e}") from None


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Yield a text file as uint8 arrays of whole lines.

    Each block ends at a newline (the file's last may lack one); a line longer than the buffer
    grows it. The file is read into one reused buffer, so a yielded array is only valid until the
    next block is requested: parse it before asking for more.
    """
    buf = bytearray(block_bytes)
    filled = 0
    with open_input(path) as f:
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


@kernel(nogil=True, allocates=False)
def count_newlines(buf: np.ndarray, start: int, stop: int) -> int:
    """Newlines in ``buf[start:stop]`` (a vectorized loop: on unsigned positions, which need
    no negative-index check, 4x the bytes a second of signed ones)."""
    total = 0
    for q in range(np.uintp(start), np.uintp(stop)):
        total += buf[q] == 10
    return total
