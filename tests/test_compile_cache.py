"""A read-only install still caches its compiled kernels: where neither the package nor the
user's cache directory can be written, numba is pointed at a per-user temporary directory."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fmkit import compile_cache


def test_numba_caches_where_fmkit_points_it_when_nothing_else_is_writable(tmp_path):
    """In a fresh interpreter that sees every directory as read-only except the temporary one
    (as a read-only container image whose user has no writable home does), importing fmkit
    chooses the temporary directory and a kernel compiled there is cached there; the second
    interpreter finds it (numba reports no compilation)."""
    script = textwrap.dedent("""
        import os, sys
        from fmkit import compile_cache
        compile_cache._writable = lambda d: str(d).startswith(os.environ["TMPDIR"])
        os.environ.pop("NUMBA_CACHE_DIR", None)
        compile_cache.configure()
        import numpy as np
        from numba.core import event
        from fmkit.data.blocks import count_newlines
        with event.install_recorder("numba:compile") as compiled:
            assert count_newlines(np.frombuffer(b"a\\nb\\n", np.uint8), 0, 4) == 2
        print(os.environ["NUMBA_CACHE_DIR"], len(compiled.buffer))
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    (first_dir, first_events), (second_dir, second_events) = (
        run.stdout.split() for run in runs)
    assert first_dir == second_dir == str(tmp_path / f"fmkit-numba-cache-{os.getuid()}")
    assert int(first_events) > 0 and int(second_events) == 0
    assert any(p.name.startswith("blocks.count_newlines") for p in
               (tmp_path / f"fmkit-numba-cache-{os.getuid()}").rglob("*.nbi"))


def test_the_users_choice_and_writable_places_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert compile_cache.cache_dir() is None
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    package = tmp_path / "pkg"
    (package / "kernels").mkdir(parents=True)
    assert compile_cache.cache_dir(package) is None  # in-tree: writable here


def test_a_first_training_shares_its_compiling_with_a_helper_process(tmp_path):
    """With nothing cached, training's compile step compiles the trainer in this process while
    a helper process compiles and caches the reader and the scorer (numba's events: this
    process compiled the trainer and neither of those; afterwards both are cached). The
    trainer's update of a table row, shared by the bias, the linear weights and the factors,
    compiles once. A second run, the scorer cached, starts no helper and compiles nothing."""
    script = textwrap.dedent("""
        from numba.core import event
        from fmkit import compile_cache
        from fmkit.data import libsvm
        from fmkit.jobs import fm as jobs
        from fmkit.kernels import fm as kernels
        from fmkit.models.fm.hyperparameters import validate
        hp = validate({"feature_dim": 10, "num_factors": 4,
                       "predictor_type": "binary_classifier"})
        with event.install_recorder("numba:compile") as compiled:
            jobs._compile_on_two_cores(hp, "libsvm")
        ends = [e.data["dispatcher"].py_func.__name__ for _, e in compiled.buffer if e.is_end]
        names = set(ends)
        helpers = list(compile_cache._helpers)
        codes = [helper.wait(timeout=300) for helper in helpers]
        print(len(helpers), codes, "train_batches" in names, ends.count("_apply"),
              bool(names & {"parse_libsvm", "predict_logits_serial"}),
              compile_cache.cached(libsvm.parse_libsvm),
              compile_cache.cached(kernels.predict_logits_serial))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[0].stdout.split() == ["1", "[0]", "True", "1", "False", "True", "True"]
    assert runs[1].stdout.split() == ["0", "[]", "False", "0", "False", "True", "True"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_on_one_cpu_a_first_training_starts_no_helper_and_compiles_everything_itself(tmp_path):
    """Pinned to one CPU (as in a container with a quota of one), a helper would only take
    turns with the run and compile what the run then compiles again: none starts, and the
    run's own compiling leaves the trainer cached."""
    script = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from fmkit import compile_cache
        from fmkit.jobs import fm as jobs
        from fmkit.kernels import fm as kernels
        from fmkit.models.fm.hyperparameters import validate
        hp = validate({"feature_dim": 10, "num_factors": 4,
                       "predictor_type": "binary_classifier"})
        jobs._compile_on_two_cores(hp, "libsvm")
        print(len(compile_cache._helpers), compile_cache.cached(kernels._batch_gradient))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["0", "True"]


def test_a_first_prediction_compiles_the_scorer_in_a_helper_process(tmp_path):
    """With nothing cached, predicting from a text file starts one helper process that
    compiles and caches the FM's scorer while this process compiles the reader; the rows are
    scored all the same (each by a plain-Python FM of the saved weights). A second run, the
    scorer cached, starts no helper."""
    script = textwrap.dedent(f"""
        import json, math
        import numpy as np
        from fmkit import compile_cache
        from fmkit.jobs import fm as jobs
        from fmkit.kernels import fm as kernels
        from fmkit.models.fm.hyperparameters import table_hyperparameters, validate
        from fmkit.models.fm.model import FMModel
        from fmkit.models.fm.parameters import init_parameters
        hp = validate({{"feature_dim": 4, "num_factors": 2,
                       "predictor_type": "binary_classifier", "bias_init_method": "normal",
                       "bias_init_sigma": 0.5, "linear_init_method": "normal",
                       "linear_init_sigma": 0.5, "factors_init_method": "normal",
                       "factors_init_sigma": 0.5}})
        model = FMModel(hp, init_parameters({{**table_hyperparameters(hp), "seed": 3}}))
        model.save({str(tmp_path / "m")!r})
        with open({str(tmp_path / "rows.svm")!r}, "w") as f:
            f.write("1 0:0.5 2:1\\n0 1:2 3:1 0:1\\n")
        rows = jobs.predict_files({str(tmp_path / "m")!r}, {str(tmp_path / "rows.svm")!r},
                                  {str(tmp_path / "p.jsonl")!r}, fmt="libsvm")
        helpers = list(compile_cache._helpers)
        codes = [helper.wait(timeout=300) for helper in helpers]
        p = model.params
        w0, w, V = float(np.ravel(p.w0)[0]), p.w, p.V
        def fm(x):
            pairs = sum(float(V[i] @ V[j]) * a * b for i, a in x.items() for j, b in x.items()
                        if i < j)
            return 1 / (1 + math.exp(-(w0 + sum(w[i] * a for i, a in x.items()) + pairs)))
        expected = [fm({{0: 0.5, 2: 1.0}}), fm({{1: 2.0, 3: 1.0, 0: 1.0}})]
        got = [json.loads(line)["score"] for line in open({str(tmp_path / "p.jsonl")!r})]
        print(rows, len(helpers), codes, compile_cache.cached(kernels.predict_logits_serial),
              bool(np.allclose(got, expected, rtol=1e-5)))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        (tmp_path / "p.jsonl").unlink(missing_ok=True)
        runs.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                   text=True, timeout=600))
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[0].stdout.split() == ["2", "1", "[0]", "True", "True"]
    assert runs[1].stdout.split() == ["2", "0", "[]", "True", "True"]


def test_a_helper_that_cannot_start_is_no_error(monkeypatch):
    """No Python to run (an embedding application's sys.executable): compile_ahead starts
    nothing and raises nothing; the caller compiles everything itself."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    before = len(compile_cache._helpers)
    compile_cache.compile_ahead("pass")
    assert len(compile_cache._helpers) <= before


STALE_KERNEL = """
import sys
from pathlib import Path
from fmkit import compile_cache
package = Path(sys.argv[1])
compile_cache.PACKAGE = package
if sys.argv[2] == "stamped":
    compile_cache.stamp_with_sources()
sys.path.insert(0, str(package.parent))
from pkg.kernel import kernel
print(compile_cache.cached(kernel), kernel())
"""


def test_a_cached_kernel_is_recompiled_when_a_helper_in_another_module_changes(tmp_path):
    """numba alone checks a cached kernel against its own module: with a helper changed in
    another module it runs the old machine code (the control below). With
    :func:`compile_cache.stamp_with_sources` the kernel compiles again and uses the new one,
    and :func:`compile_cache.cached` says it is not cached until then."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernel.py").write_text(
        "from numba import njit\nfrom pkg.helper import helper\n\n"
        "@njit(cache=True)\ndef kernel():\n    return helper()\n")

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", STALE_KERNEL, str(package), mode],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    for mode in ("numba alone", "stamped"):
        for cache in package.glob("__pycache__/kernel*.nb*"):
            cache.unlink()
        (package / "helper.py").write_text("from numba import njit\n\n"
                                           "@njit\ndef helper():\n    return 1\n")
        assert run(mode) == "False 1"
        (package / "helper.py").write_text("from numba import njit\n\n"
                                           "@njit\ndef helper():\n    return 2\n")
        assert run(mode) == ("True 1" if mode == "numba alone" else "False 2"), mode
    assert run("stamped") == "True 2"


def _fmkit_dispatchers() -> dict[str, object]:
    """Every numba function of fmkit, by module and name: found as an attribute of any of its
    modules, or a value of a module's dict (the per-rule trainers), imported from a module or
    defined in it (each once)."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import fmkit

    found = {}
    for info in pkgutil.walk_packages(fmkit.__path__, "fmkit."):
        if info.name == "fmkit.__main__":  # (runs the CLI)
            continue
        for value in vars(importlib.import_module(info.name)).values():
            for item in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(item, CPUDispatcher):
                    found[f"{item.py_func.__module__}.{item.py_func.__qualname__}"] = item
    return found


def _cached_kernels() -> dict[str, object]:
    return {name: f for name, f in _fmkit_dispatchers().items()
            if f._can_compile and type(f._cache).__name__ != "NullCache"}


def test_every_cached_kernel_of_fmkit_is_stamped_with_its_sources():
    """Each package that defines cached kernels installs the stamped locators first."""
    kernels = list(_cached_kernels().values())
    assert len(kernels) > 20
    unstamped = [k.py_func.__qualname__ for k in kernels
                 if not getattr(type(k._cache._impl._locator), "stamped_by_fmkit", False)]
    assert not unstamped


def test_the_sources_digest_follows_numba_modules_only(tmp_path):
    (tmp_path / "kernel.py").write_text("import numba\n")
    (tmp_path / "helpers.py").write_text("from fmkit.compile_cache import kernel_helper\n")
    (tmp_path / "cli.py").write_text('"""Mentions numba, imports none."""\n')
    before = compile_cache.sources_digest(tmp_path)
    (tmp_path / "cli.py").write_text('"""Mentions numba, imports none. Changed."""\n')
    assert compile_cache.sources_digest(tmp_path) == before
    for name in ("kernel.py", "helpers.py"):
        changed = compile_cache.sources_digest(tmp_path)
        (tmp_path / name).write_text((tmp_path / name).read_text() + "# changed\n")
        assert compile_cache.sources_digest(tmp_path) != changed


def test_every_cached_kernel_compiles_without_a_c_entry_point():
    """Each numba function fmkit caches is made by ``compile_cache.kernel``: no ``cfunc``
    wrapper, which nothing calls and which a first run compiled for every kernel. Found in
    every module of the package (a plain ``njit(cache=True)`` added anywhere fails here)."""
    cached = _cached_kernels()
    assert len(cached) >= 40 and "fmkit.data.libsvm.parse_libsvm" in cached
    assert [name for name, f in cached.items() if not f.targetoptions.get("no_cfunc_wrapper")
            ] == []


def _kernels_without_the_runtime() -> dict[str, object]:
    """Every kernel of fmkit compiled with ``allocates=False`` (numba's ``_nrt=False``)."""
    return {name: f for name, f in _fmkit_dispatchers().items()
            if f.targetoptions.get("_nrt", True) is False}


def _holds_array(numba_type) -> bool:
    from numba.core import types

    return isinstance(numba_type, types.Array) or (
        isinstance(numba_type, types.BaseTuple) and any(_holds_array(t) for t in numba_type))


def _arrays_returned(dispatcher, args, seen: set) -> list[str]:
    """The functions ``dispatcher`` calls for ``args``, at any depth, that return an array
    (or a tuple holding one): read from the types numba inferred while compiling."""
    from numba.core import types

    if (dispatcher, args) in seen:
        return []
    seen.add((dispatcher, args))
    annotation = dispatcher.overloads[args].type_annotation
    found = []
    for expr, signature in annotation.calltypes.items():
        callee = annotation.typemap.get(expr.func.name) if getattr(expr, "op", "") == "call" \
            else None
        if isinstance(callee, types.Dispatcher):
            if _holds_array(signature.return_type):
                found.append(callee.dispatcher.py_func.__name__)
            found += _arrays_returned(callee.dispatcher, signature.args, seen)
    return found


def check_kernels_without_the_runtime(work: Path) -> None:
    """Compile every kernel without the runtime by small inputs of every reader and an FM
    mini-batch's gradient (in an interpreter whose numba cache is empty, so that it compiles
    and keeps what it inferred), then print each with the runtime functions its LLVM IR
    calls and the functions it calls that return arrays (none, for a sound one)."""
    import re

    import numpy as np

    from fmkit.data.batch import take, unit_rows
    from fmkit.data.libsvm import largest_field, write_libsvm
    from fmkit.data.recordio import encode_batch
    from fmkit.data.sources import FileSource
    from fmkit.models.fm.hyperparameters import validate
    from fmkit.models.fm.parameters import starting_point
    from fmkit.train.kernel_learner import fm_learner

    files = {"libsvm": "1 0:1 3:0.5\n0 1:2 2:1\n", "csv": "1,0,1.5,0,2\n0,1,0,0,0\n",
             "libffm": "1 0:0:1 1:3:0.5 1:3:0.5\n0 0:1:2 1:2:1\n"}
    for fmt, text in files.items():
        (work / f"t.{fmt}").write_text(text)
        for block in FileSource(work / f"t.{fmt}", fmt, 4, labels="binary").blocks():
            unit_rows(take(block, np.array([1, 0])))
    largest_field(work / "t.libffm")
    write_libsvm(io.BytesIO(), block.matrix(4), block.labels)
    (work / "t.rec").write_bytes(encode_batch(block, 4))
    list(FileSource(work / "t.rec", "recordio", 4, labels="binary").blocks())
    hp = starting_point(validate({"feature_dim": 4, "num_factors": 2,
                                  "predictor_type": "binary_classifier"}), 0.5)
    fm_learner(hp).gradient(block)
    for name, k in _kernels_without_the_runtime().items():
        for signature in k.signatures:
            calls = set(re.findall(r"@(NRT_\w+)", k.inspect_llvm(signature)))
            print(name, *sorted(calls), *_arrays_returned(k, signature, set()))
        if not k.signatures:
            print(name, "(never compiled)")


def test_kernels_without_the_runtime_count_no_references(tmp_path):
    """A kernel compiled without numba's runtime must not depend on reference counting: its
    LLVM IR calls none of the runtime's functions, and no function it calls, however deep,
    returns an array. (numba compiles a helper once per argument types, for whichever caller
    needs it first, with or without the runtime: a helper returning a view, compiled without
    it, hands a caller that has it a reference it never counted up, which that caller counts
    down: the table freed in use. The FM's mini-batch loop, whose update rules take views of
    a table row from a helper, did that, and keeps the runtime.)"""
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "import test_compile_cache as t; "
              "t.check_kernels_without_the_runtime(Path(sys.argv[2]))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    checked = [line.split() for line in run.stdout.splitlines()]
    assert len(checked) >= 15 and ["fmkit.data.libsvm.parse_libsvm"] in checked
    assert [line for line in checked if len(line) > 1] == []
