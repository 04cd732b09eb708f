"""`bioformer train`, `evaluate` and `estimate`: train a run, re-score it, predict its memory."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from bioformer.cli.options import add_config_args, config_from_args
from bioformer.config import prior_enabled
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")


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
    from bioformer.checks import check_inference_options
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
    import torch

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
    from bioformer.training.runtime import autocast_dtype

    cfg = config_from_args(args).validate(check_hardware=False)  # the same checks as train (the device may be elsewhere)
    if args.n_genes is not None and args.n_genes < 1:
        raise BioformerError(f"--n-genes must be >= 1, got {args.n_genes}")
    budget = parse_bytes(args.budget)
    r = args.n_genes if args.n_genes is not None else sequence_length(cfg.data)
    B = cfg.train.batch_size
    device = "cuda" if cfg.train.device == "cuda" else "cpu"
    amp = autocast_dtype(cfg.train.amp, torch.device(device), cfg.model) is not None  # as train decides it
    use_prior = prior_enabled(cfg.data.prior)
    vocab = r + N_SPECIAL_TOKENS if args.n_genes is not None else cfg.data.n_hvg + cfg.data.max_prior_genes + N_SPECIAL_TOKENS
    kw = dict(device=device, amp=amp, vocab_size=vocab, use_prior=use_prior)
    kw["n_params"] = count_config_parameters(cfg.model, vocab, use_prior=True)
    train = estimate_memory(cfg.model, r, B, training=True, **kw)
    infer = estimate_memory(cfg.model, r, B, training=False, **kw)
    print(f"{cfg.model.model}: {kw['n_params']:,} parameters ({model_class(cfg.model.model).describe(cfg.model)})")
    src = "--n-genes" if args.n_genes is not None else "upper bound from the data config"
    print(f"r = {r} genes per cell ({src}), batch size {B}, {device}{', bf16 activations' if amp else ', fp32'}")
    print(format_estimate(train, infer))
    r_train = max_genes_for_budget(cfg.model, B, budget, True, **kw)
    r_infer = max_genes_for_budget(cfg.model, B, budget, False, **kw)
    print(f"largest r within {format_bytes(budget)} at batch size {B}: training {r_train}, inference {r_infer}")
    if train.total > budget:
        hint = "--checkpoint-blocks" if cfg.model.bioformer.pair_mode == "linear" else "--checkpoint-blocks or --pair-mode linear"
        print(f"does not fit for training: lower --batch-size, d_z or d_opm, or use {hint}")
    else:
        print(f"fits for training: predicted peak {format_bytes(train.total)} <= budget {format_bytes(budget)}")
    return 0


def register(sub) -> None:
    """Add the train, evaluate and estimate commands to the subparsers `sub`."""
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
