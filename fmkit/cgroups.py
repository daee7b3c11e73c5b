"""The cgroups whose limits bind this process: its own and each parent up to the root.

A container with its own cgroup namespace sees its cgroup as the root of the mount; a systemd
unit (``CPUQuota=``, ``MemoryMax=``), a batch job or a container sharing the host's cgroups is
a directory below the root, named in ``/proc/self/cgroup``, and a limit set on any parent binds
it too (as Java's and Go's runtimes read their limits). :mod:`fmkit.cpus` reads the CPU quota
here, :mod:`fmkit.memory` the memory limit.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc/self")


def unified(root: Path = ROOT) -> bool:
    """Whether ``root`` holds cgroup v2's one hierarchy (else v1: one mount per controller)."""
    return (root / "cgroup.controllers").exists()


def _own_path(proc: Path, controller: str, v2: bool) -> str | None:
    """This process's cgroup path: v2's ``0::`` line of ``/proc/self/cgroup``, or the v1 line
    whose controllers include ``controller``; None if unreadable."""
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if v2 and hierarchy == "0" and controllers == "":
            return path
        if not v2 and controller in controllers.split(","):
            return path
    return None


def limiting(controller: str, root: Path = ROOT, proc: Path = PROC) -> list[Path]:
    """The directories whose ``controller`` (``cpu``, ``memory``) limits bind this process:
    its own cgroup's and each parent's up to the mount; the mount's alone where its path is
    not under it (inside a cgroup namespace, the mount is the process's own cgroup)."""
    v2 = unified(root)
    mount = root if v2 else root / controller
    path = _own_path(proc, controller, v2)
    own = mount / path.strip("/") if path else mount
    if not own.is_dir():
        return [mount]
    return [own, *[parent for parent in own.parents if parent.is_relative_to(mount)]]
