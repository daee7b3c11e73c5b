"""The package's layers, written down: a module imports only from its own layer or lower ones
(function-level imports included), and no import cycle exists. ``docs/architecture.md`` draws
the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmkit"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS = [
    ("foundation", ["fmkit._version", "fmkit.errors", "fmkit.logs", "fmkit.cgroups",
                    "fmkit.memory", "fmkit.cpus", "fmkit.files", "fmkit.compression",
                    "fmkit.compile_cache", "fmkit.exits"]),
    ("data", ["fmkit.data"]),
    ("kernels", ["fmkit.kernels"]),
    ("models", ["fmkit.models"]),
    ("train", ["fmkit.train"]),
    ("distributed", ["fmkit.distributed"]),
    ("adapters", ["fmkit", "fmkit.__main__", "fmkit.jobs", "fmkit.estimators", "fmkit.serve",
                  "fmkit.sagemaker", "fmkit.cli", "fmkit.demo", "fmkit.report"]),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix matching ``module``."""
    matches = [(len(prefix), level) for level, (_, prefixes) in enumerate(LAYERS)
               for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        pytest.fail(f"{module} is in no layer: add it to LAYERS")
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every fmkit module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "fmkit":
                for alias in node.names:  # `from fmkit.data import codecs` names a module
                    candidate = f"{node.module}.{alias.name}"
                    is_module = any(PACKAGE.parent.joinpath(*candidate.split(".")).with_suffix(
                        suffix).exists() for suffix in (".py", ""))
                    found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "fmkit")
    return found


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_to_the_same_or_a_lower_layer():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
              f"({LAYERS[layer_of(target)][0]})"
              for module, targets in GRAPH.items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Depth-first search over the module graph (a package's ``__init__`` is left out as a
    target: importing ``fmkit.x`` runs it, but it imports nothing at load time that imports
    back)."""
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH or target == "fmkit":
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself: a data module importing the server is reported."""
    fake = tmp_path / "fmkit" / "data" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from fmkit.serve import app\n")
    assert imports_of(fake) == {"fmkit.serve.app"}
    assert layer_of("fmkit.serve.app") > layer_of("fmkit.data.x")
