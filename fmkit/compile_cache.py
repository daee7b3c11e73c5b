"""Where numba keeps fmkit's compiled kernels, so that a first run compiles them once.

numba caches beside each source file (``__pycache__``) and, where that is not writable, in
the user's cache directory. In a read-only install (a container image) whose user has no
writable home either, numba cannot cache at all and every run compiles again; in that case
fmkit points ``NUMBA_CACHE_DIR`` at a per-user temporary directory. ``$NUMBA_CACHE_DIR`` set
by the user always wins. This runs when :mod:`fmkit` is imported, before any kernel module.

And what makes a first run (nothing cached yet) shorter: :func:`kernel_helper` compiles a
kernel's helpers into their callers only, and :func:`compile_ahead` lets a helper process
compile some kernels while this one compiles others.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmkit.cpus import available_cpus

PACKAGE = Path(__file__).resolve().parent


def _writable(directory: Path) -> bool:
    """Whether numba can write its cache files in (or create) ``directory``."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    return os.access(existing, os.W_OK | os.X_OK)


def cache_dir(package: Path = PACKAGE, home: Path | None = None) -> str | None:
    """The directory to give numba, or None when its own choice caches (or the user chose)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(package / "kernels" / "__pycache__"):
        return None  # numba's in-tree cache
    home = home if home is not None else Path(os.path.expanduser("~"))
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    if _writable(user_cache):
        return None  # numba's user-wide cache
    return str(Path(tempfile.gettempdir()) / f"fmkit-numba-cache-{os.getuid()}")


def configure(package: Path = PACKAGE) -> None:
    """Set ``NUMBA_CACHE_DIR`` (and numba's config, if numba is already imported) when numba
    would otherwise not cache fmkit's kernels."""
    chosen = cache_dir(package)
    if chosen is None:
        return
    os.environ["NUMBA_CACHE_DIR"] = chosen
    if "numba" in sys.modules:
        sys.modules["numba"].config.CACHE_DIR = chosen


COMPILED = re.compile(rb"^\s*(?:from|import)\s+numba\b|kernel_helper", re.MULTILINE)


def sources_digest(package: Path = PACKAGE) -> str:
    """A digest of every module of ``package`` that imports numba or compiles helpers (names
    and contents): what the machine code of a cached kernel depends on — its own module, and
    the helpers and intrinsics it inlines from others."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        text = path.read_bytes()
        if COMPILED.search(text):
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + text)
    return digest.hexdigest()


@functools.cache
def _package_digest() -> str:
    return sources_digest(PACKAGE)


def stamp_with_sources() -> None:
    """Make numba's cached kernels of fmkit stale when any of fmkit's numba modules changes.

    numba checks a cached kernel against the module that defines it only, so a kernel whose
    inlined helper changed in another module (``kernels.ffm`` uses ``kernels.fm``'s update
    rules) loaded its old machine code: after a ``git pull`` or an edit, silently the old
    arithmetic. fmkit's functions get numba's own cache locators with :func:`sources_digest`
    added to the stamp; other libraries' functions are left to numba's. Called by each
    package of fmkit that compiles cached kernels, before it defines them."""
    from numba.core import caching

    classes = caching.CacheImpl._locator_classes
    if any(getattr(c, "stamped_by_fmkit", False) for c in classes):
        return

    def stamped(base: type) -> type:
        class Stamped(base):
            stamped_by_fmkit = True

            @classmethod
            def from_function(cls, py_func, py_file):
                if not Path(py_file).resolve().is_relative_to(PACKAGE):
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self):
                return super().get_source_stamp(), _package_digest()

        Stamped.__name__ = Stamped.__qualname__ = f"SourcesStamped{base.__name__}"
        return Stamped

    classes[:0] = [stamped(c) for c in (caching.UserProvidedCacheLocator,
                                        caching.InTreeCacheLocator,
                                        caching.UserWideCacheLocator)]


def kernel(*, allocates: bool = True, **options: Any) -> Callable:
    """numba's ``njit`` for a compiled function Python calls: kept in numba's cache, with the
    Python entry point and without the C one (a ``cfunc`` wrapper, which nothing here calls
    and which every first run compiled for every kernel: docs/performance.md, session 48).

    ``allocates=False``: compiled without numba's runtime, for a function that creates no
    array (numba refuses to compile one that does) and calls nothing that returns one (a
    helper compiled without the runtime for it would hand later callers that have the runtime
    views they count down, never up: docs/architecture.md; tests/test_compile_cache.py checks
    both). With the runtime, every call of a helper that takes an array counts a reference up
    and down, two atomic operations the runtime's pruning leaves in loops: the text parsers,
    calling a helper per token, ran at a third to a quarter of their speed
    (docs/performance.md, session 52)."""
    from numba import njit

    if not allocates:
        options["_nrt"] = False
    return njit(cache=True, no_cfunc_wrapper=True, **options)


def kernel_helper(*, forceinline: bool = True, **options: Any) -> Callable:
    """numba's ``njit`` for a function that only compiled code calls: compiled into each
    caller (``forceinline``: inlined there), with no cache file of its own (a cached caller
    holds its machine code) and no Python or C entry point: a first run, with nothing cached,
    paid for those for every helper (docs/performance.md, "Helpers without entry points")."""
    from numba import njit

    return njit(forceinline=forceinline, no_cpython_wrapper=True, no_cfunc_wrapper=True,
                **options)


def cached(function: Any) -> bool:
    """Whether numba's cache holds a compiled version of ``function`` (an ``njit`` function
    with ``cache=True``) for the current sources: its index names one and is not stale (after
    an upgrade or an edit, the first run then still compiles on two cores). True when numba's
    layout is not the one this knows, so that nothing extra is started."""
    try:
        return bool(function._cache._cache_file._load_index())
    except Exception:  # numba's internals moved, or an unreadable index: start nothing
        return True


_helpers: list[subprocess.Popen] = []


def compile_ahead(code: str) -> None:
    """Run the Python ``code``, which compiles kernels into numba's cache, in a helper process
    (at a lower priority) while this one compiles others: a first run compiles on two cores.
    Nothing waits for it: a kernel it has not cached by the time this process needs it, this
    process compiles itself, as without it. It runs beside this package (``python -c`` puts
    its working directory first on the path), so it imports this fmkit, whatever the user's
    directory holds. A helper that cannot start (no ``sys.executable`` to run, no process
    left) is no error: this process compiles everything, as without it. On one CPU (its
    affinity, or a CPU quota below two: :func:`fmkit.cpus.available_cpus`) none starts: it
    would only take turns with this process and compile what this one then compiles again."""
    if available_cpus() < 2:
        return
    _helpers[:] = [helper for helper in _helpers if helper.poll() is None]
    with contextlib.suppress(OSError):
        _helpers.append(subprocess.Popen(
            [sys.executable, "-c", f"import os; os.nice(5); {code}"], cwd=PACKAGE.parent,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
