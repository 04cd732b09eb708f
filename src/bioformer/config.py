"""Typed configuration: defaults live here, YAML round-trips, the CLI overrides fields by name."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioformer.checks import (
    check_device,
    check_types,
    need,
    unknown_keys,
)
from bioformer.errors import BioformerError

PRIOR_OFF = ("", "none")


def prior_enabled(prior: str | None) -> bool:
    """The one test of "a prior is in use": any value but None, "" or "none"."""
    return prior is not None and prior.lower() not in PRIOR_OFF


HVG_FLAVORS = ("seurat_v3", "cell_ranger", "seurat")
AMP_MODES = ("auto", "bf16", "fp16", "off")


PRIOR_DIRECTIONS = ("both", "outgoing")  # how z codes a gene pair (bioformer.data.prior.pair_codes)
MASK_STRATEGIES = ("random", "prior-targets")  # bioformer.data.tokenize.CellDataset


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
    # share of each sequence's gene positions given to genes the cell does not express, drawn per
    # cell (bioformer.data.zero_genes); sequences then hold min(genes, max_len - cls) genes.
    # 0: expressed genes only, so a model never sees a zero and predicts "the value if detected"
    zero_gene_frac: float = 0.0
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

    @property
    def has_zero_genes(self) -> bool:
        """Whether sequences hold unexpressed genes (zeros to predict), by either option."""
        return self.include_zero_genes or self.zero_gene_frac > 0

    def validate(self) -> None:
        """Raise BioformerError on a value that cannot work (types first, then ranges)."""
        check_types("data", self)
        need(bool(self.data), "data", "a built-in data set name or an .h5ad path", self.data)
        need(self.max_cells is None or self.max_cells >= 1, "max_cells", ">= 1", self.max_cells)
        need(self.min_counts >= 0, "min_counts", ">= 0", self.min_counts)
        need(self.n_hvg >= 1, "n_hvg", ">= 1", self.n_hvg)
        need(self.hvg_flavor is None or self.hvg_flavor in HVG_FLAVORS, "hvg_flavor", " or ".join(HVG_FLAVORS), self.hvg_flavor)
        need(self.genes in ("hvg", "hvg+prior"), "genes", "hvg or hvg+prior", self.genes)
        need(0.0 <= self.min_cells_frac <= 1.0, "min_cells_frac", "in [0, 1]", self.min_cells_frac)
        need(self.max_prior_genes >= 0, "max_prior_genes", ">= 0", self.max_prior_genes)
        need(self.backed_hvg_cells >= 1, "backed_hvg_cells", ">= 1", self.backed_hvg_cells)
        need(self.n_bins >= 3, "n_bins", ">= 3 (bin 0 is zero; two or more bins for non-zero values)", self.n_bins)
        need(self.max_len >= 2, "max_len", ">= 2 (room for <cls> and one gene)", self.max_len)
        need(0.0 <= self.zero_gene_frac < 1.0, "zero_gene_frac", "in [0, 1)", self.zero_gene_frac)
        if self.zero_gene_frac > 0 and self.include_zero_genes:
            raise BioformerError("--zero-gene-frac samples unexpressed genes per cell; --include-zero-genes already holds all of them: use one")
        need(0.0 < self.mask_ratio < 1.0, "mask_ratio", "between 0 and 1 (exclusive)", self.mask_ratio)
        need(0.0 < self.valid_frac < 1.0, "valid_frac", "between 0 and 1 (exclusive)", self.valid_frac)
        need(0.0 < self.test_frac < 1.0, "test_frac", "between 0 and 1 (exclusive)", self.test_frac)
        if self.valid_frac + self.test_frac >= 1.0:
            raise BioformerError(
                f"--valid-frac {self.valid_frac} + --test-frac {self.test_frac} leaves no training cells; keep their sum below 1"
            )
        need(self.mask_strategy in MASK_STRATEGIES, "mask_strategy", " or ".join(MASK_STRATEGIES), self.mask_strategy)
        if (self.split_by is None) != (not self.test_groups):
            raise BioformerError("a transfer split needs both --split-by (an obs column) and --test-groups (its test values)")
        if self.genes == "hvg+prior" and not prior_enabled(self.gene_prior or self.prior):
            raise BioformerError("--genes hvg+prior needs a prior (not --prior none); pass --gene-prior collectri or use --genes hvg")


@dataclass(slots=True)  # slots: setting a field that does not exist here raises
class BioFormerConfig:
    """BioFormer's own section of the model config: the gene-pair path z (its width, the outer
    product mean that writes it, the pair bias that reads it), how z codes the prior, the pair
    engine and its memory switches. Other families ignore it."""

    pair_bias: bool = True
    opm: bool = True
    gating: bool = True
    d_z: int = 8
    d_opm: int = 8
    opm_chunk_size: int | None = None  # rows of z per OPM chunk (inference / very long r)
    checkpoint_blocks: bool = False
    pair_mode: str = "linear"  # linear (no LN on z before the bias; z never materialised) | full (LN on z)
    attention_chunk_size: int | None = None  # linear mode: query rows per attention chunk (memory O(r * chunk))
    prior_direction: str = "both"  # z codes both edge directions of a pair, or "outgoing" (i -> j only)

    def validate(self) -> None:
        """Raise BioformerError on a pair path that cannot be built (the pair mode is checked
        where its engine is chosen: `bioformer.models.pair_modes.pair_engine`)."""
        check_types("model.bioformer", self)
        for name in ("d_z", "d_opm"):
            need(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        need(self.opm_chunk_size is None or self.opm_chunk_size >= 1, "opm_chunk_size", ">= 1 or none", self.opm_chunk_size)
        need(self.attention_chunk_size is None or self.attention_chunk_size >= 1, "attention_chunk_size", ">= 1 or none", self.attention_chunk_size)
        need(self.prior_direction in PRIOR_DIRECTIONS, "prior_direction", " or ".join(PRIOR_DIRECTIONS), self.prior_direction)


# family name -> its own section of ModelConfig (an attribute of that name); families without
# own options (scgpt) have none
FAMILY_SECTIONS: dict[str, type] = {"bioformer": BioFormerConfig}


@dataclass(slots=True)  # slots: a family field set on the common part raises (use replace)
class ModelConfig:
    """Architecture: the one place for model defaults. `model` names a registered family
    (`bioformer.models.MODELS`). The fields here are common to every family; a family's own
    options live in its section (`bioformer`: `BioFormerConfig`), which only that family reads.

    Build one from field names with `ModelConfig.of(d_model=32, d_z=4)` and change fields with
    `cfg.replace(...)`: each name is routed to the common part or its family section."""

    model: str = "bioformer"
    d_model: int = 64
    nhead: int = 4
    nlayers: int = 2
    ff_factor: int = 4  # transition / feed-forward width = ff_factor * d_model (scGPT paper: 1)
    dropout: float = 0.1  # residual, feed-forward and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities; 0 keeps SDPA on its fused kernel
    # a head for P(value is 0); "pred" is then the expected value. None (default): on exactly when
    # the sequences hold unexpressed genes (data.zero_gene_frac > 0 or include_zero_genes), where
    # it helps (docs/use-model.md); decided by RunConfig.resolved when a run starts
    explicit_zero_prob: bool | None = None
    # weight of the cell-embedding objective (scGPT's MVC / GEPC): each masked value is also
    # predicted from the cell embedding (<cls>, else the mean over genes) and the gene's embedding
    # alone, so the embedding must carry the cell. 0 = off (the head is not built)
    mvc_weight: float = 0.0
    # weight of scGPT's elastic cell similarity (ECS) objective on the batch's cell embeddings:
    # mean over cell pairs of 1 - (cos - 0.6)^2, pushing similar cells together and the others
    # apart. 0 = off
    ecs_weight: float = 0.0
    # value encoder input = bin * value_scale (bins 1..50 -> 0.04..2; mask -1 and pad -2 unscaled).
    # At 1.0 (raw bins, runs before this field) Linear -> ReLU -> Linear -> LayerNorm maps every
    # bin above a few to nearly the same vector: the model could not see how high a visible
    # gene is (docs/planted-truth.md). Runs saved without the field load with 1.0.
    value_scale: float = 0.04
    bioformer: BioFormerConfig = field(default_factory=BioFormerConfig)

    @classmethod
    def of(cls, **values: Any) -> ModelConfig:
        """A ModelConfig from field names: common fields, family sections as mappings
        (`bioformer={"d_z": 4}`), or a family field given flat (`d_z=4`). Flat family fields are
        how configs were written before the sections existed: this is the one migration of them."""
        common = {f.name for f in dataclasses.fields(cls)} - set(FAMILY_SECTIONS)
        sections = {name: _section_values(name, values.get(name)) for name in FAMILY_SECTIONS}
        flat: dict[str, Any] = {}
        unknown = set()
        for key, value in values.items():
            if key in common:
                flat[key] = value
            elif (owner := _section_of(key)) is not None:
                if key in sections[owner]:
                    raise BioformerError(f"model.{key} is given twice: flat and in model.{owner}; keep the one in model.{owner}")
                sections[owner][key] = value
            elif key not in FAMILY_SECTIONS:
                unknown.add(key)
        if unknown:
            raise unknown_keys("ModelConfig", unknown, common | set(FAMILY_SECTIONS) | _family_fields())
        for name, kind in FAMILY_SECTIONS.items():
            known = {f.name for f in dataclasses.fields(kind)}
            if unknown := set(sections[name]) - known:
                raise unknown_keys(f"model.{name}", unknown, known)
            flat[name] = kind(**sections[name])
        return cls(**flat)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with fields changed by name (common or family fields, see `of`)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in [n for n in changes if _section_of(n) is not None]:
            section = _section_of(name)
            values[section] = dataclasses.replace(values[section], **{name: changes.pop(name)})
        return ModelConfig.of(**{**values, **changes})

    def get(self, name: str) -> Any:
        """The value of a common or family field by name."""
        section = _section_of(name)
        return getattr(getattr(self, section) if section else self, name)

    def validate(self) -> None:
        """Raise BioformerError on an architecture that cannot be built."""
        check_types("model", self)  # the family name is checked by the registry (models.model_class)
        for name in ("d_model", "nhead", "nlayers", "ff_factor"):
            need(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        if self.d_model % self.nhead:
            raise BioformerError(f"--d-model {self.d_model} is not divisible by --nhead {self.nhead}; pick d_model a multiple of nhead")
        need(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        need(0.0 <= self.attention_dropout < 1.0, "attention_dropout", "in [0, 1)", self.attention_dropout)
        for name in ("mvc_weight", "ecs_weight"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "a finite number >= 0", getattr(self, name))
        need(math.isfinite(self.value_scale) and self.value_scale > 0, "value_scale", "a finite number > 0", self.value_scale)
        for name, kind in FAMILY_SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, kind):
                raise BioformerError(f"config section model.{name} must be a mapping of options, got {section!r}")
            section.validate()


def _section_values(name: str, value: Any) -> dict[str, Any]:
    """A family section given as its dataclass, a mapping or nothing, as a new dict."""
    if value is None:
        return {}
    if isinstance(value, FAMILY_SECTIONS[name]):
        return dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise BioformerError(f"config section model.{name} must be a mapping of options, got {value!r}")
    return dict(value)


def _family_fields() -> set[str]:
    return {f.name for kind in FAMILY_SECTIONS.values() for f in dataclasses.fields(kind)}


def _section_of(name: str) -> str | None:
    """The family section that owns field `name`, or None (a common field or unknown)."""
    return next((s for s, kind in FAMILY_SECTIONS.items() if name in {f.name for f in dataclasses.fields(kind)}), None)


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
        check_types("train", self)
        need(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        need(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0", self.weight_decay)
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        need(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a finite number >= 0 (0 = no clipping)", self.grad_clip)
        need(self.plateau_patience >= 0, "plateau_patience", ">= 0", self.plateau_patience)
        need(0.0 < self.plateau_factor < 1.0, "plateau_factor", "between 0 and 1 (exclusive)", self.plateau_factor)
        need(self.amp in AMP_MODES, "amp", " | ".join(AMP_MODES), self.amp)
        need(self.num_threads is None or self.num_threads >= 1, "num_threads", ">= 1", self.num_threads)
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or none", self.max_steps)
        need(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        if check_hardware:
            check_device(self.device)


# Fields a run saved before they existed must read as "off", whatever today's default is.
OFF_WHEN_UNSAVED = {"data": {"zero_gene_frac": 0.0}, "model": {"mvc_weight": 0.0, "ecs_weight": 0.0}}


def with_unsaved_fields_off(cfg: RunConfig, saved: dict[str, Any]) -> RunConfig:
    """`cfg` (loaded from a run's config.yaml, `saved` its raw mapping) with every field of
    OFF_WHEN_UNSAVED that the file lacks set to its "off" value, so an old run is rebuilt as
    it was trained (no MVC head, expressed genes only)."""
    for section, fields in OFF_WHEN_UNSAVED.items():
        given = saved.get(section) or {}
        off = {k: v for k, v in fields.items() if k not in given}
        if off:
            part = getattr(cfg, section)
            setattr(cfg, section, part.replace(**off) if isinstance(part, ModelConfig) else dataclasses.replace(part, **off))
    return cfg


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
        check_types("run", self)
        self.data.validate()
        self.model.validate()
        self.train.validate(check_hardware=check_hardware)
        return self

    def resolved(self) -> RunConfig:
        """Self with the defaults that depend on other sections decided (before a run is built and
        saved): the zero head (`explicit_zero_prob` None) is on exactly when the sequences hold
        unexpressed genes. Returns self."""
        if self.model.explicit_zero_prob is None:
            self.model = self.model.replace(explicit_zero_prob=self.data.has_zero_genes)
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
            if kind is ModelConfig:
                return ModelConfig.of(**{str(k): v for k, v in values.items()})  # a YAML key may be a number
            known = {f.name for f in dataclasses.fields(kind)}
            if unknown := set(values) - known:
                raise unknown_keys(kind.__name__, unknown, known)
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

