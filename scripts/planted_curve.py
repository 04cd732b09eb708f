"""The sensitivity curve of the planted study: per alpha, the paired test-MSE differences
prior - zero z and prior - rewired (mean and 95% t interval over seeds), overall and on masked
targets of the given prior (role "target"); and the GRN score of held-out true edges when the
runs carry it. Reads results/planted/alpha*/results.csv (scripts/planted_study.sh), prints a
markdown table and writes docs/planted-curve.png.

    python scripts/planted_curve.py [RESULTS_DIR] [PNG]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from bioformer.experiments.stats import paired_test

PRIOR, ZERO, REWIRED, SCGPT = "planted-both-directions", "zero-z", "planted-rewired", "scgpt"
METRICS = (("test_mse", "all masked"), ("test_mse_role_target", "masked targets of given edges"))


def curve(root: Path) -> pd.DataFrame:
    rows = []
    for d in sorted(root.glob("alpha*")):
        f = d / "results.csv"
        if not f.exists():
            continue
        alpha = float(re.sub("^alpha", "", d.name))
        df = pd.read_csv(f)
        wide = {m: df.pivot_table(index="seed", columns="arm", values=m) for m, _ in METRICS if m in df}
        for metric, label in METRICS:
            w = wide.get(metric)
            if w is None:
                continue
            for other in (ZERO, REWIRED, SCGPT):
                if PRIOR in w and other in w:
                    pair = w[[PRIOR, other]].dropna()
                    t = paired_test(pair[PRIOR], pair[other])
                    rows.append({"alpha": alpha, "metric": label, "pair": f"prior - {other}", **t,
                                 "prior_mse": pair[PRIOR].mean(), "floor_cell_mse": df["floor_cell_mse"].mean()})
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, (_, label) in zip(axes, METRICS, strict=True):
        for pair, sub in df[df["metric"] == label].groupby("pair"):
            sub = sub.sort_values("alpha")
            ax.errorbar(sub["alpha"], sub["mean_diff"], yerr=[sub["mean_diff"] - sub["ci_low"], sub["ci_high"] - sub["mean_diff"]], marker="o", capsize=3, label=pair)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("alpha (regulators' share of a target's log-rate variance)", fontsize=8)
        ax.set_title(label)
    axes[0].set_ylabel("test MSE difference (bins², 95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/planted")
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("docs/planted-curve.png")
    df = curve(root)
    if df.empty:
        sys.exit(f"no results.csv under {root}/alpha*")
    cols = ["alpha", "metric", "pair", "n", "mean_diff", "ci_low", "ci_high", "t_p", "prior_mse", "floor_cell_mse"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df[cols].iterrows():
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(df, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
