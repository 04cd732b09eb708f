"""Config flags: one flag per config field, grouped by section, and the RunConfig they give."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from bioformer.config import FAMILY_SECTIONS, DataConfig, ModelConfig, RunConfig, TrainConfig
from bioformer.models import MODELS

HELP = {
    "data": "built-in data set (pbmc3k, kang2018) or path to an .h5ad",
    "layer": "layer holding the counts, e.g. raw_count ('raw' = adata.raw; default X)",
    "gene_column": "var column with gene symbols (default var_names)",
    "max_cells": "subsample this many cells (seeded) for quick runs",
    "n_hvg": "number of highly variable genes",
    "genes": "gene selection: hvg, or hvg+prior (HVGs plus detected prior TFs/targets)",
    "include_zero_genes": "every cell's sequence holds all selected genes, zeros included",
    "zero_gene_frac": "share of each sequence given to genes the cell does not express (sampled per cell; 0 = expressed genes only)",
    "explicit_zero_prob": "zero head: P(value is 0); the prediction becomes the expected value, impute writes P(detected)",
    "mvc_weight": "weight of the cell-embedding objective (scGPT's MVC/GEPC: masked values from the cell embedding; 0 = off)",
    "ecs_weight": "weight of the elastic cell similarity objective on the batch's cell embeddings (scGPT's ECS; 0 = off)",
    "max_len": "max sequence length incl. <cls> (longer cells are subsampled)",
    "prior": "TF prior: collectri | dorothea | all | none | PATH (source,target[,sign]); controls: NAME-rewired (degree-preserving, avoids NAME's edges), NAME-random (same density and sign mix), NAME-shuffled (old target permutation)",
    "prior_direction": "z codes both directions of each gene pair (both) or only i -> j (outgoing, the first version)",
    "mask_strategy": "random, or prior-targets: per cell mask all targets of one TF in the cell, TF visible (cells without one: random)",
    "split_by": "obs column for a transfer split (e.g. condition on kang2018)",
    "test_groups": "comma-separated values of --split-by that form the test set (e.g. stimulated); the rest is train/valid",
    "model": "model family: " + ", ".join(MODELS),
    "ff_factor": "transition / feed-forward width = ff_factor * d_model (scGPT paper: 1)",
    "dropout": "dropout on residual branches, feed-forward and value embeddings",
    "attention_dropout": "dropout on attention probabilities (0 keeps attention on the fused kernel; see docs/attention-dropout.md)",
    "d_z": "pair channels c_z",
    "d_opm": "outer-product hidden channels c_opm",
    "opm_chunk_size": "compute z updates in chunks of this many rows (saves memory)",
    "checkpoint_blocks": "recompute each block in backward (activation checkpointing)",
    "pair_mode": "BioFormer pair path: linear (no LN on z; z never materialised, memory linear in r) | full (LN on z; what the studies use)",
    "attention_chunk_size": "linear pair mode: attention over chunks of this many query rows (memory O(r * chunk))",
    "amp": "mixed precision: auto (bf16 on capable GPUs) | bf16 | fp16 | off",
    "backed": "read the .h5ad without loading it (cells binned when read); default: automatic above 200M stored values",
    "backed_hvg_cells": "backed mode: select genes on this many cells (seeded subsample)",
    "max_steps": "stop after this many optimiser steps (benchmarks, smoke runs)",
    "num_workers": "DataLoader worker processes for training batches (helps --backed: cells are read and binned in them)",
}


def _base_type(tp):
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


class _ExplicitNone:
    """`--max-cells none` on the command line: set the option to None (not "flag not given")."""

    def __repr__(self) -> str:
        return "None"


EXPLICIT_NONE = _ExplicitNone()


def _optional(kind):
    def parse(s: str):
        return EXPLICIT_NONE if s.lower() in ("none", "null") else kind(s)

    return parse


def _field_groups(sections: tuple[str, ...]) -> list[tuple[str, str, type]]:
    """(group title, config section, dataclass) per flag group: the model section's common
    fields, then one group per family section (`model.bioformer`: BioFormer's options)."""
    classes = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    groups = []
    for section in sections:
        groups.append((f"{section} options", section, classes[section]))
        if section == "model":
            groups += [(f"{name} options (model family {name})", "model", kind) for name, kind in FAMILY_SECTIONS.items()]
    return groups


def add_config_args(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] = ("data", "model", "train"),
    config_file: bool = True,
    exclude: set[str] = frozenset(),
    defaults_from: str | None = None,
) -> None:
    """One flag per config field (`n_hvg` -> `--n-hvg`), grouped by section; defaults come from
    the dataclasses (or --config), so the CLI never restates them. `exclude`: field names left
    out; `defaults_from`: say in the help where defaults come from instead (e.g. a profile)."""
    if config_file:
        parser.add_argument("--config", help="YAML config (as written to a run's config.yaml); flags override it")
    for title, section, kind in _field_groups(sections):
        group = parser.add_argument_group(title)
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            if f.name in exclude or f.name in FAMILY_SECTIONS:
                continue
            tp, optional = _base_type(hints[f.name])
            flag = "--" + f.name.replace("_", "-")
            dest = f"{section}.{f.name}"  # family fields too: ModelConfig.replace routes them
            help_ = HELP.get(f.name, "") + f" (default: {defaults_from or f.default})"
            if tp is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
            else:
                conv = _optional(tp) if optional else tp
                group.add_argument(flag, dest=dest, type=conv, default=None, metavar=f.name.upper(), help=help_)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """--config (or the defaults) with every config flag given on the command line applied."""
    cfg = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig()
    overrides = overrides_from_args(args)
    cfg.data = dataclasses.replace(cfg.data, **overrides["data"])
    cfg.model = cfg.model.replace(**overrides["model"])
    cfg.train = dataclasses.replace(cfg.train, **overrides["train"])
    for attr in ("name", "out"):
        if getattr(args, attr, None) is not None:
            setattr(cfg, attr, getattr(args, attr))
    return cfg


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config flags given on the command line, by section: {"data": {...}, "model": ..., "train": ...}."""
    out: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            out[section][name] = None if value is EXPLICIT_NONE else value
    return out
