"""How much of the real prior each control keeps, on a study profile's genes (Markdown table).

For seeds 0..S-1: the prior's edges among the genes the profile selects, and the controls the
prior study trains on (`NAME-rewired`, `NAME-random`) next to the old `NAME-shuffled`: edges,
share of them that are real edges (overlap), the density of the gene set (the overlap a uniform
random graph is expected to have), out-degrees kept, and the share of edges whose target had to
move to keep no real edge (in-degree change).

    python scripts/prior_controls.py --profile standard --seeds 3
"""

from __future__ import annotations

import argparse

import numpy as np

from bioformer.config import DataConfig
from bioformer.data.pipeline import edges_for_genes, prepare_data
from bioformer.data.prior import edge_overlap, load_edges
from bioformer.experiments.profiles import PROFILES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="standard", choices=list(PROFILES))
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    cfg = DataConfig(**PROFILES[args.profile].data)
    print("| seed | control | edges | overlap with real | density (random expectation) | out-degrees kept | edges moved off their in-degree |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        data = prepare_data(cfg, seed=seed, quiet=True)
        genes = list(data.adata.var_names)
        base = load_edges(cfg.prior, seed=seed)
        real = base[base.source.isin(genes) & base.target.isin(genes)]
        density = len(real) / (len(genes) * (len(genes) - 1))
        for suffix in ("-rewired", "-random", "-shuffled"):
            ctrl = edges_for_genes(cfg.prior + suffix, genes, seed)
            out_kept = ctrl.source.value_counts().sort_index().equals(real.source.value_counts().sort_index())
            moved = np.abs(real.target.value_counts().reindex(genes, fill_value=0) - ctrl.target.value_counts().reindex(genes, fill_value=0)).sum() / 2
            print(f"| {seed} | {cfg.prior}{suffix} | {len(ctrl):,} / {len(real):,} | {edge_overlap(ctrl, real):.2%} | {density:.2%} | "
                  f"{'yes' if out_kept else 'no'} | {moved / len(real):.1%} |")


if __name__ == "__main__":
    main()
