"""A read-only install still caches its compiled kernels: where neither the package nor the
user's cache directory can be written, numba is pointed at a per-user temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
