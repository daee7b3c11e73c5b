"""Several training processes through PyTorch's own distributed stack (``torch.distributed``).

Processes are started by ``torchrun`` (``torchrun --nproc-per-node 2 -m fmkit train ...``, or
``fmkit train --nproc 2`` which runs it for you); torchrun's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) is all :func:`init_from_environment` needs.
On CPU the backend is Gloo; on GPUs NCCL. Every process reads its own shard of the input
(:class:`fmkit.data.sources.FileSource` ``shard``), computes the gradient of its share of each
mini-batch, and the gradients are combined by collectives before every process applies the
same update to its replica of the model (:class:`DataParallel`, a learner wrapping the
single-process one, as TorchRec's ``DistributedModelParallel`` wraps a module); only rank 0
writes the model, the checkpoints and the metrics.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fmkit import files
from fmkit.cpus import available_cpus, process_threads
from fmkit.errors import require_option, require_torch
from fmkit.logs import log


def _dist():
    require_torch("Training on several processes (torch.distributed)", extra="distributed")
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True when this process is one of several in an initialised process group."""
    if "WORLD_SIZE" not in os.environ and "torch.distributed" not in sys.modules:
        return False  # no need to import torch
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    if not active():
        return 0, 1
    dist = _dist()
    return dist.get_rank(), dist.get_world_size()


def shard() -> tuple[int, int]:
    """This process's share of a training channel, as the readers take it: (part, parts)."""
    return rank_and_size()


def primary() -> bool:
    """Whether this process writes the model, checkpoints and logs (rank 0, or the only one)."""
    return rank_and_size()[0] == 0


_cpu_group = None  # the group for collectives on CPU tensors (Gloo)
PARENT_ENV = "FMKIT_PARENT_PID"  # the pid a process fmkit starts expects as its parent
FAILURE_ENV = "FMKIT_FAILURE_MARK"  # the path the first process of a launch to fail creates
COMMAND_ENV = "FMKIT_COMMAND_LINE"  # the command the user ran, for the processes it starts
PEER_WAIT = 2.0  # seconds a process that lost a peer waits for that peer's word


def first_to_report(peer_lost: bool = False) -> bool:
    """Whether this process prints its error. Of the processes ``fmkit train --nproc``
    started, only the first to fail does, so that a missing file or a bad row is one line,
    not one per process. A process whose collective failed because a peer left
    (``peer_lost``) first waits up to ``PEER_WAIT`` seconds for that peer's word: a peer
    killed without one (SIGKILL, out of memory) leaves this process's line the only one.
    Processes torchrun started (no launch of fmkit's) or a single process: always."""
    mark = os.environ.get(FAILURE_ENV)
    if not mark:
        return True
    deadline = time.monotonic() + (PEER_WAIT if peer_lost else 0.0)
    while not os.path.exists(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:  # (the launch's folder is gone: say it rather than nothing)
        return True
    return True


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies. torchrun starts each process
    in a session of its own, so a ``kill -9`` of ``fmkit train --nproc`` (or of its process
    group, as a scheduler's timeout does) would otherwise leave the processes training as
    orphans — and writing the model later. ``parent``: the pid the parent had; when it is no
    longer this process's parent, the parent died before the request and nobody is waiting for
    this process: it exits. Elsewhere (no ``prctl``), nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1);
    returns whether this process is now one of several. Gloo on CPU; with a CUDA ``device``,
    NCCL (each process on GPU ``LOCAL_RANK``) plus a Gloo side group for the collectives
    fmkit runs on CPU arrays (counts, the gathered sparse gradients)."""
    global _cpu_group
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    die_with_parent(int(os.environ[PARENT_ENV]) if os.environ.get(PARENT_ENV) else None)
    dist = _dist()
    if not dist.is_initialized():
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="nccl")
            _cpu_group = dist.new_group(backend="gloo")
        else:
            dist.init_process_group(backend="gloo")
    return True


def local_device(device: str) -> str:
    """``cuda`` means this process's GPU (``cuda:LOCAL_RANK``) when several share a machine."""
    if device == "cuda" and active():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


DEFAULT_PORT = 29500


def init_hosts(hosts: list[str], current_host: str) -> bool:
    """SageMaker's several-host contract (``resourceconfig.json``) as a process group: rank =
    the position of ``current_host`` in ``hosts``, the first host is the rendezvous
    (``MASTER_ADDR``, port ``MASTER_PORT`` or 29500; both may be set to override, as for
    torchrun). Returns whether this process is one of several."""
    from fmkit.errors import FMKitError

    if len(hosts) <= 1:
        return False
    if current_host not in hosts:
        raise FMKitError(f"resourceconfig.json: current_host {current_host!r} is not one of "
                         f"the hosts {hosts}")
    os.environ.setdefault("MASTER_ADDR", hosts[0])
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    os.environ["RANK"] = str(hosts.index(current_host))
    os.environ["LOCAL_RANK"] = "0"
    os.environ["WORLD_SIZE"] = str(len(hosts))
    return init_from_environment()


def shutdown(wait_for_peers: bool = True, timeout_s: float = 120.0) -> None:
    """Leave the process group: after a run that finished, together (a barrier, then
    ``destroy_process_group``); after a failure, at once (``wait_for_peers=False``: the peers
    may be blocked in a collective this process will never join; torchrun stops them).

    A process that tears Gloo down while a peer is still in a collective (rank 0 scoring the
    test channel, say), or that exits with the group still alive, can abort at exit
    ("terminate called without an active exception"). The barrier is Gloo's monitored one,
    so a peer that died makes it fail after ``timeout_s`` instead of hanging."""
    if not active():
        return
    from datetime import timedelta

    dist = _dist()
    if wait_for_peers:
        try:
            dist.monitored_barrier(group=_cpu_group, timeout=timedelta(seconds=timeout_s))
        except RuntimeError as e:  # a peer failed or left: nothing more to wait for
            print(f"fmkit: warning: leaving the process group without its peers ({e})"[:300],
                  file=sys.stderr)
    dist.destroy_process_group()


def all_sum(values: np.ndarray) -> np.ndarray:
    """The element-wise sum of ``values`` over all processes (float64)."""
    if not active():
        return np.asarray(values, dtype=np.float64)
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    _dist().all_reduce(tensor, group=_cpu_group)
    return tensor.numpy()


def all_gather_rows(ids: np.ndarray, rows: np.ndarray, counts: list[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every process's ``(ids, rows)``, in rank order — the same arrays on every process: how
    sparse gradients, of a different size on each process, are combined. ``counts``: every
    process's number of ids, when a collective of the caller's carried them already;
    otherwise they are gathered first. The rows travel padded to the largest count, ids as
    float64 beside them (exact below 2**53)."""
    import torch

    if not active():
        return ids, rows
    dist = _dist()
    size = dist.get_world_size()
    if counts is None:
        mine = torch.tensor([float(ids.size)], dtype=torch.float64)
        gathered_counts = [torch.empty_like(mine) for _ in range(size)]
        dist.all_gather(gathered_counts, mine, group=_cpu_group)
        counts = [int(c[0]) for c in gathered_counts]
    packed = torch.empty((max(counts), rows.shape[1] + 1), dtype=torch.float64)
    packed[: ids.size, 0] = torch.from_numpy(ids.astype(np.float64))
    packed[: ids.size, 1:] = torch.from_numpy(rows.astype(np.float64, copy=False))
    packed[ids.size:] = 0
    gathered = [torch.empty_like(packed) for _ in range(size)]
    dist.all_gather(gathered, packed, group=_cpu_group)
    parts = [g[:n].numpy() for g, n in zip(gathered, counts)]
    return (np.concatenate([part[:, 0] for part in parts]).astype(np.int64),
            np.concatenate([part[:, 1:] for part in parts]))


# torchrun's own entry point, minus its report of a failed process: that process has
# printed its one-line error already (first_to_report), and torchrun would add a traceback
# of its own; a process a signal killed could not, so it is named here. (A SIGTERM: torchrun
# passes it to its processes, which write the model, then exits 143.)
_TORCHRUN = """import logging, os, signal, sys
from fmkit.distributed import PARENT_ENV, die_with_parent
die_with_parent(int(os.environ[PARENT_ENV]))
os.environ[PARENT_ENV] = str(os.getpid())  # what the processes it starts check
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main
logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
try:
    main()
except ChildFailedError as e:  # a process killed by a signal said nothing: say it (torchrun
    for rank, failure in sorted(e.failures.items()):  # ends the others with SIGTERM)
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            print(f"fmkit: error: process {rank} was killed by {failure.signal_name()}",
                  file=sys.stderr)
    sys.exit(1)
except SignalException as e:
    sys.exit(128 + int(e.sigval))
from fmkit.exits import exit_now
exit_now(0)  # (PyTorch's teardown would add half a second)
"""


def launch(nproc: int, argv: list[str], advice: str | None = None,
           command_line: str = "") -> int:
    """``fmkit ARGV`` on ``nproc`` local processes through torchrun; returns its exit code.
    More processes than usable cores is allowed (torchrun allows it) but said: they share the
    cores, each on one thread. ``advice`` (a format with one ``%d``, the count) is logged as
    a warning when more than one process starts. ``command_line``: what the user ran, which
    the processes record as theirs (:data:`COMMAND_ENV`)."""
    require_option(nproc >= 1, "--nproc", ">= 1", nproc)
    require_torch("--nproc (torchrun)", extra="distributed", import_it=False)
    if advice and nproc > 1:
        log.warning(advice, nproc)
    if nproc > available_cpus():
        log.warning("--nproc %d on %d usable cores: the processes share them", nproc,
                    available_cpus())
    # named by host and process id: one a killed launch leaves, the next launch removes
    scratch = files.temporary_dir(Path(tempfile.gettempdir()) / "fmkit-launch")
    try:
        # torchrun's log directory in it (by default a torchelastic_* tree in /tmp, left
        # behind by every run)
        command = [sys.executable, "-c", _TORCHRUN, "--standalone",
                   f"--nproc-per-node={nproc}", f"--log-dir={scratch / 'torchelastic'}",
                   "-m", "fmkit", *argv]
        env = {**os.environ, **process_threads(nproc), PARENT_ENV: str(os.getpid()),
               FAILURE_ENV: os.path.join(scratch, "failed"), COMMAND_ENV: command_line}
        # torchrun in a session of its own, so that a signal to this process's group (a
        # scheduler's, a terminal's) reaches it once, from here: a second SIGTERM would make
        # it kill the processes it is waiting for to write the model
        child = subprocess.Popen(command, env=env, start_new_session=True)
        before = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGTERM, before)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
