"""Typed configuration: defaults live here, YAML round-trips, the CLI overrides fields by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioformer.errors import BioformerError

PRIOR_OFF = ("", "none")


def prior_enabled(prior: str | None) -> bool:
    """The one test of "a prior is in use": any value but None, "" or "none"."""
    return prior is not None and prior.lower() not in PRIOR_OFF


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
    valid_frac: float = 0.1
    test_frac: float = 0.1
    prior: str = "collectri"  # collectri | dorothea | all | none | path to CSV/TSV/parquet
    gene_prior: str | None = None  # prior used by --genes hvg+prior; None = `prior`
    backed: bool | None = None  # read the .h5ad in backed mode; None: when it stores > 200M values
    backed_hvg_cells: int = 20000  # backed mode: gene selection on this many cells (seeded subsample)


@dataclass
class ModelConfig:
    """Architecture: the one place for model defaults. `model` names a registered family
    (`bioformer.models.MODELS`); each family reads the fields it uses (scGPT ignores the pair path)."""

    model: str = "bioformer"
    d_model: int = 64
    nhead: int = 4
    nlayers: int = 2
    ff_factor: int = 4  # transition / feed-forward width = ff_factor * d_model (scGPT paper: 1)
    dropout: float = 0.1
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


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        def build(kind, values):
            if values is None:
                return kind()
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - known
            if unknown:
                raise BioformerError(
                    f"unknown config key(s) for {kind.__name__}: {sorted(unknown)}; known: {sorted(known)}"
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
        p = Path(path)
        if not p.exists():
            raise BioformerError(f"config file not found: {p}")
        return cls.from_dict(yaml.safe_load(p.read_text()) or {})
