"""Writing to the filesystem without destroying what fmkit did not create.

Every file or directory fmkit writes goes through here:

* :func:`guard_directory` refuses to replace a directory that is not empty and does not hold
  what fmkit writes there (a model, checkpoints): a mistyped ``--model-dir data/`` must never
  delete a user's data.
* :func:`temporary_dir` / :func:`temporary_file` make the hidden ``.NAME.partial-HOST-PID-*``
  beside a destination that is renamed into place when complete. Their names carry the host
  and process id, so the next write to the same place sweeps the leftovers of processes that
  died (``kill -9``) before they could clean up (:func:`sweep_stale`).
* :func:`output_stream` writes an output file: a regular file (or a new one) through a
  temporary name and a rename, with the mode the umask gives; ``-`` and ``/dev/stdout`` to
  standard output, a FIFO or a device (``/dev/null``) directly, never replaced; a symbolic
  link's target, never the link (:func:`through_links`; model and checkpoint directories
  too). A file the user names
  (``fmkit predict --output``, ``convert -o``, ``recommend --output``, ``report --output``)
  is replaced only when empty or when its first bytes are what that command writes
  (:class:`Recognise`; a compressed file's, decompressed): a mistyped ``--output
  data.libsvm`` must not delete the data. A data output named ``.gz``, ``.bz2`` or ``.xz`` is
  written compressed so (``compress=True``, :mod:`fmkit.compression`).
* :func:`append_text` adds a line to a results file another run may have started (FuxiCTR's
  ``run_expid.py`` results, TorchEasyRec's ``eval_result.txt``), when :class:`Recognise`
  knows it as one.

Filesystem failures (a missing or read-only directory, a full disk) become one
:class:`OutputError` naming the path, and no partial file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fmkit import compression
from fmkit.errors import FMKitError, excerpt

_PARTIAL = ".partial-"
_HOST = socket.gethostname().replace("-", "_") or "host"


class OutputError(FMKitError):
    """A path fmkit was asked to write cannot be written, or must not be replaced."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


HEAD_BYTES = 4096  # what a :class:`Recognise` test reads of an existing file


class Recognise:
    """What a command writes to a file the user names, and how to tell such a file from its
    first :data:`HEAD_BYTES`: a non-empty file the test does not recognise is refused."""

    def __init__(self, holds: str, test: Callable[[bytes], bool] | None = None,
                 file_test: Callable[[Path, bytes], bool] | None = None):
        self.holds = holds  # "fmkit's predictions"...: the message says the file is not that
        # the test of the file's head; or of the file and its head, for files the head alone
        # cannot tell (a Parquet file: its footer)
        self.test, self.file_test = test, file_test

    def refuse_foreign(self, path: Path) -> None:
        """Raise :class:`OutputError` when ``path`` holds something this writer does not
        write; a missing or empty file passes."""
        try:
            head = compression.head_of(path, HEAD_BYTES)  # (a compressed file's content)
        except FileNotFoundError:
            return
        except OSError as e:
            raise OutputError(path, f"cannot read what is there: {describe_os_error(e)}"
                              ) from None
        if head and not (self.file_test(path, head) if self.file_test else self.test(head)):
            shown = excerpt(head[:24], 24)
            raise OutputError(path, f"exists and is not {self.holds} (it starts {shown}); "
                              "nothing was changed: remove it or choose another name")


# For data files (converted channels, training pairs): what fmkit writes there cannot be told
# from the user's own data, so only a missing or empty file is written.
ONLY_EMPTY = Recognise("empty (data fmkit writes cannot be told from yours)", lambda head: False)


def describe_os_error(error: OSError) -> str:
    """``strerror`` without Python's ``[Errno N]`` decoration (a full disk, a read-only
    directory...)."""
    return error.strerror or str(error)


def _prefix(destination: Path) -> str:
    return f".{destination.name}{_PARTIAL}{_HOST}-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(destination: Path) -> list[Path]:
    """Remove the temporary siblings of ``destination`` that processes of this host left when
    they died; returns what was removed. Live writers' files and other hosts' are kept."""
    parent = destination.parent
    stem = f".{destination.name}{_PARTIAL}{_HOST}-"
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(stem):
            continue
        pid_text = entry.name[len(stem):].split("-", 1)[0]
        if not pid_text.isdigit() or process_alive(int(pid_text)):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed


def _make_parent(destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(destination.parent, f"cannot create the directory: "
                          f"{describe_os_error(e)}") from None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temporary_dir(destination: Path) -> Path:
    """A new hidden directory beside ``destination`` (created with its parents), after
    sweeping dead processes' leftovers; its mode is what the umask gives a new directory
    (not mkdtemp's 0700), so it can be renamed into place as is."""
    _make_parent(destination)
    sweep_stale(destination)
    try:
        path = Path(tempfile.mkdtemp(prefix=_prefix(destination), dir=destination.parent))
    except OSError as e:
        raise OutputError(destination, f"cannot write here: {describe_os_error(e)}") from None
    os.chmod(path, 0o777 & ~_umask())
    return path


def temporary_file(destination: Path, make_parent: bool = True) -> tuple[int, Path]:
    """``(fd, path)`` of a new hidden file beside ``destination`` with the mode a new file
    gets under the umask (not mkstemp's 0600); ``make_parent`` creates missing directories
    (else a missing one is an error, as for a shell's redirection)."""
    if make_parent:
        _make_parent(destination)
    elif not destination.parent.is_dir():
        raise OutputError(destination, f"cannot write: no such directory "
                          f"{str(destination.parent)!r}")
    sweep_stale(destination)
    try:
        fd, name = tempfile.mkstemp(prefix=_prefix(destination), dir=destination.parent)
    except OSError as e:
        raise OutputError(destination, f"cannot write here: {describe_os_error(e)}") from None
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(name)


def guard_directory(path: str | Path, is_ours: Callable[[Path], bool], what: str) -> Path:
    """``path`` as an absolute path if fmkit may write ``what`` there: it does not exist, is
    an empty directory, or ``is_ours`` recognises its content. Anything else is refused with
    an :class:`OutputError` and left untouched."""
    path = through_links(path).absolute()
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputError(path, f"exists and is not a directory: choose a new path for the "
                          f"{what}")
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise OutputError(path, f"cannot read the directory: {describe_os_error(e)}") from None
    if entries and not is_ours(path):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputError(path, f"is not empty and does not hold an fmkit {what} (it holds "
                          f"{shown}); nothing was changed: choose a new or empty directory")
    return path


def through_links(path: str | Path) -> Path:
    """Where a write to ``path`` lands: a symbolic link's target (its absolute path), as a
    shell's redirection writes through a link; any other path as it is. Renaming a new file
    or directory onto the link itself would replace the link (``/dev/stdout`` when output is
    redirected to a file, a ``latest -> models/v3`` link) and leave its target as it was."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # written as ``-`` is


def require_apart(first: Path, first_name: str, second: Path, second_name: str) -> None:
    """Refuse two output directories of which one is, or lies within, the other."""
    a, b = (Path(os.path.realpath(p)) for p in (first, second))
    if a == b or a in b.parents or b in a.parents:
        where = "is" if a == b else "lies within" if a in b.parents else "holds"
        raise OutputError(second, f"{second_name} {where} {first_name}: they need directories "
                          "of their own")


def _special(path: Path) -> bool:
    """An existing path that is not a regular file (a FIFO, a character or block device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _about_output(error: OSError, *paths: Path) -> bool:
    """True when ``error`` came from writing the output (a write names no file), not from
    reading an input inside the ``with`` block."""
    return error.filename is None or any(str(error.filename) == str(p) for p in paths)


def copy_file(source: str | Path, path: str | Path) -> None:
    """Copy ``source`` to ``path`` as :func:`output_stream` writes: an interrupted copy
    leaves no partial file at ``path``."""
    with open(source, "rb") as f, output_stream(path) as out:
        shutil.copyfileobj(f, out, 1 << 20)


def require_new(path: str | Path, command: str) -> None:
    """Refuse to write ``path`` when something is there already: commands that make a new
    file (``fmkit export``, ``fmkit config convert -o``) never replace one."""
    if Path(path).exists() or Path(path).is_symlink():
        raise OutputError(path, f"exists; {command} writes a new file (remove it first)")


def appendable(path: str | Path, named: Recognise) -> Path:
    """``path`` (a link's target) if :func:`append_text` may add to it: missing, empty, or a
    regular file ``named`` recognises; anything else is an :class:`OutputError`."""
    path = through_links(path)
    if path.exists() and not path.is_file():  # (a FIFO's reading would wait for a writer)
        raise OutputError(path, "exists and is not a file")
    named.refuse_foreign(path)
    return path


def append_text(path: str | Path, text: str, named: Recognise) -> None:
    """Add ``text`` (UTF-8) to the end of ``path`` in one write, making the file when
    missing: a results file that runs add a line to, as the tools whose files fmkit writes
    add to theirs. A path :func:`appendable` refuses is left unchanged."""
    path = appendable(path, named)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OutputError(path, f"cannot write: {describe_os_error(e)}") from None


def write_text(path: str | Path, text: str, named: Recognise | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`output_stream` writes: under a temporary
    name, renamed into place when complete."""
    with output_stream(path, named) as out:
        out.write(text.encode())


@contextlib.contextmanager
def _compressed(stream: BinaryIO, path: Path, compress: bool) -> Iterator[BinaryIO]:
    """``stream``, or with ``compress`` a compressing stream into it when ``path`` is named
    ``.gz``, ``.bz2`` or ``.xz`` (:mod:`fmkit.compression`), ended before ``stream`` is."""
    codec = compression.by_name(path) if compress else None
    if codec is None:
        yield stream
        return
    with codec.writer(stream) as packed:
        yield packed


@contextlib.contextmanager
def output_stream(path: str | Path | None, named: Recognise | None = None, *,
                  compress: bool = False) -> Iterator[BinaryIO]:
    """A binary stream for an output file; see the module docstring. ``None`` or ``-`` is
    stdout. ``named``: the file is the user's choice, and an existing one is replaced only
    when ``named`` recognises it (None: a file in a directory fmkit guards). ``compress``: a
    file named ``.gz``, ``.bz2`` or ``.xz`` is written compressed so (data files: predictions,
    converted channels). On any exception the temporary file is removed and a filesystem
    error becomes an :class:`OutputError` naming ``path``."""
    if path is None or str(path) in ("-", *STDOUT_NAMES):
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    path = through_links(path)
    if path.is_dir():
        raise OutputError(path, "is a directory: give a file name")
    if _special(path):
        try:
            stream = open(path, "wb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise OutputError(path, f"cannot write: {describe_os_error(e)}") from None
        try:
            with stream, _compressed(stream, path, compress) as out:
                yield out
        except OSError as e:
            if e.errno == errno.EPIPE or not _about_output(e, path):
                raise
            raise OutputError(path, f"cannot write: {describe_os_error(e)}") from None
        return
    if named is not None:
        named.refuse_foreign(path)
    fd, tmp = temporary_file(path, make_parent=False)
    try:
        with os.fdopen(fd, "wb") as stream:
            with _compressed(stream, path, compress) as out:
                yield out
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not _about_output(e, tmp, path):
            raise
        raise OutputError(path, f"cannot write: {describe_os_error(e)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
