"""Ending a finished command's process without tearing the interpreter down.

When a program ends, CPython finalizes every module it imported: with PyTorch loaded that took
about half a second, with numba and scipy alone about 0.13 s (docs/performance.md, session 50)
— longer than the work of many commands, and paid three times by ``fmkit train --nproc 2``
(each of its processes, then torchrun). Nothing in those modules is left to do once a command
has written its output, so :func:`exit_now` does only the part of the interpreter's exit that
has effects outside the process, then ends it with :func:`os._exit`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """End the process with status ``code`` as the interpreter's exit would, without its
    teardown: wait for the threads it would wait for (and run the hooks it runs then, such as
    stopping idle thread pools), run the :mod:`atexit` functions (log handlers flushed,
    temporary directories removed, child processes joined), flush stdout and stderr. Where
    the interpreter has no such wait to call, the ordinary exit."""
    wait_for_threads = getattr(threading, "_shutdown", None)
    if wait_for_threads is None:  # (CPython's own; another interpreter exits as usual)
        sys.exit(code)
    wait_for_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or its reader went away
            stream.flush()
    os._exit(code)
