"""Items of an iterator produced on a thread of their own, a few ahead of the consumer: reading
and parsing (or encoding) the next blocks overlaps training on the last (numba's compiled
readers, pyarrow and PyTorch release the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from fmkit.cpus import leaving_cores


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
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
