"""The cores this process uses, and how compiled code runs on several of them.

How many: the CPUs it may run on, capped by a container's CPU quota (cgroup v2 ``cpu.max``, or
v1 ``cpu.cfs_quota_us``), which ``os.cpu_count()`` and numba's default thread count do not see.
More threads than the quota allows are throttled in turn, and whatever waits on them waits a
throttling period.

How: :func:`on_threads` runs compiled functions that release the GIL (numba ``nogil=True``) on
plain Python threads, one call per part. fmkit uses no numba ``parallel=True`` loop: a parallel
loop costs seconds more to compile on a first run, and numba's thread pools may spin while they
wait, which on a busy machine takes cores from the threads doing the work. An idle Python
thread blocks, and a loaded machine slows the parts in proportion.

PyTorch (DeepFM, ``--device``, ``--nproc``) runs its operators on an OpenMP team, whose
threads spin between operators by default. On a busy machine a spinning thread takes the core
its partner needs, and training collapsed (docs/performance.md, "DeepFM on a busy machine").
:func:`configure` (run when :mod:`fmkit` is imported) makes waiting OpenMP threads sleep
after a short spin, and :func:`import_torch` caps PyTorch's threads at the CPU quota.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from fmkit import cgroups

CGROUP, PROC = cgroups.ROOT, cgroups.PROC


def configure() -> None:
    """Set two environment defaults the user left unset (and numba's config, if numba is
    imported). Runs when :mod:`fmkit` is imported: an OpenMP runtime reads its environment
    once, when it is loaded.

    - ``NUMBA_THREADING_LAYER=workqueue``: fmkit runs no numba parallel loop, and numba's
      OpenMP layer, once its threads are counted, would load the OpenMP runtime PyTorch shares
      before the spin count below takes effect, and impose numba's thread count on PyTorch's
      team.
    - ``GOMP_SPINCOUNT=3000``: a waiting thread of GNU OpenMP (PyTorch's) spins ~30 us, then
      sleeps; the default ~3 ms of spinning collapsed DeepFM training on a busy machine
      (docs/performance.md). Not set when the user set ``OMP_WAIT_POLICY``, which a spin count
      would override.
    """
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "3000")
    if "numba" in sys.modules:
        sys.modules["numba"].config.THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]


_torch_threads_capped = False


def import_torch(root: Path = CGROUP):
    """PyTorch; the first time, its intra-op threads capped at :func:`available_cpus` (a
    container's CPU quota, which PyTorch's default of one thread per core does not see) unless
    ``$OMP_NUM_THREADS`` chose them. A later ``torch.set_num_threads`` of the user's stands."""
    global _torch_threads_capped
    import torch

    if not _torch_threads_capped and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), available_cpus(root)))
    _torch_threads_capped = True
    return torch


def computes_bfloat16(device_type: str = "cpu") -> bool:
    """Whether PyTorch computes bfloat16 natively on this kind of device: a CPU with
    AVX512_BF16 or AMX, a CUDA GPU that supports it. Elsewhere autocast emulates it, several
    times slower than float32 (docs/performance.md)."""
    torch = import_torch()
    if device_type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    try:  # (PyTorch's own checks, private: absent in a release that dropped them)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def multiplies_int8() -> bool:
    """Whether PyTorch multiplies int8 matrices (``torch._int_mm``) with the CPU's int8 dot
    product instructions (VNNI, which PyTorch asks of the CPU before it calls oneDNN's int8
    product). Without them it runs a plain loop: on a Zen 3 with AVX2 only, 53 times slower
    than float32's product (docs/performance.md), where int8 scoring exists to be faster."""
    torch = import_torch()
    try:  # (PyTorch's own check, private: absent in a release that dropped it)
        return bool(torch.cpu._is_vnni_supported())
    except AttributeError:
        return False


def _quota_v2(directory: Path) -> float | None:
    try:
        limit, period = (directory / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        return None


def _quota_v1(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota(root: Path = CGROUP, proc: Path = PROC) -> float | None:
    """The cores the CPU quota allows this process (e.g. 1.5), or None without a quota: the
    smallest quota of its cgroup and its parents (:func:`fmkit.cgroups.limiting`; cgroup v2
    ``cpu.max``, or v1 ``cpu/cpu.cfs_quota_us``)."""
    read = _quota_v2 if cgroups.unified(root) else _quota_v1
    quotas = [quota for quota in map(read, cgroups.limiting("cpu", root, proc))
              if quota is not None]
    return min(quotas, default=None)


def available_cpus(root: Path = CGROUP, proc: Path = PROC) -> int:
    """The CPUs this process may run on, at most the whole cores of its quota (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cpu_quota(root, proc)
    if quota is not None:
        cpus = min(cpus or 1, math.floor(quota + 1e-9))
    return max(1, cpus or 1)


def limit_threads(root: Path = CGROUP) -> int:
    """Cap numba's threads at :func:`available_cpus` unless ``$NUMBA_NUM_THREADS`` chose
    them; returns the thread count."""
    import numba

    if "NUMBA_NUM_THREADS" not in os.environ:
        numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, available_cpus(root)))
    return numba.get_num_threads()


def process_threads(processes: int) -> dict[str, str]:
    """The environment that gives each of ``processes`` processes sharing this one's cores its
    share of them: numba's and PyTorch's (OpenMP's) thread counts, ``cores // processes``."""
    threads = str(max(1, available_cpus() // processes))
    return {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}


_reserved = threading.local()


def thread_count() -> int:
    """The threads fmkit's compiled work started on this thread may use: numba's setting
    (``$NUMBA_NUM_THREADS`` or ``numba.set_num_threads``; the CLI caps it with
    :func:`limit_threads`), less the cores :func:`leaving_cores` set aside (at least 1)."""
    import numba

    return max(1, numba.get_num_threads() - getattr(_reserved, "cores", 0))


@contextlib.contextmanager
def leaving_cores(cores: int) -> Iterator[None]:
    """Within this block, work started on this thread uses ``cores`` threads fewer: a reader
    that parses ahead on a thread of its own leaves a core to the trainer it feeds (on 2 cores,
    a parser on both beside the trainer made training 3-10% slower than on one thread)."""
    before = getattr(_reserved, "cores", 0)
    _reserved.cores = before + cores
    try:
        yield
    finally:
        _reserved.cores = before


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _workers(count: int) -> ThreadPoolExecutor:
    """The shared pool, grown to at least ``count`` threads (they live as long as the
    process; idle, they block)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="fmkit"), count
        return _pool


def on_threads(function: Callable[..., Any], calls: Sequence[tuple],
               threads: int | None = None) -> list[Any]:
    """``function(*args)`` for every ``args`` of ``calls`` at once, the first on the calling
    thread and the others on a shared pool; the results in order. With ``threads``, at most
    that many run at once, each thread taking every threads-th call. The calls overlap only if
    ``function`` releases the GIL. An exception in any call is raised here, after all ended."""
    if threads is not None and len(calls) > threads:
        shares = on_threads(lambda share: [function(*args) for args in share],
                            [(calls[first::threads],) for first in range(threads)])
        return [shares[i % threads][i // threads] for i in range(len(calls))]
    if not calls:
        return []
    if len(calls) == 1:
        return [function(*calls[0])]
    futures = [_workers(len(calls) - 1).submit(function, *args) for args in calls[1:]]
    try:
        first = function(*calls[0])
    finally:
        wait(futures)  # no part may outlive this call: it writes into the caller's arrays
    return [first, *(f.result() for f in futures)]


def ordered_map(function: Callable[[Any], Any], items: Iterable[Any], threads: int
                ) -> Iterator[Any]:
    """``function(item)`` of every item, ``threads`` at once on threads of their own, yielded
    in the items' order, at most ``threads + 1`` items ahead of the consumer (so memory stays
    bounded on a stream). An item's exception is raised when its turn comes."""
    if threads <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="fmkit-map") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
