"""`bioformer datasets`, `simulate` and `prior`: the data a run reads, before any model."""

from __future__ import annotations

import argparse
import json

from bioformer.cli.options import add_config_args, config_from_args
from bioformer.config import prior_enabled
from bioformer.errors import BioformerError


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


def register(sub) -> None:
    """Add the datasets, simulate and prior commands to the subparsers `sub`."""
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
