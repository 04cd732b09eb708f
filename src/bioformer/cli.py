"""Command line: parse, call the library, print. `bioformer --help` lists the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing

from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")

HELP = {
    "data": "built-in data set (pbmc3k, kang2018) or path to an .h5ad",
    "layer": "layer holding the counts, e.g. raw_count ('raw' = adata.raw; default X)",
    "gene_column": "var column with gene symbols (default var_names)",
    "max_cells": "subsample this many cells (seeded) for quick runs",
    "n_hvg": "number of highly variable genes",
    "genes": "gene selection: hvg, or hvg+prior (HVGs plus detected prior TFs/targets)",
    "include_zero_genes": "every cell's sequence holds all selected genes, zeros included",
    "max_len": "max sequence length incl. <cls> (longer cells are subsampled)",
    "prior": "TF prior: collectri | dorothea | all | none | PATH (source,target[,sign]); NAME-shuffled = degree-preserving control",
    "model": "bioformer or scgpt",
    "ff_factor": "transition / feed-forward width = ff_factor * d_model (scGPT paper: 1)",
    "d_z": "pair channels c_z",
    "d_opm": "outer-product hidden channels c_opm",
    "opm_chunk_size": "compute z updates in chunks of this many rows (saves memory)",
    "checkpoint_blocks": "recompute each block in backward (activation checkpointing)",
    "amp": "mixed precision: auto (bf16 on capable GPUs) | bf16 | fp16 | off",
}


def _base_type(tp):
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _optional(kind):
    def parse(s: str):
        return None if s.lower() in ("none", "null") else kind(s)

    return parse


def add_config_args(parser: argparse.ArgumentParser, sections: tuple[str, ...] = ("data", "model", "train")) -> None:
    """One flag per config field (`n_hvg` -> `--n-hvg`), grouped by section; defaults come from
    the dataclasses (or --config), so the CLI never restates them."""
    parser.add_argument("--config", help="YAML config (as written to a run's config.yaml); flags override it")
    classes = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    hints_of = {k: typing.get_type_hints(v) for k, v in classes.items()}
    for section in sections:
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(classes[section]):
            tp, optional = _base_type(hints_of[section][f.name])
            flag = "--" + f.name.replace("_", "-")
            dest = f"{section}.{f.name}"
            default = f.default
            help_ = HELP.get(f.name, "") + f" (default: {default})"
            if tp is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
            else:
                conv = _optional(tp) if optional else tp
                group.add_argument(flag, dest=dest, type=conv, default=None, metavar=f.name.upper(), help=help_)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig()
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            setattr(getattr(cfg, section), name, value)
    for attr in ("name", "out"):
        if getattr(args, attr, None) is not None:
            setattr(cfg, attr, getattr(args, attr))
    return cfg


def cmd_datasets(args: argparse.Namespace) -> int:
    from bioformer.data.datasets import fetch, list_datasets

    if args.action == "fetch":
        if not args.name:
            raise BioformerError("usage: bioformer datasets fetch NAME (see bioformer datasets list)")
        print(fetch(args.name))
        return 0
    rows = list_datasets()
    print(f"{'name':<10} {'cached':<7} description")
    for r in rows:
        print(f"{r['name']:<10} {r['cached']:<7} {r['description']}")
        print(f"{'':<18} source: {r['source']}")
    return 0


def cmd_prior(args: argparse.Namespace) -> int:
    from bioformer.data.pipeline import coverage_warning, prepare_data

    cfg = config_from_args(args)
    if cfg.data.prior in (None, "", "none"):
        raise BioformerError("bioformer prior needs a prior: --prior collectri|dorothea|all|PATH")
    data = prepare_data(cfg.data, seed=cfg.train.seed, need_prior=True, require_prior_edges=False)
    c = data.coverage
    mode = "all selected genes (include-zero)" if cfg.data.include_zero_genes else "expressed genes only"
    print(f"data {cfg.data.data}: {data.adata.n_obs} cells; genes: {cfg.data.genes}, n_hvg {cfg.data.n_hvg}; sequences: {mode}, max_len {cfg.data.max_len}")
    print(f"prior {cfg.data.prior}:")
    print(f"  genes selected            {c['genes']}")
    print(f"  TFs among them            {c['tfs']}")
    print(f"  edges among them          {c['edges']}  (activating {c['edges_activating']}, repressing {c['edges_repressing']}, unsigned {c['edges_unsigned']})")
    print(f"  edges per cell sequence   median {c['edges_per_cell_median']:.1f}, mean {c['edges_per_cell_mean']:.1f}  ({c['cells']} training cells)")
    print(f"  cells with no edge        {100 * c['cells_without_edges_frac']:.1f}%")
    if (w := coverage_warning(c)) is not None:
        print("warning: " + w)
    if args.json:
        print(json.dumps(c))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bioformer.training.run import format_test_table, run_training

    cfg = config_from_args(args)
    out, summary = run_training(cfg)
    metrics = {k[len("test_"):]: v for k, v in summary.items() if k.startswith("test_")}
    metrics.update({k: v for k, v in summary.items() if k.startswith("floor_")})
    print(f"\n{summary['name']}: {summary['n_params']:,} parameters, best epoch {summary['best_epoch']}/{summary['epochs']}, {summary['seconds_per_epoch']:.1f} s/epoch")
    print(format_test_table(metrics))
    print(f"run directory: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bioformer.training.run import evaluate_run, format_test_table

    res = evaluate_run(args.run_dir, args.data, args.layer, args.gene_column)
    metrics = {k[len("test_"):]: v for k, v in res.items() if k.startswith("test_")}
    metrics.update({k: v for k, v in res.items() if k.startswith("floor_")})
    where = "test split" if args.data is None else f"all {res['n_cells']} cells of {res['data']}"
    print(f"{args.run_dir} on {where}")
    if args.data is not None:
        print(f"unknown genes: {res['unknown_genes']} of {res['n_model_genes']} (floors fitted on this data set)")
    print(format_test_table(metrics))
    if args.json:
        print(json.dumps(res, default=float))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioformer", description="Masked single-cell expression transformers: BioFormer (gene-pair path + TF prior) vs scGPT.")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list or fetch the built-in data sets")
    d.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    d.add_argument("name", nargs="?")
    d.set_defaults(func=cmd_datasets)

    pr = sub.add_parser("prior", help="how much of the TF prior reaches the selected genes and each cell")
    add_config_args(pr, ("data",))
    pr.add_argument("--seed", dest="train.seed", type=int, default=None)
    pr.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    pr.set_defaults(func=cmd_prior)

    t = sub.add_parser("train", help="train a model and write a run directory")
    add_config_args(t)
    t.add_argument("--name", help="run name (default: the model name)")
    t.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="re-score a run's checkpoint on its test split or on other data")
    e.add_argument("run_dir")
    e.add_argument("--data", help="another data set (built-in name or .h5ad); default: the run's own test split")
    e.add_argument("--layer")
    e.add_argument("--gene-column")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    from bioformer.estimate import add_cli as add_estimate
    from bioformer.experiments.suite import add_cli as add_experiment

    add_estimate(sub)
    add_experiment(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except BioformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
