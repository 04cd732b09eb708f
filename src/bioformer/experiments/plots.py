"""A study's figures: comparison.png (test metrics per arm) and curves.png (validation per epoch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bioformer.experiments.stats import t_interval
from bioformer.training.checkpoint import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_comparison(path: Path, df: pd.DataFrame, arms: list[str], title: str, labels: dict[str, str]) -> None:
    """Mean ± 95% CI per model, one panel per metric (`labels`: test metric -> its name, in
    panel order), seeds as dots, per-gene floor dashed."""
    plt = _plt()
    arms = [a for a in arms if (df["arm"] == a).any()]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels) + 1, 3.2 + 0.12 * max(map(len, arms or ["x"]))))
    x = np.arange(len(arms))
    for ax, m in zip(axes, labels, strict=True):
        for i, arm in enumerate(arms):
            v = df.loc[df["arm"] == arm, f"test_{m}"].to_numpy(dtype=float)
            mean, lo, hi = t_interval(v)
            err = [[mean - lo], [hi - mean]] if not math.isnan(lo) else None
            ax.errorbar(i, mean, yerr=err, fmt="o", color=f"C{i % 10}", capsize=4, ms=7)
            ax.scatter(np.full(v.size, i) + 0.15, v, s=10, color=f"C{i % 10}", alpha=0.5)
        for kind, color, ls in (("gene_mean", "k", "--"), ("cell", "C3", "-.")):
            floor = df[f"floor_{kind}_{m}"].mean()
            if not math.isnan(floor):
                ax.axhline(floor, color=color, ls=ls, lw=1, label="per-gene-mean floor" if kind == "gene_mean" else "cell-aware floor")
        ax.set_xticks(x, arms, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"test {labels[m]}")
        ax.set_xlim(-0.6, len(arms) - 0.4)
    axes[0].legend(fontsize=7)
    fig.suptitle(title + " — mean ± 95% CI over seeds")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(path: Path, curves: dict[str, list[pd.DataFrame]], arms: list[str], title: str) -> None:
    """Validation MSE (and Pearson) per epoch: mean over seeds with a 95% CI band."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    floors, cell_floors, last = [], [], []
    for i, arm in enumerate(a for a in arms if a in curves):
        runs = curves[arm]
        n_ep = min(len(r) for r in runs)
        for ax, col in ((ax1, "valid_mse"), (ax2, "valid_pearson")):
            Y = np.stack([r[col].to_numpy(dtype=float)[:n_ep] for r in runs])  # [seeds, epochs]
            ep = runs[0]["epoch"].to_numpy()[:n_ep]
            band = np.array([t_interval(Y[:, e]) for e in range(n_ep)])
            if col == "valid_pearson":
                band = band.clip(-1, 1)
            else:
                last.append(band[-1, 0])
            ax.plot(ep, band[:, 0], "o-", ms=3, color=f"C{i % 10}", label=f"{arm} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(ep, band[:, 1], band[:, 2], color=f"C{i % 10}", alpha=0.2)
        if "valid_floor_gene_mean_mse" in runs[0]:
            floors.append(np.mean([r["valid_floor_gene_mean_mse"].iloc[0] for r in runs]))
        if "valid_floor_cell_mse" in runs[0]:
            cell_floors.append(np.mean([r["valid_floor_cell_mse"].iloc[0] for r in runs]))
    if cell_floors:
        ax1.axhline(float(np.mean(cell_floors)), color="C3", ls="-.", lw=1, label="cell-aware floor")
    if floors:
        ax1.axhline(float(np.mean(floors)), color="k", ls="--", lw=1, label="per-gene-mean floor")
        lo = min(floors + cell_floors)
        # the first epochs are far above; keep the floor and the final values readable
        ax1.set_ylim(min(lo * 0.8, min(last) * 0.95), max(lo * 1.6, max(last) * 1.1))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation MSE (bins²)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Pearson r")
    ax1.legend(fontsize=7)
    fig.suptitle(title + " — mean over seeds, 95% CI band")
    fig.tight_layout()
    save_figure(fig, path)
