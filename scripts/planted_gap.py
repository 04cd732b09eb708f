"""Point 4 of issue #26 per seed: how much of the gap between the best gene-gene-free floor and
the oracle the prior arm closes, on the same data, split and masked positions.

For every seed of results/planted/alphaA/results.csv, the seed's data are prepared exactly as
the study's runs were (the prior arm's config.yaml) and `bioformer.experiments.headroom.headroom`
scores the floors (constant, per-gene, cell-aware, non-linear trees) and the oracles on the test
cells' masked positions, every position once (the runs' test folds: the same positions as
results.csv's test_mse). Then

    closed = (best floor - prior arm's test MSE) / (best floor - best oracle)

Writes alphaA/gap.csv and prints per seed and the mean with a t 95% interval over seeds.

    python scripts/planted_gap.py [RESULTS_DIR] [ALPHA ...]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PRIOR, ZERO = "planted-both-directions", "zero-z"


def gap_table(adir: Path) -> pd.DataFrame:
    from bioformer.config import RunConfig
    from bioformer.data.datasets import cache_dir
    from bioformer.data.pipeline import prepare_data
    from bioformer.data.simulate import cached_simulation
    from bioformer.experiments.headroom import headroom

    res = pd.read_csv(adir / "results.csv")
    mse = res.pivot_table(index="seed", columns="arm", values="test_mse")
    rows = []
    for seed in mse.index:
        cfg = RunConfig.load(adir / "runs" / PRIOR / f"seed{seed}" / "config.yaml")
        data = prepare_data(cfg.data, seed=int(seed), quiet=True)
        truth = pd.read_csv(cached_simulation(cfg.data.data, cache_dir()) / "truth_edges.csv")
        h = headroom(data, truth, data.adata.obs["state"].to_numpy(), seed=int(seed))
        floors = {k: h[k] for k in ("const", "gene_mean", "cell", "nonlinear")}
        best = min(floors, key=floors.get)
        oracle = min(h["oracle"], h["oracle_trees"])
        row = {"seed": int(seed), "best_floor": best, "best_floor_mse": floors[best], "oracle_mse": oracle,
               "cell_floor_run": float(res[(res.arm == PRIOR) & (res.seed == seed)]["floor_cell_mse"].iloc[0])}
        for arm in mse.columns:
            row[f"{arm}_mse"] = float(mse.loc[seed, arm])
            row[f"{arm}_closed"] = (floors[best] - mse.loc[seed, arm]) / (floors[best] - oracle)
        rows.append(row)
        print(f"  seed {seed}: best floor {best} {floors[best]:.2f}, oracle {oracle:.2f}, prior {row[f'{PRIOR}_mse']:.2f}"
              f" -> closed {row[f'{PRIOR}_closed']:.3f}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else math.nan
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def main() -> None:
    from bioformer.experiments.headroom import alpha_dirs

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/planted")
    for a, adir in alpha_dirs(root, sys.argv[2:]):
        df = gap_table(adir)
        df.to_csv(adir / "gap.csv", index=False)
        arms = [c[:-7] for c in df.columns if c.endswith("_closed")]
        print(f"\n## alpha {a}: share of the gap (best gene-gene-free floor -> oracle) closed, per seed\n")
        print("| seed | best floor | floor MSE | oracle MSE | " + " | ".join(arms) + " |")
        print("|---|---|---|---|" + "---|" * len(arms))
        for _, r in df.iterrows():
            print(f"| {r['seed']} | {r['best_floor']} | {r['best_floor_mse']:.2f} | {r['oracle_mse']:.2f} | "
                  + " | ".join(f"{r[f'{x}_closed']:.2f}" for x in arms) + " |")
        cells = [mean_ci(df[f"{x}_closed"]) for x in arms]
        print("| mean [95% CI] | | " + f"{df['best_floor_mse'].mean():.2f} | {df['oracle_mse'].mean():.2f} | "
              + " | ".join(f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in cells) + " |")


if __name__ == "__main__":
    main()
