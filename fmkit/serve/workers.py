"""Connections spread over the workers of ``fmkit serve --workers N``.

uvicorn's workers share one listening socket, and left alone they often hold all of a
client's keep-alive connections in one worker, where one core does all the work while the
others idle (DeepFM, 1-row requests, 2 workers: about half the requests per second;
``docs/performance.md``). Three mechanisms spread them:

* **start-up**: each worker starts accepting when its own start-up (loading the model, the
  warm-up requests) is done, and the first one up answers ``/ping`` alone; a client that then
  connects finds only that worker listening. So every worker waits, before it accepts
  anything, until all have announced they are ready (:func:`wait_for_workers`): ``/ping``
  first answers when the server runs at full capacity, as a health check means.
* **bursts**: a worker that wakes accepts every connection waiting. :class:`BalancedLoop`
  (uvloop's event loop, which uvicorn's workers run) accepts the waiting connections while
  the worker holds no more than its least loaded peer, and leaves the next one for
  :data:`DEFER` seconds to a peer that holds fewer, then takes it if still waiting. (One
  worker runs it too: uvloop's own server took one connection per pass of a busy loop.)
* **what is left**: a worker busy with a request when connections arrive cannot take them,
  and a worker the supervisor restarts starts empty. A worker holding two connections more
  than a peer closes one after its next response (:func:`should_close_connection`, checked
  at most every :data:`CHECK_SECONDS`); the client opens a new one, which the peer takes.

The workers meet in a directory the parent process makes (``$FMKIT_SERVE_WORKERS_DIR``, in the
temporary directory, named by host and process id so that a parent killed with SIGKILL leaves
one the next server removes): a
file per worker, named by its process id, holding its count of open connections (8 bytes,
memory-mapped). A worker the supervisor starts again later finds the others there and starts
at once; dead workers' files are ignored, and removed when a worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import mmap
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

from fmkit import files

log = logging.getLogger("fmkit.serve")

DIR_ENV = "FMKIT_SERVE_WORKERS_DIR"
COUNT_ENV = "FMKIT_SERVE_WORKERS"
DEFER = 0.002  # seconds a new connection is left to a less loaded worker
ACCEPT_BATCH = 64  # connections one wake of a worker may accept
CHECK_SECONDS = 0.1  # how often a worker compares its connections with its peers'
POLL_SECONDS = 0.01
WAIT_SECONDS = 600.0  # a worker still starting after this long is stuck: go on without it


class Board:
    """The workers' directory: this worker's published connection count, and its peers'."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / str(os.getpid())
        self.path.write_bytes(bytes(8))
        with open(self.path, "r+b") as f:
            self._mine = mmap.mmap(f.fileno(), 8)
        self._peers: dict[str, mmap.mmap] = {}
        self.count = 0
        self.next_check = 0.0

    def publish(self, count: int) -> None:
        self.count = count
        self._mine[:8] = count.to_bytes(8, "little")

    def forget_the_dead(self) -> None:
        """Remove the files of workers no longer running (a restarted worker's predecessor),
        before their process ids can be reused."""
        for path in self.directory.iterdir():
            if not files.process_alive(int(path.name)):
                path.unlink(missing_ok=True)

    def peers(self) -> list[int]:
        """The connection counts of the other live workers."""
        counts = []
        for path in self.directory.iterdir():
            if path.name == self.path.name or not files.process_alive(int(path.name)):
                continue
            if path.name not in self._peers:
                with contextlib.suppress(OSError, ValueError), open(path, "r+b") as f:
                    self._peers[path.name] = mmap.mmap(f.fileno(), 8)
            if path.name in self._peers:
                counts.append(int.from_bytes(self._peers[path.name][:8], "little"))
        return counts


_board: Board | None = None
LOOP = "fmkit.serve.workers:BalancedLoop"  # uvicorn's --loop for the workers


@contextlib.contextmanager
def meeting_place(workers: int) -> Iterator[None]:
    """The workers' directory (see the module's docstring), made for the server's lifetime
    and named in the environment the workers inherit. Where no temporary directory can be
    made, the workers neither wait for one another nor compare their loads (a warning says
    so)."""
    os.environ[COUNT_ENV] = str(workers)
    os.environ.pop(DIR_ENV, None)
    if workers <= 1:
        yield
        return
    try:  # named by host and pid: a server killed with SIGKILL leaves one the next removes
        directory = files.temporary_dir(Path(tempfile.gettempdir()) / "fmkit-serve")
    except (OSError, files.OutputError) as e:
        log.warning("the workers cannot meet (%s): each starts and accepts on its own", e)
        yield
        return
    try:
        os.environ[DIR_ENV] = str(directory)
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def wait_for_workers(timeout: float = WAIT_SECONDS) -> bool:
    """Announce this worker as ready, then wait until all ``$FMKIT_SERVE_WORKERS`` have
    (nothing to wait for without the parent's directory). False when ``timeout`` passed
    first."""
    global _board
    directory, workers = os.environ.get(DIR_ENV), int(os.environ.get(COUNT_ENV) or 1)
    if not directory or workers <= 1 or not Path(directory).is_dir():
        return True
    _board = Board(directory)
    _board.forget_the_dead()
    deadline = time.monotonic() + timeout
    while len(_board.peers()) + 1 < workers:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def should_close_connection() -> bool:
    """Whether this worker should close the connection it is answering on (``Connection:
    close``): it holds two or more connections more than a peer. Checked at most every
    ``CHECK_SECONDS``, so a client reconnects rarely."""
    board = _board
    if board is None or board.count < 2 or time.monotonic() < board.next_check:
        return False
    board.next_check = time.monotonic() + CHECK_SECONDS
    return min(board.peers(), default=board.count) <= board.count - 2


class BalancedAcceptor:
    """Accepts the connections of a listening socket shared with other workers, as
    ``create_server(sock=...)`` would, but one at a time and the least loaded worker first
    (see the module's docstring). Has the ``close`` and ``wait_closed`` of an
    :class:`asyncio.Server`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Any, ssl: Any = None, owns_socket: bool = False):
        self._loop, self._sock, self._factory, self._ssl = loop, sock, protocol_factory, ssl
        self._owns_socket = owns_socket  # made by create_server (one worker): closed here
        self._open = 0  # connections accepted and not yet lost
        self._deferred = False  # connections were left to the peers: the next wake takes them
        self._closed = False
        self.sockets = [sock]
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _count(self, change: int) -> None:
        self._open += change
        if _board is not None:
            _board.publish(self._open)

    def _ready(self) -> None:
        """Accept the waiting connections this worker should take: all of them, up to
        ``ACCEPT_BATCH``, while it holds no more than its least loaded peer, and all of them
        on the wake after it left some to its peers for ``DEFER`` (a busy loop wakes once per
        pass over its connections: one connection a pass, or one per deferral, left a burst
        of new ones waiting for a second behind the keep-alive ones)."""
        waited, self._deferred = self._deferred, False
        for _ in range(ACCEPT_BATCH):
            if (self._open and _board is not None and not waited
                    and min(_board.peers(), default=self._open) < self._open):
                self._loop.remove_reader(self._sock.fileno())  # the peer may take it meanwhile
                self._loop.call_later(DEFER, self._rearm)
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left, or another worker took it
            except OSError as e:  # out of file descriptors: try again later rather than spin
                log.warning("cannot accept a connection: %s", e)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(0.1, self._rearm)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._count(+1)
            self._loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._counted_protocol, conn, ssl=self._ssl)
        except Exception as e:  # a failed TLS handshake, a client already gone
            log.debug("a connection closed before it opened: %s", e)
            conn.close()
            self._count(-1)

    def _counted_protocol(self) -> asyncio.BaseProtocol:
        """uvicorn's protocol, whose ``connection_lost`` also counts the connection out."""
        protocol = self._factory()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                self._count(-1)

        protocol.connection_lost = connection_lost
        return protocol

    def _rearm(self) -> None:
        if not self._closed:
            self._deferred = True  # what still waits after DEFER, no peer took: take it all
            self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            if self._owns_socket:
                self._sock.close()

    async def wait_closed(self) -> None:
        return None


class BalancedLoop(uvloop.Loop):
    """uvloop's loop whose ``create_server`` — with the shared socket (uvicorn's workers), or
    a host and port (one worker, a socket of its own) — is a :class:`BalancedAcceptor`:
    uvloop's own server accepted one connection per pass of a busy loop, so new connections
    waited behind busy keep-alive ones (docs/performance.md, session 57)."""

    async def create_server(self, protocol_factory, host=None, port=None, *, sock=None,
                            ssl=None, backlog=100, **kwargs):
        if kwargs or (sock is None and (port is None or _ip_version(host) is None)):
            # (a host name may stand for several addresses: uvloop binds each)
            return await super().create_server(protocol_factory, host, port, sock=sock,
                                               ssl=ssl, backlog=backlog, **kwargs)
        owns = sock is None
        if owns:
            v6 = _ip_version(host) == 6
            sock = socket.create_server((host, port), backlog=backlog,
                                        family=socket.AF_INET6 if v6 else socket.AF_INET,
                                        dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6())
        sock.listen(backlog)
        return BalancedAcceptor(self, sock, protocol_factory, ssl, owns_socket=owns)


def _ip_version(host: Any) -> int | None:
    """4 or 6 for an IP address literal, None for anything else (a host name, None)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None
