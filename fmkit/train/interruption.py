"""Stopping a training run when the process is asked to end (SIGTERM), keeping what it trained.

SageMaker's StopTrainingJob, a job's ``MaxRuntimeInSeconds``, a spot interruption, Kubernetes
and Slurm all send SIGTERM and kill the process some time later (SageMaker: 120 s), a window
"algorithms can use to save the model artifacts, so the results of training are not lost".
Inside :func:`stop_on`, the signal does not end the process: it records a request, the engine
(:func:`fmkit.train.engine.fit`) ends the run after the step in progress (a checkpoint is
taken there when checkpoints are on), and the job writes the model trained so far, without
scoring its test channel. A second signal ends the process at once.

Signals are the process's, so the request is too: module state, set only by the handler
:func:`stop_on` installs (the command line's ``train`` jobs); the Python API never installs
it, so a program that fits an estimator keeps its own handling of signals.

A command that writes one output (:func:`exit_cleanly_on`) ends at the signal, removing what
it was writing; from that moment a watchdog (:mod:`faulthandler`'s, a thread of its own that
needs no lock of the interpreter's) guarantees the process ends within
:data:`END_WITHIN_SECONDS`: should anything hold its way out (a thread left blocked on a
silent pipe, an interpreter's exit waiting on a thread), it prints every thread's stack and
exits with status 1 instead of hanging.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested: str | None = None  # the signal's name, once one arrived


def requested() -> str | None:
    """The name of the signal that asked this process to stop (``SIGTERM``), or None."""
    return _requested


def as_number(reason: str | None) -> int:
    """A request as a number processes can sum: its signal's number, 0 for none, -1 for a
    request that is not a signal."""
    if reason is None:
        return 0
    return int(signal.Signals[reason]) if reason in signal.Signals.__members__ else -1


def from_numbers(count: float, total: float) -> str | None:
    """The request ``count`` processes made, their :func:`as_number` values summing to
    ``total``: the signal's name when they all had the same one."""
    if not count:
        return None
    number = total / count
    if number == int(number) and int(number) in {int(s) for s in signal.Signals}:
        return signal.Signals(int(number)).name
    return "a stop asked of another process"


def request(reason: str) -> None:
    """Ask the training in progress to stop after its current step (what the handler does)."""
    global _requested
    _requested = reason


def _handler(signum: int, frame: object) -> None:
    request(signal.Signals(signum).name)
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once


@contextmanager
def stop_on(*signals: signal.Signals) -> Iterator[None]:
    """Within the block, each of ``signals`` requests a stop (:func:`requested`) instead of
    ending the process; the handlers before it are put back after it. Outside the main thread
    (where Python cannot handle signals) it changes nothing."""
    global _requested
    before = _install(_handler, signals)
    try:
        yield
    finally:
        restore(before)
        _requested = None


def exit_code() -> int:
    """What a training command returns: 0, or 128 + SIGTERM when a request stopped it (the
    shell's code for a process SIGTERM ended: the run did not do all it was asked)."""
    return 128 + signal.SIGTERM if _requested else 0


# how long a one-output command may take to end after SIGTERM or SIGINT (its clean-up
# removes a temporary file and leaves a reader thread behind within 2 s)
END_WITHIN_SECONDS = 10.0


_watching = False  # end_within armed the watchdog (a program's own is not ours to cancel)


def end_within() -> None:
    """From now on, the process ends within :data:`END_WITHIN_SECONDS`, whatever holds it:
    then every thread's stack goes to stderr and the exit status is 1. :func:`restore`
    cancels it."""
    global _watching
    faulthandler.dump_traceback_later(END_WITHIN_SECONDS, exit=True)
    _watching = True


def _exit(signum: int, frame: object) -> None:
    end_within()
    if signum == signal.SIGINT:  # Ctrl-C: Python's own KeyboardInterrupt, caught by the CLI
        signal.default_int_handler(signum, frame)
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    print(f"fmkit: {signal.Signals(signum).name}: stopped", file=sys.stderr)
    raise SystemExit(128 + signum)


def exit_cleanly_on(*signals: signal.Signals) -> dict:
    """Make each of ``signals`` end the process as an exception would (``SystemExit(128 +
    signal)`` in the main thread) instead of at once, so that what a command was writing is
    removed on the way out, not left as a partial file. For commands of one process whose
    work runs on the main thread (an exception raised in a finalizer is ignored, and with it
    the signal: a second one ends the process at once). Returns the handlers it replaced, for
    :func:`restore`."""
    return _install(_exit, signals)


def _install(handler, signals) -> dict:
    """``handler`` for each of ``signals``; the handlers it replaces. Outside the main thread,
    where Python cannot handle signals, nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in signals}


def restore(handlers: dict) -> None:
    """Put back the signal handlers :func:`stop_on` or :func:`exit_cleanly_on` replaced, and
    cancel :func:`end_within` (a program that called the command line goes on)."""
    global _watching
    for s, handler in handlers.items():
        signal.signal(s, handler)
    if _watching:
        faulthandler.cancel_dump_traceback_later()
        _watching = False
