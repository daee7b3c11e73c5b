"""gzip, bzip2 and xz: the compressions fmkit reads, told by a file's first bytes whatever its
name (Criteo's and most public click logs come as ``.gz``), and writes where an output file's
name ends in one of their suffixes (``predictions.csv.gz``), as pandas and the shell's tools
do. The readers are :func:`fmkit.data.blocks.open_input`; the writer is
:func:`fmkit.files.output_stream`."""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Codec:
    suffix: str
    magic: bytes
    reader: Callable[[BinaryIO], BinaryIO]
    writer: Callable[[BinaryIO], BinaryIO]


CODECS = (
    # (level 6: gzip's own default, a fifth of level 9's time for a few percent more bytes;
    # no name or time in the header, so the same output gives the same bytes)
    Codec(".gz", b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f),
          lambda f: gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=6,
                                  mtime=0)),
    Codec(".bz2", b"BZh", bz2.BZ2File, functools.partial(bz2.BZ2File, mode="wb")),
    Codec(".xz", b"\xfd7zXZ\x00", lzma.LZMAFile, functools.partial(lzma.LZMAFile, mode="wb")),
)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # read by none of them: said so
# what a damaged compressed stream raises while it is read
DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def by_magic(head: bytes) -> Codec | None:
    """The codec whose stream starts with ``head``, None for uncompressed bytes."""
    return next((c for c in CODECS if head.startswith(c.magic)), None)


def by_name(path: str | Path) -> Codec | None:
    """The codec an output named ``path`` is written with (by its last suffix), or None."""
    suffix = Path(path).suffix.lower()
    return next((c for c in CODECS if c.suffix == suffix), None)


def content_suffix(path: str | Path) -> str:
    """The suffix that names what a file holds, beneath a compression's: ``.csv`` for
    ``p.csv.gz`` and ``p.csv`` alike (lower case)."""
    path = Path(path)
    return Path(path.stem).suffix.lower() if by_name(path) else path.suffix.lower()


def head_of(path: str | Path, size: int) -> bytes:
    """The first ``size`` bytes ``path`` holds, decompressed when it is compressed (its own
    bytes when they do not decompress)."""
    with open(path, "rb") as f:
        head = f.read(size)
        codec = by_magic(head)
        if codec is None:
            return head
        f.seek(0)
        try:
            with codec.reader(f) as stream:
                return stream.read(size)
        except (*DECOMPRESSION_ERRORS, OSError):  # (bzip2's bad data is an OSError)
            return head
