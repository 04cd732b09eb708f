"""Readouts: the named ways to read a trained model, each with its shape contract and the AnnData
slot it is written to. `bioformer readouts` lists them; `--readout NAME` (embed, impute, grn) and
`bioformer.tl.embed / impute / grn(..., readout=NAME)` choose one.

    task    base class    contract                                                 AnnData
    embed   CellReadout   hidden states [B, r, c] -> one vector per cell [B, c]    obsm["X_<family>"]
    impute  ValueReadout  model outputs {name: [B, r]} -> a value per position     layers["<family>_imputed"]
    grn     PairReadout   a batch's model inputs -> gene-pair scores [B, r, r]     varp["<family>_pair_scores"]

(`<family>`: the run's model family; `key_added` overrides the key, `uns[key]["readout"]` records
the readout.) Pair scores are in query/key layout: [b, i, j] is what query gene i reads of key
gene j; for BioFormer's z that is the prior's layout (row = source, column = target).

GRN readouts of BioFormer's z (`PairBias`): every block's pair bias (its logits' additive term,
[B, H, r, r]) reduced over heads as the signed mean, the L2 norm, the max, or one head, named
"block<k> mean|l2|max|head<h>"; "pair_bias" is the last block's signed mean (the default).
scGPT: "attention" (probabilities averaged over heads and layers). Which z readout to trust is
decided by a positive control (`bioformer.inference.readout_choice`).

Adding a readout is one small class registered in one place:

    @register
    class ValueProduct(PairReadout):
        '''value_i * value_j of each pair [B, r, r].'''
        name = "value_product"
        def scores(self, model, inputs, cache):
            gene_ids, values, padding_mask, prior = inputs  # the cells' unmasked sequences
            return values[:, :, None] * values[:, None, :]  # averaged over cells by the caller

Readouts run under `torch.inference_mode()` (`Run.pair_scores` / `embed` / `imputation`): one
that needs gradients must open its own `torch.inference_mode(False)` / `enable_grad` block on
inputs it creates itself. A readout that lives in its own module (e.g.
`bioformer/inference/my_readout.py`) registers itself when imported: add the module's name to
`READOUT_MODULES` below. A family of readouts named by a pattern (like "block<k> l2") is one
class registered with `register_family`. (The in-silico perturbation readout,
`bioformer.inference.perturb`, is not registered: it builds its own masked fold sequences and
centres each source row over all cells, outside this per-batch contract.)
"""

from __future__ import annotations

import importlib
import re
from typing import Any, ClassVar

import torch

from bioformer.errors import BioformerError

# modules that define and register readouts of their own (imported when the registry is read)
READOUT_MODULES: tuple[str, ...] = ("bioformer.inference.perturb",)
HEAD_AGGREGATES = ("mean", "l2", "max")
TASKS = ("embed", "impute", "grn")
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # gene_ids, values, padding_mask, prior


class Readout:
    """A named way to read a model. `task`: embed | impute | grn; `slot` / `key`: where in an
    AnnData it goes ("{family}" = the run's model family). The class docstring is its help."""

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    key: ClassVar[str] = ""

    def check(self, model: torch.nn.Module, append_cls: bool) -> None:
        """Raise a BioformerError when this readout does not apply to the model (default: it does)."""

    @property
    def description(self) -> str:
        return " ".join((type(self).__doc__ or "").split())

    def __repr__(self) -> str:
        return f"<readout {self.name!r} ({self.task})>"


class CellReadout(Readout):
    """Base of the embeddings: hidden states [B, r, c] -> [B, c]."""

    task, slot, key = "embed", "obsm", "X_{family}"

    def __call__(self, hidden: torch.Tensor, gene_mask: torch.Tensor, cls_position: int | None) -> torch.Tensor:
        raise NotImplementedError


class ValueReadout(Readout):
    """Base of the imputations: the model's outputs at each position -> one value [B, r]."""

    task, slot, key = "impute", "layers", "{family}_imputed"

    def __call__(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class PairReadout(Readout):
    """Base of the GRN readouts: a batch's model inputs -> per-cell gene-pair scores [B, r, r].
    `cache` is shared by the readouts computed on one batch (e.g. one pass per block)."""

    task, slot, key = "grn", "varp", "{family}_pair_scores"
    candidate: ClassVar[bool] = True  # scored side by side by readout_choice (aliases are not)

    def scores(self, model: torch.nn.Module, inputs: Inputs, cache: dict[Any, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, Readout] = {}
_FAMILIES: list[type] = []  # classes with a `pattern`, `parse(name)` and `expand(model)`


def register(readout: type) -> type:
    """Register a readout class (instantiated without arguments); returns it (a decorator). A
    name taken twice is an error."""
    item = readout()
    if item.task not in TASKS or not item.name:
        raise ValueError(f"a readout needs a name and a task in {TASKS}: {readout.__name__}")
    if item.name in _REGISTRY:
        raise ValueError(f"readout {item.name!r} is registered twice")
    _REGISTRY[item.name] = item
    return readout


def register_family(family: type) -> type:
    """Register a parametrised readout class: `pattern` (its names, for the listing),
    `parse(name) -> instance | None` and `expand(model) -> [every instance for that model]`."""
    _FAMILIES.append(family)
    return family


def _load_modules() -> None:
    for module in READOUT_MODULES:
        importlib.import_module(module)


def families() -> list[type]:
    """The registered readout families (see `register_family`)."""
    _load_modules()
    return list(_FAMILIES)


def listing() -> list[tuple[str, str, str, str]]:
    """(name or name pattern, task, AnnData destination, description) of every readout."""
    _load_modules()
    rows = [(r.name, r.task, f'{r.slot}["{r.key}"]', r.description) for r in _REGISTRY.values()]
    rows += [(f.pattern, f.task, f'{f.slot}["{f.key}"]', " ".join((f.__doc__ or "").split())) for f in _FAMILIES]
    return sorted(rows, key=lambda row: (TASKS.index(row[1]), row[0]))


def applies(readout: Readout, model: torch.nn.Module, append_cls: bool) -> bool:
    """Does `readout` apply to `model` (its `check` passes)?"""
    try:
        readout.check(model, append_cls)
    except BioformerError:
        return False
    return True


def get_readout(name: str | Readout, task: str) -> Readout:
    """The readout called `name` ("block0 l2", "block0.l2" and "block0_l2" are one name) for
    `task`; one clear error naming the choices when there is none."""
    _load_modules()
    if isinstance(name, Readout):
        found: Readout | None = name
    else:
        key = re.sub(r"[._-]", " ", name.strip()) if re.match(r"block\d", name.strip()) else name.strip()
        found = _REGISTRY.get(key) or next((r for f in _FAMILIES if (r := f.parse(key)) is not None), None)
    if found is None or found.task != task:
        names = ", ".join(row[0] for row in listing() if row[1] == task)
        raise BioformerError(f"unknown {task} readout {name!r}; choose one of: {names} (bioformer readouts lists them)")
    return found


def default_readout(task: str, model: torch.nn.Module, append_cls: bool) -> Readout:
    """The readout a task uses unless told: <cls> (mean without it), the predicted value, and
    BioFormer's last-block pair bias (scGPT: attention)."""
    if task == "embed":
        return _REGISTRY["cls" if append_cls else "mean"]
    if task == "impute":
        return _REGISTRY["expression"]
    return _REGISTRY["pair_bias" if getattr(model, "uses_z", False) else "attention"]


# ---------------------------------------------------------------------------- embeddings
@register
class ClsToken(CellReadout):
    """The <cls> token's hidden state, from the layer the decoder reads [B, c]."""

    name = "cls"

    def check(self, model: torch.nn.Module, append_cls: bool) -> None:
        if not append_cls:
            raise BioformerError("this run has no <cls> token (trained with --no-append-cls); use the readout 'mean'")

    def __call__(self, hidden: torch.Tensor, gene_mask: torch.Tensor, cls_position: int | None) -> torch.Tensor:
        return hidden[:, cls_position]  # [B, c]


@register
class MeanOverGenes(CellReadout):
    """The mean of the gene tokens' hidden states [B, c]; NaN for a cell without gene tokens
    (never a silent zero vector)."""

    name = "mean"

    def __call__(self, hidden: torch.Tensor, gene_mask: torch.Tensor, cls_position: int | None) -> torch.Tensor:
        w = gene_mask.to(hidden.dtype).unsqueeze(-1)  # [B, r, 1]
        return (hidden * w).sum(dim=1) / w.sum(dim=1)  # [B, c]; 0/0 = NaN


# ---------------------------------------------------------------------------- imputation
@register
class PredictedValue(ValueReadout):
    """Each masked gene's predicted bin, mapped back to log-normalised expression through the
    cell's bin edges (layers[key]; the bins in layers[key + "_bins"])."""

    name = "expression"

    def __call__(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["pred"]  # [B, r]


# ---------------------------------------------------------------------------- gene pairs
def reduce_heads(bias: torch.Tensor, heads: str) -> torch.Tensor:
    """Per-head pair biases [B, H, r, r] -> [B, r, r]: signed mean, L2 norm, max, or head<h>."""
    bias = bias.float()
    if heads == "mean":
        return bias.mean(1)
    if heads == "l2":
        return bias.pow(2).sum(1).sqrt()
    if heads == "max":
        return bias.amax(1)
    return bias[:, int(heads[4:])]


class PairBias(PairReadout):
    """BioFormer's z: block k's pair bias (Linear(LN(z_k)), per head, in logit units) reduced over
    heads: signed mean, L2 norm, max, or one head [B, r, r]."""

    pattern = "block<k> mean|l2|max|head<h>"

    def __init__(self, block: int = -1, heads: str = "mean", name: str | None = None) -> None:
        self.block, self.heads = block, heads
        self._name = name or f"block{block} {heads}"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    @classmethod
    def parse(cls, name: str) -> PairBias | None:
        m = re.fullmatch(r"block(\d+) (mean|l2|max|head\d+)", name)
        return cls(int(m.group(1)), m.group(2)) if m else None

    @classmethod
    def expand(cls, model: torch.nn.Module) -> list[PairBias]:
        """Every block x reduction of a model with z (heads from its attention modules)."""
        out = []
        for k, block in enumerate(getattr(model, "blocks", [])):
            n_heads = block.attention.nhead
            out += [cls(k, h) for h in (*HEAD_AGGREGATES, *(f"head{i}" for i in range(n_heads)))]
        return out

    def check(self, model: torch.nn.Module, append_cls: bool) -> None:
        if not getattr(model, "uses_z", False):
            raise BioformerError(f"readout {self.name!r} reads BioFormer's pair representation z, which this model has not; use 'attention' for scGPT")
        n = len(model.blocks)
        if not -n <= self.block < n:
            raise BioformerError(f"readout {self.name!r}: the model has blocks 0..{n - 1}")
        if self.heads.startswith("head") and int(self.heads[4:]) >= model.blocks[self.block].attention.nhead:
            raise BioformerError(f"readout {self.name!r}: the model has heads 0..{model.blocks[self.block].attention.nhead - 1}")

    def scores(self, model: torch.nn.Module, inputs: Inputs, cache: dict[Any, torch.Tensor]) -> torch.Tensor:
        k = self.block % len(model.blocks)
        if ("pair_bias", k) not in cache:
            cache["pair_bias", k] = model.pair_bias_logits(*inputs, block=k)  # [B, H, r, r]
        return reduce_heads(cache["pair_bias", k], self.heads)


register_family(PairBias)


@register
class LastBlockPairBias(PairBias):
    """BioFormer's default: the last block's pair bias, signed mean over heads [B, r, r]."""

    candidate = False  # the same numbers as "block<last> mean"

    def __init__(self) -> None:
        super().__init__(-1, "mean", "pair_bias")


@register
class Attention(PairReadout):
    """scGPT: attention probabilities averaged over heads and layers [B, r, r]."""

    name = "attention"

    def check(self, model: torch.nn.Module, append_cls: bool) -> None:
        if getattr(model, "uses_z", False) or not hasattr(model, "pair_scores"):
            raise BioformerError("readout 'attention' is scGPT's; a BioFormer is read through z (pair_bias, block<k> ...)")

    def scores(self, model: torch.nn.Module, inputs: Inputs, cache: dict[Any, torch.Tensor]) -> torch.Tensor:
        return model.pair_scores(*inputs).float()


def candidates(model: torch.nn.Module) -> list[PairReadout]:
    """Every registered grn readout that applies to `model` (families expanded; aliases of
    another readout left out): what the positive control scores side by side."""
    found = [r for f in families() if f.task == "grn" for r in f.expand(model)]
    found += [r for r in _REGISTRY.values() if r.task == "grn"]
    return [r for r in found if r.candidate and applies(r, model, True)]


def candidate_readouts(
    model: torch.nn.Module,
    gene_ids: torch.Tensor,  # [B, r]
    values: torch.Tensor,  # [B, r]
    padding_mask: torch.Tensor,  # [B, r] True = pad
    prior: torch.Tensor | None = None,  # [B, r, r] edge codes
    readouts: list[PairReadout] | None = None,
) -> dict[str, torch.Tensor]:  # name -> [B, r, r]
    """Per-cell scores of every candidate readout (`candidates`, or `readouts`) of one batch,
    sharing one model pass per block."""
    inputs, cache = (gene_ids, values, padding_mask, prior), {}
    return {r.name: r.scores(model, inputs, cache) for r in (readouts if readouts is not None else candidates(model))}
