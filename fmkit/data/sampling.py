"""A uniform sample of a stream of rows, in memory bounded by the sample's size."""

from __future__ import annotations

import numpy as np


class UniformSample:
    """At most ``size`` rows of a stream of blocks, each row as likely as any other: every row
    gets a random key and the rows with the smallest keys stay (bottom-k sampling), trimmed
    once twice ``size`` rows are held. ``add`` takes a block's columns (each of the block's
    length); ``result`` gives them back, the kept rows in stream order. The rows kept depend
    only on the keys drawn, not on how the stream was cut into blocks."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.rows, self.held = size, rng, 0, 0
        self.parts: list[tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]] = []

    def add(self, *columns: np.ndarray) -> None:
        n = len(columns[0])
        self.parts.append((self.rng.random(n), np.arange(self.rows, self.rows + n),
                           tuple(np.asarray(c) for c in columns)))
        self.rows, self.held = self.rows + n, self.held + n
        if self.held > 2 * self.size:
            self._keep_size()

    def _keep_size(self) -> None:
        keys, positions = (np.concatenate([part[i] for part in self.parts]) for i in (0, 1))
        columns = tuple(np.concatenate(c) for c in zip(*(part[2] for part in self.parts)))
        if keys.size > self.size:
            kept = np.argpartition(keys, self.size)[: self.size]
            keys, positions, columns = keys[kept], positions[kept], tuple(c[kept]
                                                                          for c in columns)
        self.parts, self.held = [(keys, positions, columns)], keys.size

    def result(self) -> tuple[np.ndarray, ...]:
        self._keep_size()
        _, positions, columns = self.parts[0]
        order = np.argsort(positions)
        return tuple(column[order] for column in columns)
