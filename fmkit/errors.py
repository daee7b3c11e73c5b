"""The exceptions fmkit raises for problems a user can fix.

Every error a user can cause (a bad file, a bad hyperparameter, a damaged model directory)
is an :class:`FMKitError`; the CLI prints its message and exits non-zero, without a traceback.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from fmkit.cpus import import_torch

_ESCAPED_BYTE = re.compile(r"\\udc([89a-f][0-9a-f])")  # how repr shows a surrogate-escaped byte


def excerpt(text: str | bytes, limit: int = 40, quote: bool = True) -> str:
    """A short quotation of an offending value for an error message (a bad value may be a
    megabyte long), escaped as Python writes a string; bytes that are not UTF-8 show as
    ``\\xNN``. ``quote=False`` for numbers."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: 4 * limit]).decode("utf-8", "surrogateescape")
    shown = _ESCAPED_BYTE.sub(r"\\x\1", repr(text[:limit]))
    shown = shown if quote else shown[1:-1]
    return shown + f"... ({len(text)} characters)" if len(text) > limit else shown


def did_you_mean(name: str, choices) -> str:
    """``" (did you mean 'x'?)"`` for a misspelt name close to one of ``choices``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class FMKitError(Exception):
    """Base class of the errors caused by input rather than by a bug in fmkit."""


class HyperparameterError(FMKitError, ValueError):
    """A hyperparameter is unknown, missing, of the wrong type or out of range."""


class MissingHyperparameter(HyperparameterError):
    """A required hyperparameter is not set: ``name``, which advice may follow."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


class DataError(FMKitError, ValueError):
    """A data file or request has a malformed record.

    The message reads ``FILE:LINE: problem`` so that editors and terminals can jump to it.
    """

    def __init__(self, source: str, line: int | None, problem: str):
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")


class ArtifactError(FMKitError):
    """A model directory is missing, incomplete, or written by an incompatible fmkit."""


FM_DIVERGED_HINT = ("Lower the learning rates (e.g. linear_lr, factors_lr, bias_lr by 10x) or "
                    "set clip_gradient")


class TrainingDiverged(FMKitError):
    """The training loss or the weights stopped being finite numbers; no model is written.
    ``hint``: what to change, in the names of the settings the model was given."""

    def __init__(self, epoch: int, what: str = "the training loss",
                 hint: str = FM_DIVERGED_HINT,
                 problem: str = "is not finite (NaN or infinity)"):
        self.epoch = epoch
        super().__init__(f"training diverged in epoch {epoch}: {what} {problem}; no model was "
                         f"written. {hint}")


def require_option(ok: bool, option: str, expected: str, value: Any) -> None:
    """One line for a command-line option outside its range (``--k must be >= 1, got 0``):
    the rule every command's numeric options follow, before any work is done."""
    if not ok:
        raise HyperparameterError(f"{option} must be {expected}, got {value}")


class MissingDependency(FMKitError, ImportError):
    """An optional dependency that the requested feature needs is not installed."""


def require_torch(feature: str, extra: str = "deepfm", *, import_it: bool = True) -> None:
    """Import PyTorch for ``feature``, or raise one line naming the extra that installs it.
    ``import_it=False`` only finds it: a process that starts others which use it (``--nproc``)
    need not wait 1-2 s for its import.

    PyTorch is an optional dependency: FM training, evaluation, prediction and serving run
    without it; DeepFM, ``--device`` and ``--nproc``/torchrun need it.
    """
    try:
        if not import_it:
            if importlib.util.find_spec("torch") is None:
                raise ImportError("torch")
            return
        import_torch()
    except (ImportError, ValueError):  # (ValueError: a torch module without a spec)
        raise MissingDependency(
            f"{feature} needs PyTorch, which is not installed: pip install 'fmkit[{extra}]' "
            "(CPU-only build: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)") from None
