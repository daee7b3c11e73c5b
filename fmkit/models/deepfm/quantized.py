"""Int8 matrix products for scoring a DeepFM's MLPs (``export_config.dense_quantization: INT8``).

A linear layer ``y = x Wᵀ + b`` is computed as ``y[r, c] ≈ sx[r] · sw[c] · Σ_k qx[r, k] qw[c, k] +
b[c]``: each row of the input and each output channel's weights are scaled to the int8 range by
their largest magnitude and rounded (symmetric, "dynamic" quantization: the input's scales are
taken per row at scoring time, so nothing is calibrated), the products are summed exactly in
int32 by PyTorch's ``_int_mm`` (oneDNN's int8 matrix product: a private PyTorch function, the
one torchao builds on), and the sums are scaled back in float32. On the bench's network that
product runs about four times as fast as float32's; the price is an error of about 1/254 of a
row's largest value per input (docs/deepfm.md, "Int8 scoring", has the measured speed and
AUC).

Every scoring path (large blocks, few-row requests, evaluation) calls the same functions, so
a model scores the same rows alike whatever the batch: the int32 sums are exact, and the
float32 steps are the same operations in the same order.

The sums are exact where the CPU multiplies int8 pairs into 32-bit sums (VNNI: AVX512_VNNI,
AVX_VNNI, AMX). Without it (AVX2, AVX-512 without VNNI) oneDNN adds pairs of unsigned-by-signed
byte products in saturating 16-bit sums, which stay exact only while 2 · 255 · |w| < 2¹⁵: the
weights are then quantized to 7 bits (±63). :func:`weight_levels` finds which holds, once per
process; where neither does, the model scores in float32 (wrong scores would otherwise follow
silently).
"""

from __future__ import annotations

import functools

import numpy as np

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch
from torch import nn

from fmkit.compile_cache import kernel

INT8_MAX = 127
TINY = np.float32(2.0 ** -100)  # rows whose values are all smaller quantize to zeros
KEEP = np.uint32(0x7FFFFFFF)  # a quantized column's mask (its sign bit off)


@kernel(nogil=True, error_model="numpy")
def quantize_rows(x: np.ndarray, kept: np.ndarray, levels: int = INT8_MAX
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each row of float32 ``x`` [rows, cols] as int8 values in [-levels, levels] and its
    scale (largest magnitude / levels): ``x[r] ≈ scale[r] * q[r]``, rounded to nearest, ties
    to even.
    Only the columns ``kept`` marks (uint32 0x7FFFFFFF; 0 leaves a column out: its q is 0
    and its values do not set the scale) are quantized. A row whose largest magnitude is
    below ``TINY`` is zeros (scale 1); a row with a NaN or an infinity gets the scale NaN,
    so that its outputs are NaN, as float32 arithmetic would make them. (The largest
    magnitude is found on the values' bits, as integers: a float maximum does not vectorize,
    since NaN breaks its order; the integer one took a fifth of the time.)"""
    rows, cols = x.shape
    q = np.zeros((rows, cols), np.int8)
    scales = np.ones(rows, np.float32)
    bits = x.view(np.uint32)
    box = np.empty(1, np.uint32)
    value = box.view(np.float32)
    limit = np.float32(levels)
    for r in range(rows):
        peak = np.uint32(0)
        for c in range(cols):
            peak = max(peak, bits[r, c] & kept[c])
        if peak >= np.uint32(0x7F800000):  # an infinity or a NaN
            scales[r] = np.float32(np.nan)
            continue
        box[0] = peak
        if value[0] < TINY:
            continue
        scale = value[0] / limit
        inverse = np.float32(1) / scale
        for c in range(cols):
            v = np.rint(x[r, c] * inverse) if kept[c] else np.float32(0)
            q[r, c] = np.int8(min(max(v, -limit), limit))
        scales[r] = scale
    return q, scales


@kernel(nogil=True, error_model="numpy")
def dequantize(sums: np.ndarray, row_scales: np.ndarray, column_scales: np.ndarray,
               bias: np.ndarray, x: np.ndarray, exact: np.ndarray, exact_weight: np.ndarray,
               relu: bool) -> np.ndarray:
    """``sums`` [rows, cols] (int32) scaled back to float32, ``bias`` added, then the float32
    products of ``x``'s ``exact`` columns with ``exact_weight`` [exact, cols] (here, not in
    BLAS: a few columns, and numpy's BLAS threads would contend with the scoring threads),
    and with ``relu`` clipped at 0 (the ReLU that usually follows, folded into this pass)."""
    rows, cols = sums.shape
    out = np.empty((rows, cols), np.float32)
    for r in range(rows):
        scale = row_scales[r]
        y = out[r]
        for c in range(cols):
            y[c] = np.float32(sums[r, c]) * (scale * column_scales[c]) + bias[c]
        for e in range(exact.size):
            value, weight = x[r, exact[e]], exact_weight[e]
            for c in range(cols):
                y[c] += value * weight[c]
        if relu:
            for c in range(cols):
                y[c] = max(y[c], np.float32(0))
    return out


@functools.cache
def weight_levels() -> int:
    """The largest weight magnitude whose products ``torch._int_mm`` sums exactly on this CPU,
    inputs spanning ±127: 127 (VNNI, and some CPUs without it), 63 (oneDNN's 16-bit pair
    sums, seen on an AVX-512 CPU limited to AVX2 or to AVX-512 without VNNI with
    ``ONEDNN_MAX_CPU_ISA``), or 0 where neither checks out (or PyTorch
    lacks ``_int_mm``, a private function a later version may drop). Checked on random and
    extreme operands of 1, 3 and 64 rows against int64 products."""
    if not hasattr(torch, "_int_mm"):
        return 0
    for levels in (INT8_MAX, INT8_MAX // 2):
        if _sums_exact(levels):
            return levels
    return 0


def _sums_exact(levels: int) -> bool:
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 3, 64):
        x = torch.randint(-INT8_MAX, INT8_MAX + 1, (rows, 96), generator=generator,
                          dtype=torch.int8)
        w = torch.randint(-levels, levels + 1, (96, 40), generator=generator, dtype=torch.int8)
        peak = torch.full((rows, 96), INT8_MAX, dtype=torch.int8)
        top = torch.full((96, 40), levels, dtype=torch.int8)
        for a, b in ((x, w), (peak, top), (-peak, top), (peak, -top), (-peak, w)):
            try:
                if not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()):
                    return False
            except RuntimeError:  # a build without an int8 product for these shapes
                return False
    return True


class Int8Linear:
    """``linear`` (followed by a ReLU when ``relu``) on float32 numpy rows, with int8
    products, except for the input columns ``exact`` (the raw numeric features of a first
    layer, or the wide and FM terms entering a final MLP), which are multiplied in float32:
    one large raw value would otherwise set the row's scale and round every embedding value
    of the row to 0. Its weights are quantized (to :func:`weight_levels`) when first needed
    and again after they change (an optimizer step bumps the parameter's version), so a model
    that trains on scores with its current weights."""

    def __init__(self, linear: nn.Linear, relu: bool = False, exact: np.ndarray | None = None):
        self.linear, self.relu = linear, relu
        self.exact = np.zeros(0, np.int64) if exact is None else np.asarray(exact, np.int64)
        self.kept = np.full(linear.in_features, KEEP, np.uint32)
        self.kept[self.exact] = 0
        self._key: tuple | None = None
        self._weights: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None

    def weights(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The quantized weights as ``_int_mm``'s right operand [in, out] (contiguous: a few
        percent faster than the transposed view), their scales, and the float32 weights of
        the ``exact`` columns [exact, out]."""
        weight = self.linear.weight
        key = (weight._version, weight.data_ptr())
        if key != self._key or self._weights is None:
            values = np.ascontiguousarray(weight.detach().numpy())
            q, scales = quantize_rows(values, self.kept, weight_levels())
            self._weights = (torch.from_numpy(q).t().contiguous(), scales,
                             np.ascontiguousarray(values[:, self.exact].T))
            self._key = key
        return self._weights

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        q, scales = quantize_rows(x, self.kept)
        weight, weight_scales, exact_weight = self.weights()
        sums = torch._int_mm(torch.from_numpy(q), weight).numpy()
        bias = self.linear.bias
        bias = (bias.detach().numpy() if bias is not None
                else np.zeros(self.linear.out_features, np.float32))
        return dequantize(sums, scales, weight_scales, bias, x, self.exact, exact_weight,
                          self.relu)
