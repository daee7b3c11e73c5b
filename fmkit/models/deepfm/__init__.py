"""DeepFM (Guo et al., 2017) configured as TorchEasyRec configures it.

The configuration's modules (``config``, ``prototext``, ``config_files``, ``features``,
``transforms``, ``expressions``, ``fuxictr*``, ``eval_results``, ``batches``, ``instances``)
are plain Python: an FM's configuration file and ``fmkit config`` read them on the light
install. The network, the model, its int8 scoring and its export need PyTorch, an extra: each
imports :mod:`.torch_required` before PyTorch.
"""
