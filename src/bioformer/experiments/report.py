"""Turn a study's finished runs into results.csv, summary.md, comparison.png and curves.png.

Statistics: per model the mean with a t-based 95% confidence interval over seeds; per pair of
interest the mean paired difference (same seed = same split and masks) with its t interval, a
paired t-test p-value, a Wilcoxon signed-rank p-value when there are at least 5 pairs, and
Holm-adjusted paired-t p-values over the study's pairs (per metric).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioformer.config import ModelConfig
from bioformer.experiments.plots import plot_comparison, plot_curves
from bioformer.experiments.power import paired_power, power_verdict
from bioformer.experiments.stats import holm, paired_test, t_interval
from bioformer.training.checkpoint import atomic_write_text
from bioformer.training.metrics import FLOOR_NAMES, EvalResult
from bioformer.training.reader import RunReader

# per-gene Pearson (across cells) and per-cell Spearman separate gene-gene skill from gene
# identity; pooled Pearson and MRE are kept for continuity (see bioformer.training.metrics)
METRICS = ("mse", "pearson_gene", "spearman_cell", "mre", "mae", "pearson")
# scored beside the run's own masks when a prior graph exists (see training.run.prior_targets_summary)
EXTRA_METRICS = ("prior_targets_mse", "unsampled_mse")
LOWER_IS_BETTER = {"mse": True, "mre": True, "mae": True, "pearson": False, "pearson_gene": False, "spearman_cell": False, "prior_targets_mse": True, "unsampled_mse": True}
LABELS = {"mse": "MSE", "mre": "MRE", "mae": "MAE", "pearson": "pooled Pearson", "pearson_gene": "per-gene Pearson", "spearman_cell": "per-cell Spearman", "prior_targets_mse": "MSE, prior-targets masks", "unsampled_mse": "MSE, never-sampled cells"}
FLOOR_COLUMNS = tuple(f"floor_{kind}_{m}" for kind in FLOOR_NAMES for m in (*METRICS, "mse_log"))
RESULT_COLUMNS = (
    "study", "arm", "model", "seed",
    *(f"test_{m}" for m in (*METRICS, "mse_log", "pearson_gene_log", "mse_role_tf", "mse_role_target", "mse_role_neither")),
    "test_mse_vs_floor", "test_mse_vs_floor_cell", "test_ci_mse_minus_floor_cell_low", "test_ci_mse_minus_floor_cell_high",
    "test_mse_vs_floor_tree", "test_ci_mse_minus_floor_tree_low", "test_ci_mse_minus_floor_tree_high", *FLOOR_COLUMNS,
    "test_prior_targets_mse", "test_prior_targets_mse_vs_floor", "floor_prior_targets_gene_mean_mse", "test_prior_targets_cells_share",
    "test_unsampled_mse", "unsampled_floor_cell_mse", "unsampled_floor_tree_mse", "unsampled_floor_gene_mean_mse", "unsampled_n_cells",
    "n_params", "d_model", "nlayers", "prior", "epochs", "best_epoch", "best_valid_mse",
    "seconds_per_epoch", "wall_seconds", "run_dir",
)
COVERAGE_KEYS = ("genes", "tfs", "edges", "edges_per_cell_median", "edges_per_cell_mean", "cells_without_edges_frac", "heldout_edges_in_prior")


# ----------------------------------------------------------------------------------- collect


def collect_results(study_dir: Path, study: str, arms: list[str]) -> pd.DataFrame:
    """One row per finished (arm, seed) run under study_dir/runs/ARM/seedS/summary.json."""
    rows = []
    for arm in arms:
        for run in sorted((study_dir / "runs" / arm).glob("seed*/summary.json")):
            reader = RunReader(run.parent)
            s, cfg = reader.summary(), reader.saved_config()
            row = {"study": study, "arm": arm, "model": s.get("model"), "seed": s.get("seed")}
            metrics = EvalResult.from_dict(s["test"]).flat("test_") if "test" in s else s  # older runs: flat keys only
            row.update({k: v for k, v in {**s, **metrics}.items() if k in RESULT_COLUMNS})
            row.update(_unsampled(reader))
            row["d_model"] = cfg.get("model", {}).get("d_model")
            row["nlayers"] = cfg.get("model", {}).get("nlayers")
            row["prior"] = cfg.get("data", {}).get("prior") if _reads_prior(cfg) else "-"
            row["run_dir"] = str(run.parent.relative_to(study_dir))
            # a zero-z arm trains on data prepared with the study's prior: that coverage is not its own
            coverage = (s.get("prior_coverage") or {}) if row["prior"] not in ("none", "-") else {}
            for k in COVERAGE_KEYS:
                row[f"coverage_{k}"] = coverage.get(k, math.nan)
            rows.append(row)
    cols = list(RESULT_COLUMNS) + [f"coverage_{k}" for k in COVERAGE_KEYS]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["arm", "seed"], key=lambda c: c.map({a: i for i, a in enumerate(arms)}) if c.name == "arm" else c).reset_index(drop=True)


def _unsampled(reader: RunReader) -> dict[str, float]:
    """The second test set's columns (extra_test.json: never-sampled cells), if scored."""
    d = reader.extra_test()
    if d is None:
        return {}
    r = EvalResult.from_dict(d["test"])
    out = {"test_unsampled_mse": r.model["mse"], "unsampled_n_cells": d["n_cells"]}
    out.update({f"unsampled_floor_{k}_mse": v["mse"] for k, v in r.floors.items() if k in ("cell", "tree", "gene_mean")})
    return out


def _reads_prior(cfg: dict[str, Any]) -> bool:
    """Whether the run's model, as configured, reads a z prior (asked of its model class)."""
    from bioformer.models import model_class

    if not cfg.get("model"):
        return False
    model_cfg = ModelConfig.of(**cfg["model"])
    return model_class(model_cfg.model).reads_prior(model_cfg)


def collect_curves(study_dir: Path, arms: list[str]) -> dict[str, list[pd.DataFrame]]:
    out: dict[str, list[pd.DataFrame]] = {}
    for arm in arms:
        for run in sorted((study_dir / "runs" / arm).glob("seed*/summary.json")):
            m = RunReader(run.parent).metrics()
            if m is not None:
                out.setdefault(arm, []).append(m)
    return out


# ----------------------------------------------------------------------------------- tables


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _ci(values) -> str:
    mean, lo, hi = t_interval(values)
    if math.isnan(lo):
        return f"{_fmt(mean)} (n=1)"
    return f"{_fmt(mean)} ± {_fmt((hi - lo) / 2)}"


def model_table(df: pd.DataFrame, arms: list[str]) -> str:
    head = ["model", "n", "params", *(f"test {LABELS[m]}" for m in METRICS), "MSE / non-linear floor", "MSE / cell-aware floor", "MSE / per-gene floor", "non-linear floor MSE", "cell-aware floor MSE", "per-gene floor MSE", "constant floor MSE", "best epoch", "s / run"]
    prior_targets = "test_prior_targets_mse_vs_floor" in df and df["test_prior_targets_mse_vs_floor"].notna().any()
    if prior_targets:
        head.insert(-2, "prior-targets MSE / floor")
    unsampled = df["test_unsampled_mse"].notna().any()
    if unsampled:
        head[-2:-2] = ["test MSE, never-sampled cells", "its non-linear floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        g = df[df["arm"] == arm]
        if g.empty:
            continue
        cells = [arm, str(len(g)), f"{int(g['n_params'].median()):,}"]
        cells += [_ci(g[f"test_{m}"]) for m in METRICS]
        cells += [_ci(g["test_mse_vs_floor_tree"]), _ci(g["test_mse_vs_floor_cell"]), _ci(g["test_mse_vs_floor"]), _ci(g["floor_tree_mse"]), _ci(g["floor_cell_mse"]), _ci(g["floor_gene_mean_mse"]), _ci(g["floor_const_mse"])]
        if prior_targets:
            cells.append(_ci(g["test_prior_targets_mse_vs_floor"]))
        if unsampled:
            cells += [_ci(g["test_unsampled_mse"]), _ci(g["unsampled_floor_tree_mse"])]
        cells += [f"{g['best_epoch'].mean():.1f} / {int(g['epochs'].max())}", f"{g['wall_seconds'].mean():.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_rows(df: pd.DataFrame, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Paired statistics for each (a, b) pair and metric, on the seeds both have finished."""
    rows = []
    metrics = METRICS + tuple(m for m in EXTRA_METRICS if f"test_{m}" in df and df[f"test_{m}"].notna().any())
    for a, b in pairs:
        A = df[df["arm"] == a].set_index("seed")
        B = df[df["arm"] == b].set_index("seed")
        seeds = sorted(set(A.index) & set(B.index))
        for m in metrics:
            col = f"test_{m}"
            res = paired_test(A.loc[seeds, col].to_numpy(), B.loc[seeds, col].to_numpy()) if seeds else {"n": 0}
            if seeds:
                res.update(paired_power(A.loc[seeds, col].to_numpy(dtype=float) - B.loc[seeds, col].to_numpy(dtype=float)))
            better = (A.loc[seeds, col] < B.loc[seeds, col]) if LOWER_IS_BETTER[m] else (A.loc[seeds, col] > B.loc[seeds, col])
            rows.append({"a": a, "b": b, "metric": m, "a_better": int(better.sum()) if seeds else 0, **res})
    for m in metrics:
        idx = [i for i, r in enumerate(rows) if r["metric"] == m]
        adj = holm([rows[i].get("t_p", math.nan) for i in idx])
        for i, p in zip(idx, adj, strict=True):
            rows[i]["t_p_holm"] = float(p)
    return rows


def pair_table(rows: list[dict[str, Any]]) -> str:
    """The paired comparisons, each with its minimum detectable effect (80% power) and a verdict
    worded from it (`bioformer.experiments.power.power_verdict`)."""
    head = ["A vs B", "metric", "n", "mean(A − B) [95% CI]", "MDE (80% power)", "A better in", "paired t p", "Holm p", "Wilcoxon p", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r.get("n", 0)
        if n == 0:
            continue
        m = r["metric"]
        ci = f"{_fmt(r['mean_diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        a_wins = (r["mean_diff"] < 0) == LOWER_IS_BETTER[m]
        verdict = power_verdict(r, r["a"] if a_wins else r["b"], digits=3 if m != "mse" else 2)
        label = LABELS.get(m, m.upper())
        lines.append("| " + " | ".join([f"{r['a']} vs {r['b']}", label, str(n), ci, _fmt(r.get("mde", math.nan)), f"{r['a_better']}/{n}",
                                        _fmt_p(r["t_p"]), _fmt_p(r.get("t_p_holm", math.nan)), _fmt_p(r["wilcoxon_p"]), verdict]) + " |")
    return "\n".join(lines)


def mde_line(rows: list[dict[str, Any]], metric: str = "mse") -> str:
    """One sentence: the study's minimum detectable effect in `metric` (80% power), per pair."""
    parts = [f"{r['a']} vs {r['b']} {_fmt(r.get('mde', math.nan))}" for r in rows if r["metric"] == metric and r.get("n", 0) >= 2]
    if not parts:
        return ""
    return (f"Minimum detectable effect in test {LABELS.get(metric, metric)} (80% power, two-sided paired t at 0.05, from the "
            f"observed spread of the paired differences): " + "; ".join(parts) + ". A non-significant pair means no effect larger than its MDE, not no effect.")


def floor_flags(df: pd.DataFrame, arms: list[str]) -> list[str]:
    """Models that do not beat a floor on the same masks: mean test MSE not below the per-gene
    floor; or not below the cell-aware or non-linear floor, judged by the paired t interval over seeds (>= 2
    seeds) or the bootstrap interval over cells (one seed)."""
    out = []
    for arm in arms:
        g = df[df["arm"] == arm]
        if g.empty:
            continue
        model, floor = g["test_mse"].mean(), g["floor_gene_mean_mse"].mean()
        if not model < floor:
            out.append(f"- **{arm}**: mean test MSE {model:.2f} is NOT below the per-gene-mean floor {floor:.2f}; its results say little about the architecture.")
        for name in ("cell", "tree"):
            flag = _floor_flag(g, arm, name)
            if flag:
                out.append(flag)
    return out


def _floor_flag(g: pd.DataFrame, arm: str, name: str) -> str | None:
    """The flag line when arm's runs `g` do not beat floor `name` with 95% confidence (paired t
    interval over seeds, or the bootstrap interval over test cells for one seed); else None."""
    floor = g[f"floor_{name}_mse"].to_numpy(dtype=float)
    if np.isnan(floor).all():
        return None
    model = g["test_mse"].mean()
    if len(g) >= 2:
        _, lo, hi = t_interval(g["test_mse"].to_numpy(dtype=float) - floor)
        how = "paired t interval over seeds"
    else:
        lo, hi = g[f"test_ci_mse_minus_floor_{name}_low"].iloc[0], g[f"test_ci_mse_minus_floor_{name}_high"].iloc[0]
        how = "bootstrap interval over test cells"
    if hi < 0:
        return None
    label = {"cell": "cell-aware", "tree": "non-linear"}[name]
    return (f"- **{arm}**: test MSE {model:.2f} does NOT beat the {label} floor {np.nanmean(floor):.2f} "
            f"(model − floor 95% CI [{_fmt(lo, 2)}, {_fmt(hi, 2)}], {how}): no evidence it learnt gene–gene structure.")


def coverage_table(df: pd.DataFrame, arms: list[str]) -> str:
    head = ["model", "prior", "genes", "TFs", "edges", "edges per cell (median)", "edges per cell (mean)", "cells without edges", "held-out edges in prior (must be 0)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    any_row = False
    for arm in arms:
        g = df[df["arm"] == arm]
        if g.empty or g["coverage_edges"].isna().all() or g["prior"].iloc[0] in ("-", None):
            continue
        any_row = True
        c = {k: g[f"coverage_{k}"].mean() for k in COVERAGE_KEYS}
        lines.append("| " + " | ".join([
            arm, str(g["prior"].iloc[0]), f"{c['genes']:.0f}", f"{c['tfs']:.0f}", f"{c['edges']:.0f}",
            f"{c['edges_per_cell_median']:.1f}", f"{c['edges_per_cell_mean']:.1f}", f"{100 * c['cells_without_edges_frac']:.1f}%",
            "not recorded" if math.isnan(c["heldout_edges_in_prior"]) else f"{c['heldout_edges_in_prior']:.0f}",
        ]) + " |")
    return "\n".join(lines) if any_row else ""


# ----------------------------------------------------------------------------------- report


def write_report(
    study_dir: Path,
    study: str,
    arms: list[str],
    pairs: list[tuple[str, str]],
    header: str = "",
    breakdown: str = "",
) -> pd.DataFrame:
    """Write results.csv, summary.md, comparison.png and curves.png from every finished run."""
    study_dir = Path(study_dir)
    df = collect_results(study_dir, study, arms)
    atomic_write_text(study_dir / "results.csv", df.to_csv(index=False, float_format="%.6g"))
    rows = pair_rows(df, pairs)
    pd.DataFrame(rows).to_csv(study_dir / "pairs.csv", index=False, float_format="%.6g")
    n_runs = len(df)
    md = [f"# Study: {study}", "", header, ""]
    md += [f"Finished runs: {n_runs} ({df['seed'].nunique() if n_runs else 0} seed(s)). Test metrics are on held-out cells never used for training or model selection; floors are scored on exactly the same masked positions.", ""]
    if n_runs:
        md += ["## Per model (mean ± 95% CI half-width, t-based, over seeds)", "", model_table(df, arms), ""]
        flags = floor_flags(df, arms)
        md += ["## Floor check", ""]
        md += ["The cell-aware floor is a per-gene ridge on statistics of the cell's unmasked input bins, the non-linear floor gradient-boosted trees "
               "on the masked gene's training statistics and the same cell statistics (neither sees another gene's value; both fitted on training cells only); "
               "a model that does not beat them has shown no gene–gene skill.", ""]
        md += flags if flags else ["Every model's test MSE is below the per-gene-mean floor and, with 95% confidence, below the cell-aware and non-linear floors."]
        md += [""]
        md += ["## Paired comparisons (same seed = same split and masks)", "",
               "mean(A − B) < 0 means A has the lower value (better for MSE/MRE/MAE; worse for Pearson). "
               "Holm adjusts the paired-t p-values over this study's pairs, per metric; the verdict uses it at 0.05.", "",
               mde_line(rows), "",
               pair_table(rows), ""]
        cov = coverage_table(df, arms)
        if cov:
            md += ["## Prior coverage (training cells' sequences; mean over seeds)", "", cov, ""]
    if breakdown:
        md += ["## Parameters by part (first seed's vocabulary)", "", breakdown, ""]
    md += ["Files: results.csv (one row per model × seed), pairs.csv, comparison.png, curves.png, runs/MODEL/seedS/.", ""]
    atomic_write_text(study_dir / "summary.md", "\n".join(md))
    if n_runs:
        title = f"{study} ({df['seed'].nunique()} seeds)"
        plot_comparison(study_dir / "comparison.png", df, arms, title, {m: LABELS[m] for m in METRICS})
        plot_curves(study_dir / "curves.png", collect_curves(study_dir, arms), arms, title)
    return df
