"""The compiled sparse embedding optimizers against PyTorch's own, step for step, on gradients
of ``nn.EmbeddingBag(sparse=True)`` with repeated ids; row-wise AdaGrad against a numpy
re-computation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from fmkit.train.embedding_optimizers import DenseAdam, SparseRows

from .deepfm_helpers import small_deepfm_config


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


@pytest.mark.parametrize("mode", ["NONE", "L2", "DECOUPLE"])
def test_rowwise_adagrad_keeps_one_accumulator_per_row(mode):
    """fbgemm's exact row-wise AdaGrad: one mean squared gradient a row; weight decay by
    TorchEasyRec's weight_decay_mode (NONE: none; L2: in the gradient; DECOUPLE: the weight
    shrunk by lr times the decay)."""
    torch.manual_seed(1)
    bag = nn.EmbeddingBag(20, 4, mode="sum", sparse=True)
    start = bag.weight.detach().numpy().copy()
    optimizer = SparseRows(bag.parameters(), "rowwise_adagrad", lr=0.1, weight_decay=0.01,
                           weight_decay_mode=mode)
    ids, offsets = torch.tensor([3, 3, 7, 1]), torch.tensor([0, 2])
    bag(ids, offsets).sum().backward()
    optimizer.step()
    expected = start.copy()
    for row, count in ((3, 2), (7, 1), (1, 1)):
        g = count * np.ones(4)  # d(sum)/d(row) = its number of lookups
        if mode == "L2":
            g = g + 0.01 * start[row]
        accumulator = np.mean(g * g)
        shrink = 1 - 0.1 * 0.01 if mode == "DECOUPLE" else 1.0
        expected[row] = shrink * start[row] - 0.1 * g / (np.sqrt(accumulator) + 1e-8)
    np.testing.assert_allclose(bag.weight.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_sparse_adams_weight_decay_is_fbgemms_decoupled_step_of_the_touched_rows():
    """Lazy Adam with weight decay against a numpy loop of fbgemm's fused Adam: each touched
    row ``w - lr * (adam step + weight_decay * w)``; untouched rows keep their weights."""
    lr, betas, decay, eps = 0.01, (0.8, 0.95), 0.5, 1e-8
    ours = _steps(lambda p: SparseRows(p, "adam", lr=lr, betas=betas, weight_decay=decay))
    torch.manual_seed(0)
    weight = nn.EmbeddingBag(50, 6, mode="sum", sparse=True).weight.detach().numpy()
    weight = weight.astype(np.float64)
    first, second = np.zeros_like(weight), np.zeros_like(weight)
    rng = np.random.default_rng(0)
    for t in range(1, 5):
        ids = rng.integers(0, 12, 40)
        target = rng.normal(size=(10, 6))
        pooled = weight[ids].reshape(10, 4, 6).sum(axis=1)
        grad_out = 2 * (pooled - target)
        grads = np.zeros_like(weight)
        np.add.at(grads, ids, np.repeat(grad_out, 4, axis=0))
        for r in np.unique(ids):
            first[r] = betas[0] * first[r] + (1 - betas[0]) * grads[r]
            second[r] = betas[1] * second[r] + (1 - betas[1]) * grads[r] ** 2
            step = lr * np.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
            adam = step / lr * first[r] / (np.sqrt(second[r]) + eps)
            weight[r] = weight[r] - lr * (adam + decay * weight[r])
    np.testing.assert_allclose(ours, weight, rtol=1e-4, atol=1e-5)
    assert np.abs(ours - _steps(lambda p: SparseRows(p, "adam", lr=lr, betas=betas))).max() > 1e-3


def _dense_steps(optimizer_of, steps: int = 25) -> list[np.ndarray]:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = optimizer_of(net.parameters())
    x = torch.randn(64, 12)
    for _ in range(steps):
        optimizer.zero_grad()
        ((net(x) - 1) ** 2).mean().backward()
        optimizer.step()
    return [p.detach().numpy().copy() for p in net.parameters()]


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("beta1", [0.9, 0.3])  # (torch's lerp takes another form below 0.5)
def test_dense_adam_equals_pytorch(decoupled, beta1):
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    settings = dict(lr=0.01, betas=(beta1, 0.95), weight_decay=0.05)
    ours = _dense_steps(lambda p: DenseAdam(p, decoupled=decoupled, **settings))
    theirs = _dense_steps(lambda p: kind(p, foreach=False, **settings))
    start = _dense_steps(lambda p: DenseAdam(p, lr=0.0), steps=1)
    assert not np.allclose(ours[0], start[0])  # it moved
    for a, b in zip(ours, theirs):  # the same operations in float32; a unit in the last place
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_dense_adam_state_dict_resumes_exactly():
    torch.manual_seed(4)
    net = nn.Linear(5, 3)
    twin = nn.Linear(5, 3)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(16, 5)

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()

    straight = DenseAdam(net.parameters(), lr=0.05, weight_decay=0.01)
    train(net, straight, 6)
    first = DenseAdam(twin.parameters(), lr=0.05, weight_decay=0.01)
    train(twin, first, 3)
    saved = first.state_dict()
    assert saved["state"][0]["step"] == 3 and saved["param_groups"][0]["params"] == [0, 1]
    resumed = DenseAdam(twin.parameters(), lr=0.9)  # settings come back from the state
    resumed.load_state_dict({"param_groups": saved["param_groups"],
                             "state": {str(i): {k: (v.numpy() if torch.is_tensor(v) else v)
                                                for k, v in s.items()}
                                       for i, s in saved["state"].items()}})
    train(twin, resumed, 3)
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_deepfm_training_never_imports_pytorchs_compiler(tmp_path):
    """torch.optim imports torch._dynamo when an optimizer is built or stepped (a second of
    every training process); DeepFM's default optimizers (compiled sparse rows, dense Adam)
    do without it."""
    config = small_deepfm_config(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from fmkit.cli import main
        code = main(["train", "--config", {str(config)!r}, "--quiet"])
        print(code, "torch._dynamo" in sys.modules, "torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["0", "False", "True"]


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_compiled_steps_reach_cached_derived_weights(kind):
    """The numpy forward caches a layer's bfloat16-rounded weight until the parameter's
    version changes; fmkit's compiled optimizers write through numpy views, so they must bump
    it as PyTorch's in-place steps do (else a BF16 model's few-row scores after more training
    use the old weights). Reference: the layer's current weight rounded to bfloat16 by
    PyTorch's own cast."""
    from fmkit.models.deepfm.small_batches import _rounded

    torch.manual_seed(0)
    if kind == "dense":
        weight = nn.Linear(4, 3).weight
        weight.grad = torch.ones_like(weight)
        optimizer = DenseAdam([weight], lr=0.1)
    else:
        bag = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
        bag(torch.tensor([1, 2, 3]), torch.tensor([0])).sum().backward()
        weight, optimizer = bag.weight, SparseRows([bag.weight], "adagrad", lr=0.1)
    rounded = _rounded(weight)
    before = rounded().copy()
    optimizer.step()
    expected = weight.detach().to(torch.bfloat16).float().numpy()
    assert not np.array_equal(before, expected)
    np.testing.assert_array_equal(rounded(), expected)


def test_a_model_saved_with_a_setting_its_optimizer_never_read_still_loads(tmp_path):
    """Before, a sparse AdaGrad's weight_decay was accepted (and never applied); a model
    trained so must still load and score, though training with it is now refused."""
    import json

    from fmkit.models.deepfm import config as configs
    from fmkit.models.deepfm.model import DeepFMModel

    from .deepfm_helpers import small

    document = small()
    document.setdefault("train_config", {})["sparse_optimizer"] = {
        "adagrad_optimizer": {"lr": 0.1, "weight_decay": 0.001}}
    with pytest.raises(configs.ConfigError, match="weight_decay: not a setting"):
        configs.parse(document)
    model = DeepFMModel.create(configs.parse(small()))
    path = model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    meta["config"]["train_config"]["sparse_optimizer"] = document["train_config"][
        "sparse_optimizer"]
    (path / "model.json").write_text(json.dumps(meta))
    loaded = DeepFMModel.load(path)
    assert loaded.config.train_config.sparse_optimizer.adagrad_optimizer.weight_decay == 0.001
