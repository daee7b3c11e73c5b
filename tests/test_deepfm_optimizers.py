"""The compiled sparse embedding optimizers against PyTorch's own, step for step, on gradients
of ``nn.EmbeddingBag(sparse=True)`` with repeated ids; row-wise AdaGrad against a numpy
re-computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fmkit.train.embedding_optimizers import SparseRows


def _steps(optimizer_of, seed: int = 0, steps: int = 4) -> np.ndarray:
    torch.manual_seed(seed)
    bag = nn.EmbeddingBag(50, 6, mode="sum", sparse=True)
    optimizer = optimizer_of(bag.parameters())
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = torch.from_numpy(rng.integers(0, 12, 40))  # many repeats within a batch
        offsets = torch.arange(0, 40, 4)
        target = torch.from_numpy(rng.normal(size=(10, 6)).astype(np.float32))
        optimizer.zero_grad()
        ((bag(ids, offsets) - target) ** 2).sum().backward()
        optimizer.step()
    return bag.weight.detach().numpy().copy()


@pytest.mark.parametrize("rule, reference", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.05, initial_accumulator_value=0.1)),
    ("adam", lambda p: torch.optim.SparseAdam(list(p), lr=0.01, betas=(0.8, 0.95))),
])
def test_rules_equal_pytorch(rule, reference):
    ours = _steps(lambda p: SparseRows(p, rule, lr=0.01 if rule == "adam" else 0.05,
                                       betas=(0.8, 0.95), initial_accumulator_value=0.1))
    theirs = _steps(reference)
    assert not np.allclose(ours, _steps(lambda p: torch.optim.SGD(p, lr=0.0)))  # it moved
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)


def test_rowwise_adagrad_keeps_one_accumulator_per_row():
    torch.manual_seed(1)
    bag = nn.EmbeddingBag(20, 4, mode="sum", sparse=True)
    start = bag.weight.detach().numpy().copy()
    optimizer = SparseRows(bag.parameters(), "rowwise_adagrad", lr=0.1, weight_decay=0.01)
    ids, offsets = torch.tensor([3, 3, 7, 1]), torch.tensor([0, 2])
    bag(ids, offsets).sum().backward()
    optimizer.step()
    expected = start.copy()
    for row, count in ((3, 2), (7, 1), (1, 1)):
        g = count * np.ones(4) + 0.01 * start[row]  # d(sum)/d(row) = its number of lookups
        accumulator = np.mean(g * g)
        expected[row] = start[row] - 0.1 * g / (np.sqrt(accumulator) + 1e-8)
    np.testing.assert_allclose(bag.weight.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
