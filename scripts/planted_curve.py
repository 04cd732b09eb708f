"""The sensitivity curve of the planted study, per alpha:

(a) paired test-MSE differences prior - zero z and prior - rewired (and - scGPT), mean and 95% t
    interval over seeds, on all masked positions and on masked targets of given edges
    (results/planted/alpha*/results.csv) and of held-out edges (heldout_mse.csv,
    scripts/planted_heldout_mse.py);
(b) pooled AUROC of the held-out true edges (t 95% interval over seeds) for the prior arm's
    readouts and the baselines (grn_summary.csv, scripts/planted_grn.py).

Prints markdown tables and writes docs/planted-curve.png.

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
HELDOUT_SETS = (("heldout", "masked targets of held-out edges"), ("heldout-only", "targets with only held-out regulators"))
GRN_PREDICTORS = ((PRIOR, "perturb abs-centred"), (PRIOR, "z chosen"), ("baseline", "pearson co-expression"),
                  ("baseline", "GENIE3 (trees)"), ("baseline", "degree (visible out x in)"))


def _alpha_dirs(root: Path) -> list[tuple[float, Path]]:
    return sorted((float(re.sub("^alpha", "", d.name)), d) for d in root.glob("alpha*") if (d / "results.csv").exists())


def _pairs(wide: pd.DataFrame, alpha: float, label: str, extra: dict) -> list[dict]:
    rows = []
    for other in (ZERO, REWIRED, SCGPT):
        if PRIOR in wide and other in wide:
            pair = wide[[PRIOR, other]].dropna()
            rows.append({"alpha": alpha, "metric": label, "pair": f"prior - {other}", **paired_test(pair[PRIOR], pair[other]),
                         "prior_mse": pair[PRIOR].mean(), **extra})
    return rows


def curve(root: Path) -> pd.DataFrame:
    """(a): one row per (alpha, metric, pair)."""
    rows = []
    for alpha, d in _alpha_dirs(root):
        df = pd.read_csv(d / "results.csv")
        floor = {"floor_cell_mse": df["floor_cell_mse"].mean()}
        for metric, label in METRICS:
            if metric in df:
                rows += _pairs(df.pivot_table(index="seed", columns="arm", values=metric), alpha, label, floor)
        if (d / "heldout_mse.csv").exists():
            h = pd.read_csv(d / "heldout_mse.csv")
            for key, label in HELDOUT_SETS:
                rows += _pairs(h[h["set"] == key].pivot_table(index="seed", columns="arm", values="mse"), alpha, label, floor)
    return pd.DataFrame(rows)


def grn_curve(root: Path) -> pd.DataFrame:
    """(b): held-out true edges' pooled AUROC per alpha and predictor (mean, CI over seeds)."""
    rows = []
    for alpha, d in _alpha_dirs(root):
        f = d / "grn_summary.csv"
        if not f.exists():
            continue
        s = pd.read_csv(f)
        for arm, pred in GRN_PREDICTORS:
            for truth in ("given", "heldout"):
                r = s[(s["arm"] == arm) & (s["predictor"] == pred) & (s["truth"] == truth)]
                if len(r):
                    rows.append({"alpha": alpha, "predictor": pred if arm == "baseline" else f"prior arm: {pred}", "truth": truth,
                                 **r.iloc[0][["n_seeds", "auroc", "auroc_low", "auroc_high", "ap_over_random"]].to_dict()})
    return pd.DataFrame(rows)


def _errorbars(ax, df: pd.DataFrame, by: str, y: str, low: str, high: str) -> None:
    for name, sub in df.groupby(by, sort=False):
        sub = sub.sort_values("alpha")
        ax.errorbar(sub["alpha"], sub[y], yerr=[sub[y] - sub[low], sub[high] - sub[y]], marker="o", capsize=3, label=name)


def plot(df: pd.DataFrame, grn: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for _, label in METRICS] + [HELDOUT_SETS[0][1]]
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(4 * (len(labels) + 1), 3.8))
    for ax, label in zip(axes, labels, strict=False):
        sub = df[(df["metric"] == label) & (df["pair"] != f"prior - {SCGPT}")]
        _errorbars(ax, sub, "pair", "mean_diff", "ci_low", "ci_high")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"(a) {label}", fontsize=9)
        ax.set_xlabel("alpha", fontsize=8)
    axes[0].set_ylabel("test MSE difference (bins², 95% CI over seeds)", fontsize=8)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    if not grn.empty:
        _errorbars(ax, grn[grn["truth"] == "heldout"], "predictor", "auroc", "auroc_low", "auroc_high")
        ax.legend(fontsize=6)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_title("(b) held-out true edges: AUROC", fontsize=9)
    ax.set_xlabel("alpha", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _table(df: pd.DataFrame, cols: list[str]) -> None:
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df[cols].iterrows():
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/planted")
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("docs/planted-curve.png")
    df, grn = curve(root), grn_curve(root)
    if df.empty:
        sys.exit(f"no results.csv under {root}/alpha*")
    _table(df, ["alpha", "metric", "pair", "n", "mean_diff", "ci_low", "ci_high", "t_p", "prior_mse", "floor_cell_mse"])
    if not grn.empty:
        print()
        _table(grn, ["alpha", "predictor", "truth", "n_seeds", "auroc", "auroc_low", "auroc_high", "ap_over_random"])
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(df, grn, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
