"""Typed configuration: defaults live here, YAML round-trips, the CLI overrides fields by name."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioformer.errors import BioformerError

PRIOR_OFF = ("", "none")


def prior_enabled(prior: str | None) -> bool:
    """The one test of "a prior is in use": any value but None, "" or "none"."""
    return prior is not None and prior.lower() not in PRIOR_OFF


HVG_FLAVORS = ("seurat_v3", "cell_ranger", "seurat")
AMP_MODES = ("auto", "bf16", "fp16", "off")


PRIOR_DIRECTIONS = ("both", "outgoing")  # how z codes a gene pair (bioformer.data.prior.pair_codes)
MASK_STRATEGIES = ("random", "prior-targets")  # bioformer.data.tokenize.CellDataset


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _need(ok: bool, name: str, what: str, value: Any) -> None:
    """One BioformerError naming the option, the rule and the value given."""
    if not ok:
        raise BioformerError(f"{_flag(name)} must be {what}, got {value!r}")


def _check_types(section: str, obj: Any) -> None:
    """Each field holds its annotated type (YAML gives strings where numbers belong); ints are
    accepted for floats and numeric strings such as YAML's `1e-3` are converted."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        optional = isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union
        if optional:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if value is None and optional:
            continue
        ok = False
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            if isinstance(value, str):
                try:
                    value = float(value)
                    setattr(obj, f.name, value)
                except ValueError:
                    pass
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(obj, f.name, float(value))
        elif tp is str:
            ok = isinstance(value, str)
        else:  # nested sections are checked by their own validate()
            ok = True
        if not ok:
            raise BioformerError(
                f"{section}.{f.name} must be {'an int' if tp is int else 'a ' + tp.__name__}"
                f"{' or null' if optional else ''}, got {value!r} ({type(value).__name__}); fix it in the --config "
                f"file or pass {_flag(f.name)}"
            )


def check_device(device: str) -> None:
    """`device` is auto, cpu, cuda, cuda:N or mps, and exists on this machine."""
    import torch

    if device in ("auto", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()):
        raise BioformerError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise BioformerError("--device mps: no MPS device on this machine; use --device cpu or auto")
        return
    if not torch.cuda.is_available():
        raise BioformerError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu or auto")
    n = torch.cuda.device_count()
    if index and int(index) >= n:
        raise BioformerError(f"--device {device}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")


def check_inference_options(
    batch_size: int = 64, device: str | None = None, n_query: int | None = None, top_k: int | None = None,
    min_cells: int | None = None, folds: int | None = None, max_folds: int | None = None,
) -> None:
    """The options of embed / impute / grn / evaluate, shared by the CLI (before any data is read)
    and the `Run` API: BioformerError naming the first bad one."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    _need(whole(batch_size) and batch_size >= 1, "batch_size", "an int >= 1", batch_size)
    _need(n_query is None or (whole(n_query) and n_query >= 1), "n_query", "an int >= 1", n_query)
    _need(top_k is None or (whole(top_k) and top_k >= 1), "top_k", "an int >= 1", top_k)
    _need(min_cells is None or (whole(min_cells) and min_cells >= 1), "min_cells", "an int >= 1", min_cells)
    if folds is not None:
        bound = max_folds if max_folds is not None else folds
        _need(whole(folds) and 1 <= folds <= bound, "folds", f"an int in [1, {bound}] (one fold per position of the longest sequence at most)", folds)
    if device is not None:
        check_device(device)


@dataclass
class DataConfig:
    """Where the cells come from and how they become token sequences."""

    data: str = "pbmc3k"  # built-in dataset name or path to an .h5ad
    layer: str | None = None  # counts layer, e.g. "raw_count"; None = X
    gene_column: str | None = None  # var column with gene symbols; None = var_names
    max_cells: int | None = None  # subsample cells (seeded) for quick runs
    min_counts: int = 3  # filter genes with fewer total counts
    n_hvg: int = 512
    hvg_flavor: str | None = None  # None: seurat_v3 on counts, cell_ranger on logged input
    genes: str = "hvg+prior"  # "hvg" or "hvg+prior"
    min_cells_frac: float = 0.01  # hvg+prior: a prior gene must be detected in this share of cells
    max_prior_genes: int = 256  # hvg+prior: cap on added prior genes
    n_bins: int = 51
    include_zero_genes: bool = False
    max_len: int = 128  # sequence length cap (incl. <cls>); PBMC3k default genes: median cell ~90
    append_cls: bool = True
    mask_ratio: float = 0.15
    mask_strategy: str = "random"  # random | prior-targets (mask one TF's targets per cell, TF visible)
    test_folds: int | None = None  # test mask folds; None = round(1 / mask_ratio): every position scored once
    valid_frac: float = 0.1
    test_frac: float = 0.1
    split_by: str | None = None  # obs column for a transfer split: cells in test_groups are the test set
    test_groups: str | None = None  # comma-separated values of split_by, e.g. "stimulated" (train on the rest)
    prior: str = "collectri"  # collectri | dorothea | all | none | path to CSV/TSV/parquet
    gene_prior: str | None = None  # prior used by --genes hvg+prior; None = `prior`
    backed: bool | None = None  # read the .h5ad in backed mode; None: when it stores > 200M values
    backed_hvg_cells: int = 20000  # backed mode: gene selection on this many cells (seeded subsample)
    heldout_edge_frac: float = 0.2  # share of the prior's edges among the genes withheld from z (GRN truth)

    def validate(self) -> None:
        """Raise BioformerError on a value that cannot work (types first, then ranges)."""
        _check_types("data", self)
        _need(bool(self.data), "data", "a built-in data set name or an .h5ad path", self.data)
        _need(self.max_cells is None or self.max_cells >= 1, "max_cells", ">= 1", self.max_cells)
        _need(self.min_counts >= 0, "min_counts", ">= 0", self.min_counts)
        _need(self.n_hvg >= 1, "n_hvg", ">= 1", self.n_hvg)
        _need(self.hvg_flavor is None or self.hvg_flavor in HVG_FLAVORS, "hvg_flavor", " or ".join(HVG_FLAVORS), self.hvg_flavor)
        _need(self.genes in ("hvg", "hvg+prior"), "genes", "hvg or hvg+prior", self.genes)
        _need(0.0 <= self.min_cells_frac <= 1.0, "min_cells_frac", "in [0, 1]", self.min_cells_frac)
        _need(self.max_prior_genes >= 0, "max_prior_genes", ">= 0", self.max_prior_genes)
        _need(self.backed_hvg_cells >= 1, "backed_hvg_cells", ">= 1", self.backed_hvg_cells)
        _need(self.n_bins >= 3, "n_bins", ">= 3 (bin 0 is zero; two or more bins for non-zero values)", self.n_bins)
        _need(self.max_len >= 2, "max_len", ">= 2 (room for <cls> and one gene)", self.max_len)
        _need(0.0 < self.mask_ratio < 1.0, "mask_ratio", "between 0 and 1 (exclusive)", self.mask_ratio)
        _need(0.0 < self.valid_frac < 1.0, "valid_frac", "between 0 and 1 (exclusive)", self.valid_frac)
        _need(0.0 < self.test_frac < 1.0, "test_frac", "between 0 and 1 (exclusive)", self.test_frac)
        if self.valid_frac + self.test_frac >= 1.0:
            raise BioformerError(
                f"--valid-frac {self.valid_frac} + --test-frac {self.test_frac} leaves no training cells; keep their sum below 1"
            )
        _need(self.mask_strategy in MASK_STRATEGIES, "mask_strategy", " or ".join(MASK_STRATEGIES), self.mask_strategy)
        if (self.split_by is None) != (not self.test_groups):
            raise BioformerError("a transfer split needs both --split-by (an obs column) and --test-groups (its test values)")
        if self.genes == "hvg+prior" and not prior_enabled(self.gene_prior or self.prior):
            raise BioformerError("--genes hvg+prior needs a prior (not --prior none); pass --gene-prior collectri or use --genes hvg")


@dataclass
class ModelConfig:
    """Architecture: the one place for model defaults. `model` names a registered family
    (`bioformer.models.MODELS`); each family reads the fields it uses (scGPT ignores the pair path)."""

    model: str = "bioformer"
    d_model: int = 64
    nhead: int = 4
    nlayers: int = 2
    ff_factor: int = 4  # transition / feed-forward width = ff_factor * d_model (scGPT paper: 1)
    dropout: float = 0.1  # residual, feed-forward and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities; 0 keeps SDPA on its fused kernel
    explicit_zero_prob: bool = False
    # BioFormer pair path
    pair_bias: bool = True
    opm: bool = True
    gating: bool = True
    d_z: int = 8
    d_opm: int = 8
    opm_chunk_size: int | None = None  # rows of z per OPM chunk (inference / very long r)
    checkpoint_blocks: bool = False
    pair_mode: str = "full"  # full | linear (no LN on z before the bias; z never materialised)
    attention_chunk_size: int | None = None  # linear mode: query rows per attention chunk (memory O(r * chunk))
    prior_direction: str = "both"  # z codes both edge directions of a pair, or "outgoing" (i -> j only)
    # value encoder input = bin * value_scale (bins 1..50 -> 0.04..2; mask -1 and pad -2 unscaled).
    # At 1.0 (raw bins, runs before this field) Linear -> ReLU -> Linear -> LayerNorm maps every
    # bin above a few to nearly the same vector: the model could not see how high a visible
    # gene is (docs/planted-truth.md). Runs saved without the field load with 1.0.
    value_scale: float = 0.04

    def validate(self) -> None:
        """Raise BioformerError on an architecture that cannot be built."""
        _check_types("model", self)  # the family name is checked by the registry (models.model_class)
        for name in ("d_model", "nhead", "nlayers", "ff_factor", "d_z", "d_opm"):
            _need(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        if self.d_model % self.nhead:
            raise BioformerError(f"--d-model {self.d_model} is not divisible by --nhead {self.nhead}; pick d_model a multiple of nhead")
        _need(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        _need(0.0 <= self.attention_dropout < 1.0, "attention_dropout", "in [0, 1)", self.attention_dropout)
        _need(math.isfinite(self.value_scale) and self.value_scale > 0, "value_scale", "a finite number > 0", self.value_scale)
        _need(self.opm_chunk_size is None or self.opm_chunk_size >= 1, "opm_chunk_size", ">= 1 or none", self.opm_chunk_size)
        _need(self.attention_chunk_size is None or self.attention_chunk_size >= 1, "attention_chunk_size", ">= 1 or none", self.attention_chunk_size)
        _need(self.prior_direction in PRIOR_DIRECTIONS, "prior_direction", " or ".join(PRIOR_DIRECTIONS), self.prior_direction)


@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on supporting GPUs) | bf16 | fp16 | off
    num_threads: int | None = None
    progress: bool = True
    max_steps: int | None = None  # stop after this many optimiser steps (benchmarks, smoke runs)
    num_workers: int = 0  # DataLoader worker processes reading training cells (backed data: reading + binning)

    def validate(self, check_hardware: bool = True) -> None:
        """Raise BioformerError on a value that cannot work; `check_hardware` also checks that
        the device exists here (off when only reading a finished run's settings)."""
        _check_types("train", self)
        _need(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _need(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _need(math.isfinite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        _need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0", self.weight_decay)
        _need(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        _need(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a finite number >= 0 (0 = no clipping)", self.grad_clip)
        _need(self.plateau_patience >= 0, "plateau_patience", ">= 0", self.plateau_patience)
        _need(0.0 < self.plateau_factor < 1.0, "plateau_factor", "between 0 and 1 (exclusive)", self.plateau_factor)
        _need(self.amp in AMP_MODES, "amp", " | ".join(AMP_MODES), self.amp)
        _need(self.num_threads is None or self.num_threads >= 1, "num_threads", ">= 1", self.num_threads)
        _need(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or none", self.max_steps)
        _need(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        if check_hardware:
            check_device(self.device)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, check_hardware: bool = True) -> RunConfig:
        """Check every option (the one place the CLI, --config YAML and the Python API share);
        raises BioformerError naming the first bad option. Returns self."""
        for section in ("data", "model", "train"):
            part = getattr(self, section)
            if not dataclasses.is_dataclass(part):
                raise BioformerError(f"config section {section!r} must be a mapping of options, got {part!r}")
        _check_types("run", self)
        self.data.validate()
        self.model.validate()
        self.train.validate(check_hardware=check_hardware)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise BioformerError(f"a config must be a mapping with sections data, model, train; got {type(d).__name__}")
        unknown = set(d) - {"data", "model", "train", "name", "out"}
        if unknown:
            raise BioformerError(f"unknown config section(s) {sorted(unknown)}; known: data, model, train, name, out")

        def build(kind, values):
            if values is None:
                return kind()
            if not isinstance(values, dict):
                raise BioformerError(f"config section for {kind.__name__} must be a mapping of options, got {values!r}")
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - known
            if unknown:
                hints = [f"{u} -> {m[0]}?" for u in sorted(unknown) if (m := difflib.get_close_matches(str(u), known, n=1))]
                raise BioformerError(
                    f"unknown config key(s) for {kind.__name__}: {sorted(unknown)}"
                    + (f" (did you mean {', '.join(hints)})" if hints else "") + f"; known: {sorted(known)}"
                )
            return kind(**values)

        return cls(
            data=build(DataConfig, d.get("data")),
            model=build(ModelConfig, d.get("model")),
            train=build(TrainConfig, d.get("train")),
            name=d.get("name"),
            out=d.get("out"),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        p = Path(path).expanduser()
        if not p.exists():
            raise BioformerError(f"config file not found: {p}")
        if not p.is_file():  # a directory, FIFO or device: never opened (a FIFO would block)
            raise BioformerError(f"config file {p} is not a regular file; pass the path of a YAML file")
        try:
            d = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise BioformerError(f"config file {p} is not valid YAML{at}; fix its syntax") from None
        return cls.from_dict(d or {})

