"""An exponential moving average of a network's dense parameters: TorchEasyRec's
``dense_optimizer.ema`` (its ``DenseEMA``, on PyTorch's ``AveragedModel`` with
``get_ema_multi_avg_fn``).

The average is taken after every optimizer step: the first takes the parameters as they are,
each later one moves the average ``1 - decay`` of the way to them. Training steps the
parameters themselves; validation and the written model may use the average instead
(:meth:`DenseAverage.swapped`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


class DenseAverage:
    """The running average of ``params`` (tensors a training step changes in place)."""

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay = params, decay
        self.averages = [p.detach().clone() for p in params]
        self.count = 0  # updates so far; the first copies

    @torch.no_grad()
    def update(self) -> None:
        for average, param in zip(self.averages, self.params):
            if self.count:
                average.lerp_(param, 1 - self.decay)
            else:
                average.copy_(param)
        self.count += 1

    @contextmanager
    def swapped(self, active: bool = True) -> Iterator[None]:
        """The parameters hold the average inside the block, their own values again after it
        (also when it raises); nothing changes when ``active`` is False or there is no
        average yet."""
        if not active or not self.count:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def put_in_place(self) -> None:
        """The parameters take the average for good (when training ends)."""
        for average, param in zip(self.averages, self.params):
            param.copy_(average)

    @torch.no_grad()
    def _swap(self) -> None:
        for average, param in zip(self.averages, self.params):
            held = param.detach().clone()
            param.copy_(average)
            average.copy_(held)

    def state(self) -> tuple[dict[str, np.ndarray], int]:
        """The averages (for a checkpoint) and the number of updates they hold."""
        return ({str(i): a.detach().cpu().numpy().copy() for i, a in enumerate(self.averages)},
                self.count)

    def restore(self, arrays: dict[str, np.ndarray], count: int) -> None:
        with torch.no_grad():
            for i, average in enumerate(self.averages):
                average.copy_(torch.from_numpy(np.array(arrays[str(i)])))
        self.count = count
