"""Repository rules: CI runs exactly the README's test command, and the code is ruff clean."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("fmkit demo")
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_hyperparameter_table_is_the_code_table():
    from fmkit.models.fm.hyperparameters import table_markdown

    assert table_markdown() in (REPO / "README.md").read_text()
