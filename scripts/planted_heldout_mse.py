"""Point 3a of issue #26 on the held-out edges: test MSE on masked targets of held-out true edges.

results.csv's `test_mse_role_target` splits masked positions by the *given* prior (a masked gene
with a given regulator in its sequence). Here every finished run under results/planted/alphaA/
is re-scored on its own test split (same cells, folds and positions as summary.json) with the
role split by two other edge sets:

- heldout: the held-out true edges (a masked gene with a held-out regulator in its sequence);
- heldout-only: held-out edges whose target has no given regulator at all (only learning the
  held-out edge itself, which no z was told about, can help there).

Writes alphaA/heldout_mse.csv (arm, seed, set, mse, positions) and prints the paired
differences prior - zero z and prior - rewired (mean, t 95% CI over seeds).

    python scripts/planted_heldout_mse.py [RESULTS_DIR] [ALPHA ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PRIOR, OTHERS = "planted-both-directions", ("zero-z", "planted-rewired", "scgpt")


def edge_sets(run_dir: Path) -> dict[str, pd.DataFrame]:
    """{"heldout": held-out true edges, "heldout-only": those whose target has no given regulator}."""
    from bioformer.config import RunConfig
    from bioformer.data.pipeline import drop_edges
    from bioformer.data.prior import load_edges

    cfg = RunConfig.load(run_dir / "config.yaml")
    held = pd.read_csv(run_dir / "heldout_edges.csv")
    given = drop_edges(load_edges(cfg.data.gene_prior or cfg.data.prior, seed=cfg.train.seed), held)
    held = held.assign(sign=held["sign"] if "sign" in held else 1)
    return {"heldout": held, "heldout-only": held[~held["target"].isin(set(given["target"]))]}


def rescore(run_dir: Path) -> list[dict]:
    """The run's test MSE on masked targets of each edge set (its role split swapped)."""
    import bioformer.training.evaluate as evaluate_mod
    from bioformer.data.prior import PriorMatrix

    rows = []
    original = evaluate_mod.role_prior  # the role split of `evaluate_run` (swapped, then restored)
    try:
        for name, edges in edge_sets(run_dir).items():
            evaluate_mod.role_prior = lambda cfg, t2i, seed=0, e=edges: PriorMatrix.from_edges(e, t2i)
            result, _ = evaluate_mod.evaluate_run(run_dir, quiet=True)
            rows.append({"set": name, "mse": result.model["mse_role_target"], "positions": result.counts.get("role_target", 0)})
    finally:
        evaluate_mod.role_prior = original
    return rows


def main() -> None:
    from bioformer.experiments.headroom import alpha_dirs
    from bioformer.experiments.stats import paired_test

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/planted")
    for a, adir in alpha_dirs(root, sys.argv[2:]):
        rows = []
        for run_dir in sorted(adir.glob("runs/*/seed*")):
            if (run_dir / "summary.json").exists():
                rows += [{"arm": run_dir.parent.name, "seed": int(run_dir.name[4:]), **r} for r in rescore(run_dir)]
                print(f"  {run_dir}", file=sys.stderr, flush=True)
        df = pd.DataFrame(rows)
        df.to_csv(adir / "heldout_mse.csv", index=False)
        print(f"\n## alpha {a}: masked targets of held-out edges (test MSE, bins²)\n")
        print("| set | pair | n | positions (seed 0) | mean_diff | ci_low | ci_high | t_p | prior_mse |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, g in df.groupby("set", sort=False):
            w = g.pivot_table(index="seed", columns="arm", values="mse")
            pos = int(g[(g.arm == PRIOR)].sort_values("seed")["positions"].iloc[0])
            for other in OTHERS:
                if other in w and PRIOR in w:
                    p = w[[PRIOR, other]].dropna()
                    t = paired_test(p[PRIOR], p[other])
                    print(f"| {name} | prior - {other} | {t['n']} | {pos} | {t['mean_diff']:.2f} | {t['ci_low']:.2f} | {t['ci_high']:.2f} | {t['t_p']:.3g} | {p[PRIOR].mean():.1f} |")


if __name__ == "__main__":
    main()
