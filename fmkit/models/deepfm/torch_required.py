"""Imported first by each module that runs a DeepFM with PyTorch: without PyTorch, one line
naming the extra that installs it instead of Python's ``ModuleNotFoundError``; with it,
PyTorch's threads capped at the CPU quota before any use (:func:`fmkit.cpus.import_torch`)."""

from fmkit.errors import require_torch

require_torch("DeepFM")
