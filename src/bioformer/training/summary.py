"""What a run reports: metrics.csv, curves.png, the terminal's test table, the floor warning,
and the versions recorded in summary.json."""

from __future__ import annotations

import csv
import io
import math
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bioformer.training.checkpoint import atomic_write_text, save_figure
from bioformer.training.metrics import FLOOR_LABELS, EvalResult


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bioformer", "torch", "numpy", "scanpy", "anndata", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_curves(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Train loss and validation MSE per epoch with the per-gene floor; validation Pearson."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train loss (masked MSE)")
    ax1.plot(ep, [r["valid_mse"] for r in rows], "o-", label="valid MSE")
    styles = {"cell": ("C3", "-."), "gene_mean": ("k", "--"), "const": ("grey", ":")}
    for name, (color, ls) in styles.items():
        if f"valid_floor_{name}_mse" in rows[0]:
            ax1.axhline(rows[0][f"valid_floor_{name}_mse"], color=color, ls=ls, lw=1, label=FLOOR_LABELS[name])
    if "valid_floor_const_mse" in rows[0]:  # keep the floors readable: early epochs may be far above
        lows = [r["valid_mse"] for r in rows] + [rows[0].get(f"valid_floor_{n}_mse", math.inf) for n in ("gene_mean", "cell")]
        ax1.set_ylim(0.9 * min(lows), 1.4 * rows[0]["valid_floor_const_mse"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("MSE (bins²)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=8)
    # per-gene Pearson across cells: gene identity removed (the per-gene floor has none)
    key = "valid_pearson_gene" if "valid_pearson_gene" in rows[0] else "valid_pearson"
    ax2.plot(ep, [r[key] for r in rows], "o-", color="C2", label="model")
    if f"valid_floor_cell_{key[6:]}" in rows[0]:
        ax2.axhline(rows[0][f"valid_floor_cell_{key[6:]}"], color="C3", ls="-.", lw=1, label="cell-aware floor")
    ax2.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("valid per-gene Pearson r (median)" if key == "valid_pearson_gene" else "valid Pearson r")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


TABLE_COLUMNS = (("mse", "MSE"), ("mse_log", "MSE log"), ("pearson_gene", "r gene"), ("spearman_cell", "rho cell"), ("pearson", "r pooled"), ("mre", "MRE"))


def format_test_table(result: EvalResult) -> str:
    """Model vs floors for the terminal: one row each, 95% intervals, and the verdict against
    the cell-aware and non-linear floors (a model that does not beat them shows no gene-gene skill)."""
    cols = [(k, label) for k, label in TABLE_COLUMNS if k in result.model]
    lines = [f"{'':<22}" + "".join(f"{label:>10}" for _, label in cols)]
    rows = [("model (test)", result.model)] + [(FLOOR_LABELS[n], result.floors[n]) for n in ("tree", "cell", "gene_mean", "const") if n in result.floors]
    for label, m in rows:
        lines.append(f"{label:<22}" + "".join(f"{m.get(k, math.nan):>10.3f}" for k, _ in cols))
    ci = [f"{k} [{result.ci[k][0]:.3f}, {result.ci[k][1]:.3f}]" for k in ("mse", "pearson_gene", "spearman_cell") if k in result.ci]
    if ci:
        lines.append("model 95% CI over cells: " + ", ".join(ci))
    c = result.counts
    if c:
        lines.append(f"scored: {c.get('positions', 0):,} masked positions in {c.get('cells', 0):,} cells ({c.get('folds', 1)} mask fold(s)); r gene = median per-gene Pearson across cells, rho cell = median per-cell Spearman")
    if "gene_mean" in result.floors:
        lines.append(f"MSE / per-gene floor: {result.ratio('gene_mean'):.3f} (< 1 beats the floor)")
    for name in ("cell", "tree"):
        if name not in result.floors:
            continue
        verdict = {True: "beats it (95% CI of the difference below 0)",
                   False: "does NOT beat it: no evidence of learnt gene-gene structure",
                   None: "no interval"}[result.beats(name)]
        lo_hi = result.ci.get(f"mse_minus_floor_{name}")
        diff = f", model - floor {lo_hi[0]:+.2f} to {lo_hi[1]:+.2f}" if lo_hi else ""
        lines.append(f"MSE / {FLOOR_LABELS[name]}: {result.ratio(name):.3f}{diff}; {verdict}")
    if "mse_role_tf" in result.model:
        parts = [f"{r} {result.model[f'mse_role_{r}']:.2f} (n={c.get(f'role_{r}', 0)}, cell floor {result.floors.get('cell', {}).get(f'mse_role_{r}', math.nan):.2f})" for r in ("tf", "target", "neither")]
        lines.append("MSE by the masked gene's role in the prior: " + "; ".join(parts))
    return "\n".join(lines)


def floor_warning(summary: dict[str, Any]) -> str | None:
    """A warning when the test MSE does not beat the per-gene-mean floor, or (with 95% confidence)
    the cell-aware floor (None when it does)."""
    ratio = summary.get("test_mse_vs_floor")
    if ratio is None or ratio < 1.0:
        hi = summary.get("test_ci_mse_minus_floor_cell_high")
        if hi is None or hi < 0:
            return None
        return (
            f"the model did not beat the cell-aware floor on the test split (MSE {summary['test_mse']:.3f} vs "
            f"{summary['floor_cell_mse']:.3f}; 95% CI of the difference reaches {hi:+.3f}): per-cell statistics of its "
            "input explain as much, so it shows no gene-gene structure yet"
        )
    return (
        f"the model did not beat the per-gene-mean floor on the test split (MSE {summary['test_mse']:.3f} vs "
        f"{summary['floor_gene_mean_mse']:.3f}, ratio {ratio:.3f}): it predicts no better than each gene's training "
        f"mean; train for more than {summary['epochs']} epochs or on more cells before reading its numbers"
    )
