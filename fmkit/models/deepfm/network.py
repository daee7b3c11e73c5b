"""The DeepFM network (PyTorch), as TorchEasyRec's ``DeepFM.predict`` computes it.

``y = Σ wide + Σ_d FM_d + Linear(MLP_deep(deep))``, or with a ``final`` MLP
``y = Linear(MLP_final([Σ wide ‖ FM ‖ MLP_deep(deep)]))``, where FM_d =
½[(Σ_i e_id)² − Σ_i e_id²] over the FM group's embeddings (the ``deep`` group's when there is
no ``fm`` group). FM and deep share one table per embedding name; the wide part has its own
tables of ``wide_embedding_dim`` columns. Tables are looked up with
``nn.EmbeddingBag(sparse=True)`` so that the sparse optimizer touches only the rows a batch
uses, several tables to one bag (see :class:`Banks`).

Init functions and activations are written as TorchEasyRec writes them
(``"nn.init.uniform_,a=-0.01,b=0.01"``, ``"nn.LeakyReLU(negative_slope=0.1)"``) but are parsed
against a list of allowed names with numeric arguments, never evaluated as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch
from torch import nn

from fmkit.models.deepfm.config import MLP as MLPConfig
from fmkit.models.deepfm.config import ConfigError, DeepFM, check_mlp
from fmkit.models.deepfm.features import Encoded, FeatureSet, default_init_bound

INIT_FUNCTIONS = ("uniform_", "normal_", "zeros_", "ones_", "constant_", "xavier_uniform_",
                  "xavier_normal_", "trunc_normal_")
ACTIVATIONS = ("ReLU", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh",
               "Softplus", "Identity")


def _numeric_kwargs(text: str, where: str) -> dict[str, float]:
    kwargs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected name=number, got {part!r}") from None
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{where}: expected name=number, got {part!r}")
    return kwargs


def init_function(text: str | None, where: str) -> Callable[[torch.Tensor], None] | None:
    """``nn.init.NAME[,key=value...]`` as a function of a tensor (None if unset)."""
    if not text:
        return None
    name, _, rest = text.partition(",")
    name = name.strip().removeprefix("torch.").removeprefix("nn.init.")
    if name not in INIT_FUNCTIONS:
        raise ConfigError(f"{where}: init function must be nn.init. one of "
                          f"{', '.join(INIT_FUNCTIONS)}, got {text!r}")
    kwargs = _numeric_kwargs(rest, where)
    function = getattr(nn.init, name)
    try:
        function(torch.empty(2, 2), **kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {text!r}: {e}") from None
    return lambda tensor: function(tensor, **kwargs)


def activation(text: str, where: str) -> nn.Module | None:
    """``nn.NAME`` or ``nn.NAME(key=value, ...)`` as a module; "" means none."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(?:torch\.)?(?:nn\.)?(\w+)\s*(?:\((.*)\))?\s*", text)
    if not match or match.group(1) not in ACTIVATIONS:
        raise ConfigError(f"{where}: activation must be nn. one of {', '.join(ACTIVATIONS)} "
                          f"(optionally with numeric arguments), got {text!r}")
    kwargs = _numeric_kwargs(match.group(2) or "", where)
    try:
        return getattr(nn, match.group(1))(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {text!r}: {e}") from None


class MLP(nn.Sequential):
    """TorchEasyRec's MLP: per layer Linear → BatchNorm or LayerNorm → activation → dropout;
    the last layer has its activation too (the output layer is separate)."""

    def __init__(self, in_features: int, config: MLPConfig, where: str):
        units = config.hidden_units
        dropout = check_mlp(config, where)
        layers: list[nn.Module] = []
        for i, out in enumerate(units):
            layers.append(nn.Linear(in_features, out, bias=config.bias and not config.use_bn))
            if config.use_bn:
                layers.append(nn.BatchNorm1d(out))
            if config.use_ln:
                layers.append(nn.LayerNorm(out))
            act = activation(config.activation, f"{where}.activation")
            if act is not None:
                layers.append(act)
            if dropout and dropout[i] > 0:
                layers.append(nn.Dropout(dropout[i]))
            in_features = out
        super().__init__(*layers)
        self.output_dim = units[-1]


def factorization_machine(x: torch.Tensor) -> torch.Tensor:
    """FM_d = ½[(Σ_i x_id)² − Σ_i x_id²] of ``x`` [B, N, D] → [B, D]."""
    total = x.sum(dim=1)
    return 0.5 * (total * total - (x * x).sum(dim=1))


@dataclass
class Slot:
    """Where one embedding table lives: rows ``base:base + rows`` of a bank."""

    bank: str
    base: int
    rows: int


class Banks(nn.Module):
    """Embedding tables stored side by side in one ``nn.EmbeddingBag`` per (dimension,
    pooling) — "table-batched" as fbgemm does — so a batch is one lookup, one sparse gradient
    and one optimizer update per bank instead of one per feature. Tables keep their own rows
    (a feature's ids are offset by its table's base) and their own initialisation."""

    def __init__(self):
        super().__init__()
        self.banks = nn.ModuleDict()
        self.slots: dict[str, Slot] = {}  # table name -> slot
        self.members: dict[str, list[str]] = {}  # bank -> feature names, in lookup order
        self.feature_table: dict[str, str] = {}
        self.widths: dict[str, int] = {}  # bank -> embedding dimension

    def build(self, tables: list[tuple[str, str, int, int, str, str | None, str]],
              initialise: bool = True) -> None:
        """``tables``: (feature, table name, rows, dim, pooling, init_fn, where) per feature;
        features naming the same table share its rows. ``initialise=False`` leaves the
        weights unset, for loading (initialising 2.6 million rows took 0.7 s of a 0.9 s
        load); else each table is drawn once, by its own init function."""
        sizes: dict[str, int] = {}
        inits = []
        for feature, table, rows, dim, pooling, init_fn, where in tables:
            bank = f"dim{dim}_{pooling}"
            self.widths[bank] = dim
            if table not in self.slots:
                self.slots[table] = Slot(bank, sizes.get(bank, 0), rows)
                sizes[bank] = sizes.get(bank, 0) + rows
                inits.append((table, init_fn, where))
            self.members.setdefault(bank, []).append(feature)
            self.feature_table[feature] = table
        self.bases = {bank: np.array([self.slots[self.feature_table[name]].base
                                      for name in members], np.int64)
                      for bank, members in self.members.items()}
        for bank, rows in sizes.items():  # (given a weight, EmbeddingBag does not draw one)
            dim, pooling = self.widths[bank], bank.split("_")[1]
            self.banks[bank] = nn.EmbeddingBag(rows, dim, mode=pooling, sparse=True,
                                               _weight=nn.Parameter(torch.empty(rows, dim)))
        if not initialise:
            return
        with torch.no_grad():
            for table, init_fn, where in inits:
                weight = self.table(table)
                init = init_function(init_fn, where)
                if init is None:
                    bound = default_init_bound(weight.shape[0])
                    weight.uniform_(-bound, bound)
                else:
                    init(weight)

    def table(self, name: str) -> torch.Tensor:
        """The rows of one table (a view of its bank's weight)."""
        slot = self.slots[name]
        return self.banks[slot.bank].weight[slot.base: slot.base + slot.rows]

    def lookups(self, sparse: dict[str, tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each bank's (ids, offsets) for one lookup: its members' ids moved to their table's
        rows, one bag per member and row, member after member (concatenated in numpy: a few
        microseconds per feature, where a tensor operation costs ten)."""
        out = {}
        for bank, features in self.members.items():
            pairs = [sparse[name] for name in features]
            counts = [ids.size for ids, _ in pairs]
            ids = np.concatenate([ids for ids, _ in pairs])
            ids += np.repeat(self.bases[bank], counts)
            offsets = np.concatenate([offsets[:-1] for _, offsets in pairs])
            offsets += np.repeat(np.cumsum([0] + counts[:-1]), [o.size - 1 for _, o in pairs])
            out[bank] = ids, offsets
        return out

    def inputs(self, sparse: dict[str, tuple[np.ndarray, np.ndarray]], device: torch.device
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`lookups` as tensors on ``device``."""
        return {bank: (torch.from_numpy(ids).to(device), torch.from_numpy(offsets).to(device))
                for bank, (ids, offsets) in self.lookups(sparse).items()}

    def forward(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        """Each bank's pooled embeddings, [members, B, dim], in member order."""
        return {bank: self.banks[bank](*inputs[bank]).view(len(self.members[bank]), -1,
                                                           self.widths[bank])
                for bank in self.members}


class DeepFMNet(nn.Module):
    """Wide + FM + deep over shared embeddings; ``forward`` returns y (logits) of shape [B],
    or [B, num_class] for several classes (the wide and FM terms then add to every class's
    logit, as TorchEasyRec broadcasts them).

    The forward pass costs a fixed number of tensor operations whatever the number of
    features: one lookup per bank, then the FM and deep inputs gathered from the banks'
    outputs by index (precomputed here), which keeps one-row requests cheap."""

    def __init__(self, features: FeatureSet, config: DeepFM, initialise: bool = True,
                 num_class: int = 1):
        super().__init__()
        self.features = features
        used = list(dict.fromkeys(features.groups["deep"] + features.groups.get("fm", [])))
        shared = [f for f in used if features.features[f].sparse]
        self.tables = Banks()
        self.tables.build([
            (name, f.embedding_name, f.num_embeddings, f.embedding_dim, f.pooling, f.init_fn,
             f"feature {name} init_fn")
            for name in shared for f in [features.features[name]]], initialise)
        self.wide_tables = Banks()
        self.wide_tables.build([
            (name, f.embedding_name + "_wide", f.num_embeddings, features.wide_embedding_dim,
             f.pooling, config.wide_init_fn, "model_config.deepfm.wide_init_fn")
            for name in features.groups["wide"] for f in [features.features[name]]],
            initialise)
        deep_dim = sum(features.features[n].output_dim for n in features.groups["deep"])
        self.deep = MLP(deep_dim, config.deep, "model_config.deepfm.deep")
        fm_dim = features.features[features.groups[features.fm_group][0]].output_dim
        self.final = (MLP(1 + fm_dim + self.deep.output_dim, config.final,
                          "model_config.deepfm.final") if config.final else None)
        self.output = nn.Linear(self.final.output_dim if self.final else self.deep.output_dim,
                                num_class)
        # every feature value lives in the stack of its width: the banks of that width, member
        # after member, then (width 1) the dense features
        self.dense_names = [f for f in used if not features.features[f].sparse]
        self.stacks: dict[int, list[str]] = {}
        for bank, members in self.tables.members.items():
            self.stacks.setdefault(self.tables.widths[bank], []).extend(members)
        if self.dense_names:
            self.stacks.setdefault(1, []).extend(self.dense_names)
        self.fm_runs = self._runs(features.groups[features.fm_group])
        self.deep_runs = self._runs(features.groups["deep"])

    def _runs(self, names: list[str]) -> list[tuple[int, list[int] | None]]:
        """``names`` as runs of one width: (width, positions in that width's stack, or None
        for the whole stack in order)."""
        runs: list[tuple[int, list[int]]] = []
        for name in names:
            width = self.features.features[name].output_dim
            if not runs or runs[-1][0] != width:
                runs.append((width, []))
            runs[-1][1].append(self.stacks[width].index(name))
        return [(width, None if positions == list(range(len(self.stacks[width]))) else positions)
                for width, positions in runs]

    def _gather(self, stacks: dict[int, torch.Tensor], runs: list) -> list[torch.Tensor]:
        """Each run's values, [B, features, width]."""
        out = []
        for width, positions in runs:
            stack = stacks[width]
            if positions is not None:
                stack = stack.index_select(0, torch.tensor(positions, device=stack.device))
            out.append(stack.transpose(0, 1))
        return out

    def forward(self, inputs: Encoded) -> torch.Tensor:
        device = self.output.weight.device
        dense = None
        if self.dense_names:
            dense = torch.from_numpy(np.stack([inputs.dense[name].reshape(-1)
                                               for name in self.dense_names])).to(device)
        return self.score(self.tables.inputs(inputs.sparse, device),
                          self.wide_tables.inputs(inputs.sparse, device), dense)

    def score(self, lookups: dict[str, tuple[torch.Tensor, torch.Tensor]],
              wide_lookups: dict[str, tuple[torch.Tensor, torch.Tensor]],
              dense: torch.Tensor | None) -> torch.Tensor:
        """y from tensors alone (what ONNX export traces): each bank's (ids, offsets) from
        :meth:`Banks.lookups`, and the dense features' values [dense features, B]."""
        pooled = self.tables(lookups)
        parts: dict[int, list[torch.Tensor]] = {}
        for bank, values in pooled.items():
            parts.setdefault(self.tables.widths[bank], []).append(values)
        if dense is not None:
            parts.setdefault(1, []).append(dense.unsqueeze(2))
        stacks = {width: p[0] if len(p) == 1 else torch.cat(p) for width, p in parts.items()}
        wide = sum(values.sum(dim=(0, 2)) for values in self.wide_tables(wide_lookups).values()
                   ).unsqueeze(1)
        fm = factorization_machine(self._gather(stacks, self.fm_runs)[0])  # one width: one run
        deep_parts = [part.reshape(part.shape[0], -1)
                      for part in self._gather(stacks, self.deep_runs)]
        hidden = self.deep(deep_parts[0] if len(deep_parts) == 1 else torch.cat(deep_parts, 1))
        if self.final is not None:
            y = self.output(self.final(torch.cat([wide, fm, hidden], dim=1)))
        else:
            y = wide + fm.sum(dim=1, keepdim=True) + self.output(hidden)  # (broadcast)
        return y.squeeze(1) if y.shape[1] == 1 else y
