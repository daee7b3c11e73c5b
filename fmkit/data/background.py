"""Items of an iterator produced on a thread of their own, a few ahead of the consumer: reading
and parsing (or encoding) the next blocks overlaps training on the last (numba's compiled
readers, pyarrow and PyTorch release the GIL)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from fmkit.cpus import leaving_cores

# A producer still reading after this long is left behind (a daemon thread, ended with the
# process): one blocked reading a pipe whose writer is silent must not hold the consumer's
# exit — a SIGTERM or Ctrl-C — forever.
LEAVE_AFTER_SECONDS = 2.0


def background(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced on a thread, ``depth`` ahead (reading and encoding overlap training;
    pyarrow, numba and PyTorch release the GIL), leaving the consumer a core
    (:func:`fmkit.cpus.leaving_cores`). Errors are raised in the consumer."""
    buffer: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            with leaving_cores(1):  # the consumer works on one
                for item in items:
                    if stop.is_set():
                        return
                    buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as e:  # handed to the consumer
            buffer.put((done, e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:  # the consumer is done (or failed): let the producer end with it
        stop.set()
        deadline = time.monotonic() + LEAVE_AFTER_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            try:  # unblock a producer waiting on a full queue
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
