"""The DeepFM network's eval-mode forward pass in numpy, for requests of a few rows.

PyTorch spends a few microseconds on every operation whatever the batch size, and the
network's forward takes some sixty: for a one-row request that fixed cost is most of the
time. :class:`NumpyForward` computes the same function with numpy, operation for operation, on
views of the network's own CPU tensors (shared memory: loading and training update them in
place, and the views see it). :class:`~fmkit.models.deepfm.model.DeepFMModel` uses it for
batches of at most ``SMALL_ROWS`` rows; a test checks it against the PyTorch forward for
every layer kind, pooling and feature layout (float32 both: the sums differ only in order).
A model scored with int8 products (``export_config.dense_quantization: INT8``) uses it for
every batch: its MLPs' linear layers are :class:`~fmkit.models.deepfm.quantized.Int8Linear`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch
from scipy.special import erf
from torch import nn

from fmkit.compile_cache import kernel
from fmkit.kernels.prefetch import prefetch
from fmkit.models.deepfm.features import Encoded
from fmkit.models.deepfm.network import Banks, DeepFMNet
from fmkit.models.deepfm.quantized import Int8Linear

SMALL_ROWS = 16  # measured crossover with the PyTorch forward: docs/performance.md
AHEAD = 8  # rows looked up ahead (prefetched) when pooling embeddings

Layer = Callable[[np.ndarray], np.ndarray]


def _view(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _activation(module: nn.Module) -> Layer | None:
    """An activation module as a numpy function (None for one this module does not know)."""
    kind = type(module)
    if kind is nn.ReLU:
        return lambda x: np.maximum(x, 0)
    if kind is nn.LeakyReLU:
        slope = np.float32(module.negative_slope)
        return lambda x: np.where(x > 0, x, x * slope)
    if kind is nn.PReLU:
        weight = _view(module.weight)
        return lambda x: np.where(x >= 0, x, x * weight)
    if kind is nn.ELU:
        alpha = np.float32(module.alpha)
        return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if kind is nn.GELU:
        if module.approximate == "tanh":
            return lambda x: 0.5 * x * (1 + np.tanh(np.float32(0.7978845608028654)
                                                    * (x + np.float32(0.044715) * x ** 3)))
        return lambda x: 0.5 * x * (1 + erf(x * np.float32(0.7071067811865476)))
    if kind is nn.SiLU:
        return lambda x: x / (1 + np.exp(-x))
    if kind is nn.Sigmoid:
        return lambda x: 1 / (1 + np.exp(-x))
    if kind is nn.Tanh:
        return np.tanh
    if kind is nn.Softplus:
        beta, threshold = np.float32(module.beta), module.threshold
        return lambda x: np.where(x * beta > threshold, x,
                                  np.log1p(np.exp(np.minimum(x * beta, threshold))) / beta)
    return None


def bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (to nearest, ties to even, as PyTorch casts them),
    still as float32."""
    x = np.ascontiguousarray(x, np.float32)
    bits = x.view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
               ) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x), x, rounded.view(np.float32))


def _rounded(parameter: torch.Tensor) -> Callable[[], np.ndarray]:
    """A parameter's values rounded to bfloat16, rounded again only after it changed in place
    (an optimizer step bumps its version)."""
    cache: list = [None, None]

    def values() -> np.ndarray:
        if cache[0] != parameter._version:
            cache[:] = [parameter._version, bfloat16(_view(parameter))]
        return cache[1]

    return values


def _layer(module: nn.Module, bf16: bool = False) -> Layer | None:
    """One eval-mode MLP layer as a numpy function; None if it has no numpy twin here.
    ``bf16``: as ``torch.autocast`` computes it in bfloat16 — a linear layer's input, weight
    and bias rounded to bfloat16 and its float32 sums rounded, and every later layer's output
    rounded, as PyTorch keeps them in bfloat16."""
    if bf16:
        if type(module) is nn.Linear:
            weight = _rounded(module.weight)
            bias = _rounded(module.bias) if module.bias is not None else lambda: np.float32(0)
            return lambda x: bfloat16(bfloat16(x) @ weight().T + bias())
        layer = _layer(module)
        return None if layer is None else lambda x: bfloat16(layer(x))
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return lambda x: x
    if type(module) is nn.Linear:
        weight = _view(module.weight)
        bias = _view(module.bias) if module.bias is not None else np.float32(0)
        return lambda x: x @ weight.T + bias
    if type(module) is nn.BatchNorm1d and module.track_running_stats and module.affine:
        mean, var = _view(module.running_mean), _view(module.running_var)
        weight, bias, eps = _view(module.weight), _view(module.bias), np.float32(module.eps)
        return lambda x: (x - mean) / np.sqrt(var + eps) * weight + bias
    if type(module) is nn.LayerNorm and module.elementwise_affine and module.bias is not None:
        weight, bias, eps = _view(module.weight), _view(module.bias), np.float32(module.eps)

        def layer_norm(x: np.ndarray) -> np.ndarray:
            centered = x - x.mean(axis=-1, keepdims=True)
            return (centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
                    * weight + bias)

        return layer_norm
    return _activation(module)


def _raw_columns(net: DeepFMNet) -> np.ndarray:
    """The columns of the deep MLP's input that hold raw numeric features (not embeddings)."""
    columns, start = [], 0
    for width, positions in net.deep_runs:
        stack = net.stacks[width]
        for name in (stack if positions is None else [stack[p] for p in positions]):
            if name in net.dense_names:
                columns.append(start)
            start += width
    return np.array(columns, np.int64)


def _layers(mlp: nn.Module, bf16: bool, int8: bool, exact: np.ndarray) -> list[Layer | None]:
    """An MLP's layers as numpy functions (see :func:`_layer`); with ``int8`` its linear
    layers compute with int8 products (the first layer's ``exact`` input columns in float32),
    a ReLU that follows one folded into it."""
    if not int8:
        return [_layer(m, bf16) for m in mlp]
    modules, layers = list(mlp), []
    for i, module in enumerate(modules):
        if type(module) is nn.Linear:
            relu = i + 1 < len(modules) and type(modules[i + 1]) is nn.ReLU
            layers.append(Int8Linear(module, relu, exact if i == 0 else None))
        elif not (i and type(module) is nn.ReLU and type(modules[i - 1]) is nn.Linear):
            layers.append(_layer(module))
    return layers


def _pooled(banks: Banks, weights: dict[str, np.ndarray], sparse: dict, batch_size: int
            ) -> dict[str, np.ndarray]:
    """Each bank's pooled embeddings [members, B, dim], as ``nn.EmbeddingBag`` pools them
    (an empty bag is zeros)."""
    return {bank: _bag_sums(weights[bank], ids, offsets, banks.banks[bank].mode == "mean"
                            ).reshape(len(banks.members[bank]), batch_size, -1)
            for bank, (ids, offsets) in banks.lookups(sparse).items()}


@kernel(nogil=True, error_model="numpy")
def _bag_sums(weight: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool
              ) -> np.ndarray:
    """Each bag's rows of ``weight`` summed (``mean``: averaged) in float32, bag ``b`` being
    ``ids[offsets[b]:offsets[b + 1]]`` (the last to the end); an empty bag is zeros. A table's
    rows are rarely in cache: each is prefetched ``AHEAD`` look-ups early, and the sum runs on
    row views, which LLVM vectorizes (docs/performance.md, "Session 38")."""
    dim = weight.shape[1]
    out = np.zeros((offsets.size, dim), np.float32)
    for b in range(offsets.size):
        end = offsets[b + 1] if b + 1 < offsets.size else ids.size
        total = out[b]
        for j in range(offsets[b], end):
            if j + AHEAD < ids.size:
                prefetch(weight, ids[j + AHEAD], 0)
            row = weight[ids[j]]
            for d in range(dim):
                total[d] += row[d]
        if mean and end > offsets[b]:
            for d in range(dim):
                total[d] /= np.float32(end - offsets[b])
    return out


class NumpyForward:
    """``net``'s eval-mode forward in numpy (see the module's docstring); build it with
    :meth:`of`, which declines a network with a layer it cannot mirror."""

    def __init__(self, net: DeepFMNet, deep: list[Layer], final: list[Layer] | None,
                 output: Layer):
        self.net, self.deep, self.final, self.output = net, deep, final, output
        self.tables = {bank: _view(module.weight) for bank, module in net.tables.banks.items()}
        self.wide = {bank: _view(module.weight) for bank, module in net.wide_tables.banks.items()}

    @classmethod
    def of(cls, net: DeepFMNet, bfloat16: bool = False, int8: bool = False
           ) -> NumpyForward | None:
        """The numpy twin of a CPU network (``bfloat16``: of its forward pass under
        ``torch.autocast``; ``int8``: its MLPs' linear layers with int8 products, see
        :mod:`fmkit.models.deepfm.quantized`), or None (another device, or a layer kind
        without a twin here: PyTorch then scores every batch)."""
        if net.output.weight.device.type != "cpu" or net.output.out_features != 1:
            return None  # (several classes: PyTorch scores them)
        deep = _layers(net.deep, bfloat16, int8, _raw_columns(net))
        final = (_layers(net.final, bfloat16, int8,  # its wide and FM inputs in float32
                         np.arange(net.final[0].in_features - net.deep.output_dim))
                 if net.final is not None else None)
        if any(layer is None for layer in deep + (final or [])):
            return None
        return cls(net, deep, final, _layer(net.output, bfloat16))

    def __call__(self, inputs: Encoded) -> np.ndarray:
        """y of every row (float32)."""
        with np.errstate(over="ignore"):  # exp overflowing to inf in a branch np.where drops
            return self._forward(inputs)

    def _forward(self, inputs: Encoded) -> np.ndarray:
        net, batch_size = self.net, inputs.n_rows
        parts: dict[int, list[np.ndarray]] = {}
        for bank, values in _pooled(net.tables, self.tables, inputs.sparse, batch_size).items():
            parts.setdefault(net.tables.widths[bank], []).append(values)
        if net.dense_names:
            dense = np.stack([inputs.dense[name].reshape(-1) for name in net.dense_names])
            parts.setdefault(1, []).append(dense[:, :, None])
        stacks = {width: p[0] if len(p) == 1 else np.concatenate(p) for width, p in parts.items()}
        wide = sum(values.sum(axis=(0, 2)) for values in
                   _pooled(net.wide_tables, self.wide, inputs.sparse, batch_size).values())
        # [features, B, dim]: summed over its first axis, contiguous rows (a third faster
        # than over the gathered [B, features, dim] view's middle axis)
        fm_values = self._gather(stacks, net.fm_runs)[0].transpose(1, 0, 2)
        total = fm_values.sum(axis=0)
        fm = 0.5 * (total * total - (fm_values * fm_values).sum(axis=0))
        hidden = np.concatenate([part.reshape(batch_size, -1)
                                 for part in self._gather(stacks, net.deep_runs)], axis=1)
        for layer in self.deep:
            hidden = layer(hidden)
        if self.final is not None:
            x = np.concatenate([wide[:, None], fm, hidden], axis=1)
            for layer in self.final:
                x = layer(x)
            return self.output(x)[:, 0]
        return wide + fm.sum(axis=1) + self.output(hidden)[:, 0]

    @staticmethod
    def _gather(stacks: dict[int, np.ndarray], runs: list) -> list[np.ndarray]:
        return [(stacks[width] if positions is None else stacks[width][positions]
                 ).transpose(1, 0, 2) for width, positions in runs]
