"""``python -m fmkit``: the command line (also what ``torchrun -m fmkit`` starts)."""

from fmkit.cli import run

run()
