"""Every committed study's paired MSE comparisons with their minimum detectable effect (80% power)
and a verdict worded from power, recomputed from results/*/results.csv (paired by seed) and the
Holm p-values of results/*/pairs.csv.

    python scripts/verdicts.py [results] > docs/verdicts_table.md

Claimed effects (an earlier study's estimate that a later one re-checks) are listed in CLAIMS
with their source: a re-check with < 80% power to see its claim reads "not replicated (power N%)".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

# (study, A, B) -> (claimed mean difference in test MSE, where it was claimed)
CLAIMS = {
    ("depth-recheck", "bioformer-N8", "bioformer-no-pair-path-N8"): (-1.81, "results/depth (20 epochs)"),
    ("depth-recheck", "bioformer-N8", "bioformer-no-pair-path-N8-matched"): (-1.81, "results/depth (20 epochs)"),
    ("depth-40-epochs", "bioformer-N8", "bioformer-N2"): (-3.60, "results/depth (20 epochs)"),
    ("prior-v2", "collectri-both-directions", "collectri-rewired"): (-0.55, "results/prior (collectri vs shuffled)"),
}


def study_rows(study_dir: Path) -> list[dict]:
    """One row per (A, B) pair of the study: n, mean difference [95% CI], Holm p, sd, MDE, power
    at the claimed effect and the verdict."""
    from bioformer.experiments.power import paired_power, power_at, power_verdict
    from bioformer.experiments.stats import paired_test

    df = pd.read_csv(study_dir / "results.csv")
    pairs = pd.read_csv(study_dir / "pairs.csv")
    pairs = pairs[pairs["metric"] == "mse"]
    rows = []
    for _, p in pairs.iterrows():
        A = df[df["arm"] == p["a"]].set_index("seed")["test_mse"]
        B = df[df["arm"] == p["b"]].set_index("seed")["test_mse"]
        seeds = sorted(set(A.index) & set(B.index))
        if len(seeds) < 2:
            continue
        a, b = A.loc[seeds].to_numpy(float), B.loc[seeds].to_numpy(float)
        res = {**paired_test(a, b), **paired_power(a - b), "t_p_holm": p["t_p_holm"]}
        claim, source = CLAIMS.get((study_dir.name, p["a"], p["b"]), (None, ""))
        better = p["a"] if res["mean_diff"] < 0 else p["b"]
        rows.append({"study": study_dir.name, "a": p["a"], "b": p["b"], **res, "claimed": claim, "claim_source": source,
                     "power_claimed": power_at(claim, res["sd_diff"], res["n"]) if claim is not None else np.nan,
                     "verdict": power_verdict(res, better, claimed=claim)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", type=Path, default=Path("results"))
    args = ap.parse_args()
    rows = [r for d in sorted(args.results.iterdir()) if (d / "results.csv").exists() and (d / "pairs.csv").exists() for r in study_rows(d)]
    print("| study | A vs B | n | ΔMSE (A − B) [95% CI] | Holm p | sd of Δ | MDE (80% power) | claimed Δ (source): power | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        claim = f"{r['claimed']:+.2f} ({r['claim_source']}): {100 * r['power_claimed']:.0f}%" if r["claimed"] is not None else "–"
        print(f"| {r['study']} | {r['a']} vs {r['b']} | {r['n']} | {r['mean_diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | "
              f"{r['t_p_holm']:.2g} | {r['sd_diff']:.2f} | {r['mde']:.2f} | {claim} | {r['verdict']} |")


if __name__ == "__main__":
    main()
