"""DeepFM (Guo et al., 2017) configured as TorchEasyRec configures it; needs PyTorch."""

from fmkit.errors import require_torch

require_torch("DeepFM")
