"""An FM scored with PyTorch on any device (``fmkit predict --device cuda``): the model's
function written once for torch tensors, which the device trainer
(:mod:`fmkit.train.torch_learner`) differentiates with autograd. PyTorch is imported only when
these are called: the CPU path never needs it."""

from __future__ import annotations

import numpy as np

from fmkit.data.batch import SparseBatch
from fmkit.errors import HyperparameterError, excerpt, require_torch
from fmkit.models.fm.parameters import FMParameters


def resolve_device(name: str):
    """A torch device for ``name`` (``cpu``, ``cuda``, ``cuda:1``); an error naming the problem
    when PyTorch cannot use it."""
    require_torch(f"--device {name}")
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HyperparameterError(f"--device {name}: PyTorch sees no CUDA device here")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise HyperparameterError(f"--device {name}: {e}") from None
    try:  # a device PyTorch names but cannot compute on here (meta, a backend not built)
        torch.zeros(1, device=device).cpu()
    except Exception as e:  # (RuntimeError, NotImplementedError, AssertionError...)
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HyperparameterError(f"--device {name}: PyTorch cannot compute there: "
                                  f"{excerpt(problem, 120, quote=False)}") from None
    return device


def batch_tensors(batch: SparseBatch, device, dtype):
    import torch

    counts = np.diff(batch.indptr)
    rows = torch.from_numpy(np.repeat(np.arange(batch.n_rows), counts)).to(device)
    ids = torch.from_numpy(batch.indices.astype(np.int64)).to(device)
    values = torch.from_numpy(batch.values).to(device=device, dtype=dtype)
    labels = (torch.from_numpy(batch.labels).to(device=device, dtype=dtype)
              if batch.labels is not None else None)
    return rows, ids, values, labels


def fm_logits(b, w, V, rows, ids, values, n: int, position=None):
    """y_hat of ``n`` rows given as COO (``rows``, ``ids``, ``values``) tensors; ``w`` and ``V``
    are the rows of the features ``ids`` index (or, with ``position``, of ``ids[position]``)."""
    import torch

    index = ids if position is None else position
    kind = {"dtype": values.dtype, "device": values.device}
    linear = torch.zeros(n, **kind).index_add(0, rows, w[index] * values)
    vx = V[index] * values[:, None]
    sums = torch.zeros((n, V.shape[1]), **kind).index_add(0, rows, vx)
    squares = torch.zeros(n, **kind).index_add(0, rows, (vx * vx).sum(1))
    return b + linear + 0.5 * ((sums * sums).sum(1) - squares)


class DeviceScorer:
    """An FM's weights on a PyTorch device, scoring batches there (``fmkit predict --device``)."""

    def __init__(self, params: FMParameters, device):
        import torch

        self.device = device
        self.w0, self.w, self.V = (torch.from_numpy(np.ascontiguousarray(a)).to(device)
                                   for a in (params.w0, params.w, params.V))

    def logits(self, batch: SparseBatch) -> np.ndarray:
        import torch

        with torch.no_grad():
            rows, ids, values, _ = batch_tensors(batch, self.device, self.w.dtype)
            y = fm_logits(self.w0, self.w, self.V, rows, ids, values, batch.n_rows)
        return y.double().cpu().numpy()
