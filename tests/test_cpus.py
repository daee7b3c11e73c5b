"""The thread count follows a container's CPU quota (cgroup v2 and v1 files, written here);
bfloat16 is native where the CPU says so."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from fmkit.cpus import available_cpus, computes_bfloat16, cpu_quota, multiplies_int8

CPUS = len(os.sched_getaffinity(0))


def write(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


V2 = {"cgroup.controllers": "cpu io memory\n"}
V1_ROOT = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}


def v1(directory, quota, period=100000):
    return {f"cpu/{directory}cpu.cfs_quota_us": f"{quota}\n",
            f"cpu/{directory}cpu.cfs_period_us": f"{period}\n"}


@pytest.mark.parametrize("files, quota", [
    ({**V2, "cpu.max": "150000 100000\n"}, 1.5),
    ({**V2, "cpu.max": "max 100000\n"}, None),
    (v1("", 50000), 0.5),
    (v1("", -1), None),
    ({}, None),
    ({**V2, "cpu.max": "garbage\n"}, None),
])
def test_the_quota_is_read_from_either_cgroup_version(tmp_path, files, quota):
    """A container's view: its own cgroup is the root it sees (its /proc/self/cgroup names a
    path the mount does not hold)."""
    root = write(tmp_path / "cgroup", files)
    proc = write(tmp_path / "proc",
                 {"cgroup": "0::/kubepods/pod1/abc\n3:cpu,cpuacct:/docker/abc\n"})
    assert cpu_quota(root, proc) == quota
    expected = CPUS if quota is None else max(1, min(CPUS, int(quota)))
    assert available_cpus(root, proc) == expected


@pytest.mark.parametrize("own, files, quota", [
    # a systemd unit's CPUQuota= (v2, the host's hierarchy): the root shows no quota
    ("0::/system.slice/job.scope", {**V2, "system.slice/job.scope/cpu.max": "50000 100000\n",
                                    "system.slice/cpu.max": "max 100000\n"}, 0.5),
    # a parent's quota limits every cgroup below it; the smallest one counts
    ("0::/batch/job7/step", {**V2, "batch/cpu.max": "300000 100000\n",
                              "batch/job7/cpu.max": "150000 100000\n",
                              "batch/job7/step/cpu.max": "max 100000\n"}, 1.5),
    ("0::/a/b", {**V2, "a/cpu.max": "100000 100000\n", "a/b/cpu.max": "400000 100000\n"}, 1.0),
    # v1: the line of the cpu controller names the directory under cpu/
    ("4:memory:/x\n3:cpu,cpuacct:/slurm/job9\n", {**V1_ROOT, **v1("slurm/", -1),
                                                   **v1("slurm/job9/", 200000)}, 2.0),
    ("3:cpuacct,cpu:/q\n", {**V1_ROOT, **v1("q/", 50000, 200000)}, 0.25),
    # the process in the root cgroup, or /proc unreadable: the root's own quota alone
    ("0::/\n", {**V2, "cpu.max": "200000 100000\n"}, 2.0),
    (None, {**V1_ROOT, **v1("q/", 50000)}, None),
])
def test_the_quota_of_a_cgroup_below_the_root_is_found_from_proc(tmp_path, own, files, quota):
    """Outside a cgroup namespace (systemd's CPUQuota=, a batch system, a container sharing
    the host's cgroups) the process's cgroup is a directory below the mount, named in
    /proc/self/cgroup, and a quota anywhere on its way up to the root limits it."""
    root = write(tmp_path / "cgroup", files)
    proc = write(tmp_path / "proc", {} if own is None else {"cgroup": own + "\n"})
    assert cpu_quota(root, proc) == quota


def test_the_cli_caps_numba_threads_unless_numba_num_threads_is_set(tmp_path):
    """In a fresh process (numba's threads start once): one core of quota means one thread,
    and an explicit $NUMBA_NUM_THREADS wins."""
    root = write(tmp_path, {**V2, "cpu.max": "100000 100000\n"})
    code = ("import sys, numba, fmkit.cpus as c; from pathlib import Path; "
            "print(c.limit_threads(Path(sys.argv[1])), numba.config.NUMBA_NUM_THREADS)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", str(CPUS)]
    out = subprocess.run([sys.executable, "-c", code, str(root)],
                         env={**env, "NUMBA_NUM_THREADS": str(CPUS)}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(CPUS), str(CPUS)]


def test_on_threads_runs_every_call_at_once_and_returns_results_in_order():
    """The parts overlap (each waits for all to have started: run one after the other, they
    would time out), results come back in call order, and a failing part raises only after
    every part ended."""
    import threading
    import time

    from fmkit.cpus import on_threads

    started = threading.Barrier(3, timeout=10)

    def part(value):
        started.wait()
        return value * value

    assert on_threads(part, [(2,), (3,), (4,)]) == [4, 9, 16]

    finished = []

    def failing(value):
        if value == 1:
            raise ValueError("part 1")
        time.sleep(0.2)
        finished.append(value)

    with pytest.raises(ValueError, match="part 1"):
        on_threads(failing, [(0,), (1,), (2,)])
    assert sorted(finished) == [0, 2]


def test_on_threads_with_a_cap_runs_at_most_that_many_at_once_and_keeps_the_order():
    """Seven calls on at most two threads: never more than two run at once (each sleeps, so
    uncapped they would all overlap), every call runs, results come back in call order; no
    calls, no results."""
    import threading
    import time

    from fmkit.cpus import on_threads

    lock, running, most = threading.Lock(), [0], [0]

    def part(value):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return value * 10

    assert on_threads(part, [(v,) for v in range(7)], 2) == [v * 10 for v in range(7)]
    assert most[0] == 2
    assert on_threads(part, [], 2) == []


def test_a_background_reader_leaves_its_consumer_a_core():
    """Work started on the reader's thread sees one thread fewer (never fewer than one); the
    consumer's own thread count is unchanged."""
    import numba

    from fmkit.cpus import leaving_cores, thread_count
    from fmkit.data.background import background

    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            total = numba.get_num_threads()
            seen = list(background(thread_count() for _ in range(3)))
            assert seen == [max(1, total - 1)] * 3
            assert thread_count() == total
            with leaving_cores(5):
                assert thread_count() == 1
    finally:
        numba.set_num_threads(before)


OPENMP_NAMES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS")


def _run_fresh(code: str, *args: str, **environment: str) -> str:
    """``code`` in a fresh interpreter whose environment holds none of :data:`OPENMP_NAMES`
    but ``environment``; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_NAMES}
    return subprocess.run([sys.executable, "-c", code, *args], env={**env, **environment},
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("preset, expected", [
    ({}, {"GOMP_SPINCOUNT": "3000", "NUMBA_THREADING_LAYER": "workqueue",
          "OMP_WAIT_POLICY": None}),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": None,
                                     "NUMBA_THREADING_LAYER": "workqueue",
                                     "OMP_WAIT_POLICY": "ACTIVE"}),
    ({"GOMP_SPINCOUNT": "100", "NUMBA_THREADING_LAYER": "workqueue"},
     {"GOMP_SPINCOUNT": "100", "NUMBA_THREADING_LAYER": "workqueue", "OMP_WAIT_POLICY": None}),
])
def test_importing_fmkit_sets_only_the_openmp_settings_the_user_left_unset(preset, expected):
    """Waiting OpenMP threads spin briefly, then sleep (a busy machine collapsed DeepFM
    training otherwise), and numba, which fmkit runs no parallel loop on, starts no OpenMP
    team of its own; a user's own settings stand. numba's layer is checked after its threads
    are counted (which starts the layer), as fmkit's CLI does."""
    code = ("import json, os, numba, fmkit; numba.get_num_threads(); "
            "print(json.dumps({**{k: os.environ.get(k) for k in "
            "('GOMP_SPINCOUNT', 'NUMBA_THREADING_LAYER', 'OMP_WAIT_POLICY')}, "
            "'layer': numba.threading_layer()}))")
    assert json.loads(_run_fresh(code, **preset)) == {**expected, "layer": "workqueue"}


def test_pytorch_threads_follow_the_quota_unless_omp_num_threads_chose_them(tmp_path):
    """PyTorch's default is a thread per core, blind to a container's quota."""
    root = write(tmp_path, {**V2, "cpu.max": "100000 100000\n"})
    code = ("import sys, fmkit.cpus as c; from pathlib import Path; "
            "print(c.import_torch(Path(sys.argv[1])).get_num_threads())")
    assert _run_fresh(code, str(root)) == "1"
    assert _run_fresh(code, str(root), OMP_NUM_THREADS="2") == "2"
    assert _run_fresh(code, str(tmp_path / "none")) == str(min(CPUS, _physical_cores()))


def _physical_cores() -> int:
    """PyTorch's own default thread count (one per physical core)."""
    return int(_run_fresh("import torch; print(torch.get_num_threads())"))


def _cpu_flags() -> set[str]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return flags


def test_bfloat16_instructions_are_read_as_the_cpu_reports_them():
    """computes_bfloat16 agrees with the CPU's flags in /proc/cpuinfo: AVX512_BF16 means
    native bfloat16, neither it nor AMX means emulated (AMX alone also needs the OS's leave,
    which PyTorch checks, so it is not asserted here)."""
    flags = _cpu_flags()
    if "avx512_bf16" in flags:
        assert computes_bfloat16("cpu")
    elif "amx_tile" not in flags:
        assert not computes_bfloat16("cpu")
    assert not computes_bfloat16("mps")  # (a device kind fmkit does not score bfloat16 on)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags")
def test_int8_instructions_are_read_as_the_cpu_reports_them():
    """multiplies_int8 is true where /proc/cpuinfo lists AVX512_VNNI (what PyTorch asks for
    before it calls oneDNN's int8 product), false where the CPU has no VNNI of any kind."""
    flags = _cpu_flags()
    if "avx512_vnni" in flags:
        assert multiplies_int8()
    elif not flags & {"avx_vnni", "amx_int8"}:
        assert not multiplies_int8()


def test_ordered_map_overlaps_keeps_the_order_stays_bounded_and_raises_in_turn():
    """Two calls run at once (each waits for the other to have started), results come in the
    items' order, the producer is never more than threads + 1 items ahead of the consumer,
    and an item's exception is raised when its turn comes, after the earlier results."""
    import threading

    from fmkit.cpus import ordered_map

    started = threading.Barrier(2, timeout=10)
    consumed, produced = [], []

    def items():
        for i in range(8):
            assert i - len(consumed) <= 3, "read too far ahead"
            produced.append(i)
            yield i

    def square(i):
        if i < 2:
            started.wait()
        return i * i

    for value in ordered_map(square, items(), 2):
        consumed.append(value)
    assert consumed == [i * i for i in range(8)]

    def failing(i):
        if i == 3:
            raise ValueError("item 3")
        return i

    seen = []
    with pytest.raises(ValueError, match="item 3"):
        for value in ordered_map(failing, iter(range(6)), 2):
            seen.append(value)
    assert seen == [0, 1, 2]


def test_a_row_per_step_leaves_a_core_to_a_reader_that_parses(tmp_path):
    """Per-row training on every core beside a thread parsing the file ahead ran slower than
    on one core fewer (docs/performance.md, session 36): the trainer leaves the parser one, as
    the parser leaves the trainer one; sources read without parsing keep every core."""
    import numpy as np
    import scipy.sparse as sp

    from fmkit.data.sources import ArraySource, FileSource, UnitRows
    from fmkit.models.fm.hyperparameters import validate
    from fmkit.models.fm.parameters import starting_point
    from fmkit.train.kernel_learner import fm_learner, reading_parts

    path = tmp_path / "rows.libsvm"
    path.write_text("1 0:1 2:1\n0 1:1\n" * 20)
    text = FileSource(path, "libsvm", 3, labels="binary")
    assert reading_parts(2, text) == reading_parts(2, UnitRows(text)) == 1
    assert reading_parts(1, text) == 1
    assert reading_parts(2, FileSource(path, "libsvm", 3, labels="binary", cache=True)) == 2
    memory = ArraySource(sp.eye(3, format="csr"), np.ones(3), feature_dim=3, labels="binary")
    assert reading_parts(2, memory) == 2

    hp = starting_point(validate({"feature_dim": 3, "num_factors": 2, "mini_batch_size": 1,
                                  "predictor_type": "binary_classifier"}), None)
    learner = fm_learner(hp)
    for unit in learner.batches(text, np.random.default_rng(0)):
        learner.step(unit)
    assert learner.parts == reading_parts(learner.ws.parts, text)


@pytest.mark.parametrize("own, files, available", [
    # v2, a systemd unit's MemoryMax= below the root; the parent's limit is looser
    ("0::/system.slice/job.scope", {**V2, "system.slice/memory.max": "4000000000\n",
                                    "system.slice/memory.current": "1000000000\n",
                                    "system.slice/job.scope/memory.max": "1000000000\n",
                                    "system.slice/job.scope/memory.current": "300000000\n"},
     700_000_000),
    # the parent's headroom is the smaller one
    ("0::/a/b", {**V2, "a/memory.max": "1000000000\n", "a/memory.current": "900000000\n",
                 "a/b/memory.max": "max\n", "a/b/memory.current": "50000000\n"}, 100_000_000),
    # v1: the memory controller's own line and directory
    ("5:memory:/slurm/job9\n3:cpu,cpuacct:/other\n",
     {"memory/slurm/job9/memory.limit_in_bytes": "2000000000\n",
      "memory/slurm/job9/memory.usage_in_bytes": "500000000\n",
      "memory/memory.limit_in_bytes": "9223372036854771712\n"}, 1_500_000_000),
    # a container's namespace: its own cgroup is the root
    ("0::/kubepods/pod1\n", {**V2, "memory.max": "800000000\n",
                             "memory.current": "200000000\n"}, 600_000_000),
])
def test_the_memory_limit_of_a_cgroup_below_the_root_is_found_from_proc(tmp_path, own, files,
                                                                      available):
    """Memory the refusals (models, DeepFM tables, MCMC's rows) count on: the smallest
    headroom of this process's cgroup and its parents (below the machine's MemAvailable)."""
    from fmkit.memory import available_bytes

    root = write(tmp_path / "cgroup", files)
    proc = write(tmp_path / "proc", {"cgroup": own})
    assert available_bytes(root, proc) == available
