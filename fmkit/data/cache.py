"""An optional binary cache of parsed text files, so later epochs and runs skip parsing.

The first full read of a file writes its parsed blocks (CSR arrays as the parser made them,
before any checks) to ``$FMKIT_CACHE_DIR`` (default ``~/.cache/fmkit``) under a name derived
from the file's absolute path, size and modification time: a changed file gets a new entry, and
an unchanged one is read back with plain ``readinto`` calls, a block at a time (memory stays
bounded by one block, as with the text). The entry is written under a temporary name and renamed
when the read completes, so an interrupted read never leaves a partial cache behind. Cached
blocks go through the same checks as parsed ones, so errors read the same.
"""

from __future__ import annotations

import glob
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fmkit import files
from fmkit.data.batch import SparseBatch

MAGIC = b"FMKITCACHE1\n"
_HEADER = struct.Struct("<qq")  # rows, nnz of one block
# the arrays of a block, in file order: (attribute, dtype, length from (rows, nnz))
_ARRAYS = (("indptr", np.int64, lambda rows, nnz: rows + 1),
           ("indices", np.int32, lambda rows, nnz: nnz),
           ("values", np.float32, lambda rows, nnz: nnz),
           ("labels", np.float32, lambda rows, nnz: rows),
           ("lines", np.int64, lambda rows, nnz: rows))
# libffm blocks also keep each nonzero's field
_FIELDS = ("fields", np.int32, lambda rows, nnz: nnz)


def _arrays(fmt: str) -> tuple:
    return (*_ARRAYS, _FIELDS) if fmt == "libffm" else _ARRAYS


def cache_dir() -> Path:
    return Path(os.environ.get("FMKIT_CACHE_DIR") or Path.home() / ".cache" / "fmkit")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cache_path(file: Path, fmt: str) -> Path:
    """Where ``file``'s cache lives: ``NAME.WHERE-WHAT.bin``, ``WHERE`` a digest of its absolute
    path and format, ``WHAT`` of its size and mtime (a changed file gets a new name)."""
    stat = file.stat()
    # "3": entries written since libffm blocks keep their fields, under two-part names
    where = _digest(f"{file.resolve()}\0{fmt}\0" + "3")
    what = _digest(f"{stat.st_size}\0{stat.st_mtime_ns}")
    return cache_dir() / f"{file.name}.{where}-{what}.bin"


def _remove_earlier_versions(entry: Path) -> None:
    """Remove the entries of the same file and format as ``entry`` that are not ``entry``: what
    the file held before it changed. A process still reading one keeps its open file."""
    where = entry.name[: entry.name.rindex("-")]
    for other in entry.parent.glob(f"{glob.escape(where)}-*.bin"):
        if other != entry:
            other.unlink(missing_ok=True)


def _write_block(out: BinaryIO, batch: SparseBatch, fmt: str) -> None:
    out.write(_HEADER.pack(batch.n_rows, batch.indices.size))
    for name, dtype, _ in _arrays(fmt):
        out.write(np.ascontiguousarray(getattr(batch, name), dtype=dtype).data)


def _read_blocks(f: BinaryIO, path: Path, source: str, fmt: str) -> Iterator[SparseBatch]:
    """The blocks of the entry ``path``, open as ``f`` (closed at the end)."""
    with f:
        if f.read(len(MAGIC)) != MAGIC:
            raise OSError(f"{path}: not an fmkit cache file")
        while header := f.read(_HEADER.size):
            rows, nnz = _HEADER.unpack(header)
            arrays = {}
            for name, dtype, length in _arrays(fmt):
                array = np.empty(length(rows, nnz), dtype=dtype)
                if f.readinto(array.data.cast("B")) != array.nbytes:
                    raise OSError(f"{path}: truncated cache file")
                arrays[name] = array
            yield SparseBatch(**arrays, source=source)


def _attempt(write: Callable[..., object], *args: object) -> bool:
    """One write to a cache entry; False if it failed (a full disk, say): the data is still
    read and yielded, only the cache is given up."""
    try:
        write(*args)
    except OSError:
        return False
    return True


def cached_blocks(file: Path, fmt: str,
                  parse: Callable[[], Iterator[SparseBatch]]) -> Iterator[SparseBatch]:
    """The parsed blocks of ``file``: from its cache entry if there is one, else from
    ``parse()``, writing the entry on the way (a failed write only loses the cache)."""
    path = cache_path(file, fmt)
    try:
        entry = open(path, "rb", buffering=0)  # noqa: SIM115 (_read_blocks closes it)
    except FileNotFoundError:  # none yet (or another process's newer entry just replaced it)
        pass
    else:
        yield from _read_blocks(entry, path, str(file), fmt)
        return
    try:
        fd, tmp = files.temporary_file(path)  # also sweeps dead processes' leftovers
        out = os.fdopen(fd, "wb")
    except (OSError, files.OutputError):
        yield from parse()
        return
    complete = False
    try:
        writing = _attempt(out.write, MAGIC)
        for batch in parse():
            writing = writing and _attempt(_write_block, out, batch, fmt)
            yield batch
        complete = writing
    finally:
        out.close()
        if complete:
            os.replace(tmp, path)
            _attempt(_remove_earlier_versions, path)
        else:
            tmp.unlink(missing_ok=True)
