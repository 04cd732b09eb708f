"""Metrics of masked-value predictions, computed once over a whole split's masked positions.

Every predictor (the model and each floor) is scored on the same positions:

- mse, mae, pearson: pooled over all masked positions (pooled Pearson mostly measures gene
  identity: the per-gene floor already scores high on it);
- mre = mean |pred - target| / (target + 1e-6) over positions with target > 0 (ill-conditioned
  on low bins: kept for continuity, not for conclusions);
- pearson_gene: per gene, Pearson r across the cells where it was masked (>= MIN_POSITIONS), the
  median over genes: removes gene identity (a per-gene constant scores NaN);
- spearman_cell: per cell, Spearman rho over its masked genes (>= MIN_POSITIONS), the median over
  cells (invariant to the per-cell map back to expression, so given on bins only);
- *_log: the same on log-normalised expression, each bin mapped back through its cell's bin
  edges (`bins_to_log`);
- mse_role_tf / mse_role_target / mse_role_neither: MSE split by the masked gene's role in the
  prior within its cell (a TF with a target in the cell; a target with its regulator in the cell;
  neither; a gene can be both a TF and a target);
- include-zero mode: mse/mae on zero and non-zero targets separately.

With `n_boot`, 95% bootstrap intervals over cells (percentile) for the main metrics of every
predictor and for the paired differences model - floor in MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-6
MIN_POSITIONS = 5
FLOOR_NAMES = ("const", "gene_mean", "cell", "tree")
FLOOR_LABELS = {"const": "constant floor", "gene_mean": "per-gene-mean floor", "cell": "cell-aware floor", "tree": "non-linear floor"}


@dataclass
class EvalResult:
    """One evaluation: the model's metrics, each floor's metrics on the same positions, counts
    (cells, positions, genes scored, folds) and bootstrap 95% intervals (low, high) by name:
    "mse", "floor_cell_mse", "mse_minus_floor_cell", ..."""

    model: dict[str, float]
    floors: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.model[key]

    def ratio(self, floor: str, metric: str = "mse") -> float:
        """model / floor (< 1 beats the floor for an error metric); NaN without that floor."""
        f = self.floors.get(floor, {}).get(metric, math.nan)
        return self.model.get(metric, math.nan) / f if f else math.nan

    def beats(self, floor: str) -> bool | None:
        """True if the 95% CI of model - floor MSE lies below 0, False if it does not, None
        without the interval."""
        lo_hi = self.ci.get(f"mse_minus_floor_{floor}")
        return None if lo_hi is None or math.isnan(lo_hi[1]) else bool(lo_hi[1] < 0)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "floors": self.floors, "counts": self.counts, "ci": {k: list(v) for k, v in self.ci.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(dict(d["model"]), {k: dict(v) for k, v in d.get("floors", {}).items()}, dict(d.get("counts", {})), {k: (float(v[0]), float(v[1])) for k, v in d.get("ci", {}).items()})

    def flat(self, prefix: str = "", floor_prefix: str = "") -> dict[str, float]:
        """Flat columns for CSV tables: {prefix}mse ..., {floor_prefix}floor_cell_mse ...,
        {prefix}mse_vs_floor (per-gene), {prefix}mse_vs_floor_cell, {prefix}ci_*_low/high."""
        out = {f"{prefix}{k}": v for k, v in self.model.items()}
        for name, metrics in self.floors.items():
            out.update({f"{floor_prefix}floor_{name}_{k}": v for k, v in metrics.items()})
        if "gene_mean" in self.floors:
            out[f"{prefix}mse_vs_floor"] = self.ratio("gene_mean")
        if "cell" in self.floors:
            out[f"{prefix}mse_vs_floor_cell"] = self.ratio("cell")
        if "tree" in self.floors:
            out[f"{prefix}mse_vs_floor_tree"] = self.ratio("tree")
        for k, (lo, hi) in self.ci.items():
            out[f"{prefix}ci_{k}_low"], out[f"{prefix}ci_{k}_high"] = lo, hi
        out.update({f"{prefix}n_{k}": v for k, v in self.counts.items()})
        return out


def bins_to_log(bins: np.ndarray, cells: np.ndarray, bin_edges: np.ndarray) -> np.ndarray:
    """Map (fractional) bins to log-normalised expression through each cell's bin edges.

    bins [P], cells [P] rows of bin_edges [n_cells, n_bins]. Bin k >= 1 maps to the midpoint of
    the cell's k-th quantile interval, bin 0 to 0 (as `bins_to_values`); fractional bins
    interpolate linearly between neighbouring bins, so the map is monotone within a cell.
    """
    e = np.asarray(bin_edges, dtype=np.float64)[cells]  # [P, n_bins]
    n_bins = e.shape[1]
    mids = np.concatenate([np.zeros((len(e), 1)), 0.5 * (e[:, :-1] + e[:, 1:])], axis=1)  # [P, n_bins]
    b = np.clip(np.asarray(bins, dtype=np.float64), 0, n_bins - 1)
    k0 = np.floor(b).astype(np.int64)
    k1 = np.minimum(k0 + 1, n_bins - 1)
    frac = b - k0
    rows = np.arange(len(b))
    return mids[rows, k0] * (1 - frac) + mids[rows, k1] * frac


def grouped_pearson(group: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int, weights: np.ndarray | None = None, min_n: int = MIN_POSITIONS) -> np.ndarray:
    """Pearson r of x and y within each group (weighted by `weights`): [n_groups], NaN where a
    group has fewer than `min_n` (weighted) positions or a constant x or y."""
    w = np.ones_like(x) if weights is None else weights
    s = [np.bincount(group, weights=v, minlength=n_groups) for v in (w, w * x, w * y, w * x * x, w * y * y, w * x * y)]
    n, sx, sy, sxx, syy, sxy = s
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        vx = sxx - sx * sx / n
        vy = syy - sy * sy / n
        ok = (n >= min_n) & (vx > 1e-9 * np.maximum(sxx, 1e-300)) & (vy > 1e-9 * np.maximum(syy, 1e-300))
        r = cov / np.sqrt(np.where(ok, vx * vy, 1.0))
    return np.where(ok, r, np.nan)


def _median(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else math.nan


def _pooled(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    if pred.size == 0:
        return {"mse": math.nan, "mae": math.nan, "mre": math.nan, "pearson": math.nan}
    err = pred - target
    pos = target > 0
    r = grouped_pearson(np.zeros(pred.size, dtype=np.int64), pred, target, 1, min_n=2)[0]
    return {
        "mse": float(np.mean(err * err)),
        "mae": float(np.mean(np.abs(err))),
        "mre": float(np.mean(np.abs(err[pos]) / (target[pos] + EPS))) if pos.any() else math.nan,
        "pearson": float(r),
    }


class _Positions:
    """Scored positions with cell and gene codes, and within-cell ranks for Spearman."""

    def __init__(self, cells: np.ndarray, genes: np.ndarray, target: np.ndarray) -> None:
        self.cell_code = np.unique(cells, return_inverse=True)[1]
        self.gene_code = np.unique(genes, return_inverse=True)[1]
        self.n_cells, self.n_genes = int(self.cell_code.max()) + 1, int(self.gene_code.max()) + 1
        self.target = target

    def rank_in_cell(self, x: np.ndarray) -> np.ndarray:
        return pd.Series(x).groupby(self.cell_code).rank(method="average").to_numpy()


def _predictor_metrics(pos: _Positions, pred: np.ndarray, target_rank: np.ndarray, log: tuple[np.ndarray, np.ndarray] | None, roles: dict[str, np.ndarray] | None, by_zero: bool) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point metrics of one predictor, and the per-gene / per-cell values the bootstrap reuses."""
    t = pos.target
    out = _pooled(pred, t)
    per_gene = grouped_pearson(pos.gene_code, pred, t, pos.n_genes)
    per_cell = grouped_pearson(pos.cell_code, pos.rank_in_cell(pred), target_rank, pos.n_cells)
    out["pearson_gene"] = _median(per_gene)
    out["spearman_cell"] = _median(per_cell)
    parts = {"spearman_cell": per_cell}
    if log is not None:
        p_log, t_log = log
        out.update({f"{k}_log": v for k, v in _pooled(p_log, t_log).items() if k in ("mse", "mae", "pearson")})
        out["pearson_gene_log"] = _median(grouped_pearson(pos.gene_code, p_log, t_log, pos.n_genes))
    if roles is not None:
        tf, tg = roles["tf"], roles["target"]
        for name, sel in (("tf", tf), ("target", tg), ("neither", ~tf & ~tg)):
            out[f"mse_role_{name}"] = float(np.mean((pred[sel] - t[sel]) ** 2)) if sel.any() else math.nan
    if by_zero:
        z = t == 0
        for name, sel in (("zero", z), ("nonzero", ~z)):
            m = _pooled(pred[sel], t[sel])
            out[f"mse_{name}"], out[f"mae_{name}"] = m["mse"], m["mae"]
        nz = _pooled(pred[~z], t[~z])
        out["mre_nonzero"], out["pearson_nonzero"] = nz["mre"], nz["pearson"]
    return out, parts


def score_positions(
    cells: np.ndarray,  # [P] cell (row) of each masked position
    genes: np.ndarray,  # [P] gene (vocab id)
    target: np.ndarray,  # [P] true bin
    preds: dict[str, np.ndarray],  # {"model": [P], "const": [P], ...} predicted bins
    bin_edges: np.ndarray | None = None,  # [n_cells, n_bins] rows indexed by `cells`
    roles: dict[str, np.ndarray] | None = None,  # {"tf": [P] bool, "target": [P] bool}
    by_zero: bool = False,
    n_boot: int = 0,
    seed: int = 0,
    n_folds: int = 1,
) -> EvalResult:
    """Every metric of every predictor on the same positions, as one EvalResult."""
    target = np.asarray(target, dtype=np.float64)
    counts = {"cells": int(np.unique(cells).size) if cells.size else 0, "positions": int(target.size), "folds": n_folds}
    if target.size == 0:
        nan = {k: math.nan for k in ("mse", "mae", "mre", "pearson", "pearson_gene", "spearman_cell")}
        return EvalResult(dict(nan), {k: dict(nan) for k in preds if k != "model"}, counts)
    pos = _Positions(cells, genes, target)
    t_rank = pos.rank_in_cell(target)
    t_log = bins_to_log(target, cells, bin_edges) if bin_edges is not None else None
    logs = {k: (bins_to_log(p, cells, bin_edges), t_log) for k, p in preds.items()} if bin_edges is not None else {}
    metrics, parts = {}, {}
    for name, p in preds.items():
        p = np.asarray(p, dtype=np.float64)
        metrics[name], parts[name] = _predictor_metrics(pos, p, t_rank, logs.get(name), roles, by_zero)
    counts["genes_with_pearson"] = int(np.sum(~np.isnan(grouped_pearson(pos.gene_code, target, target, pos.n_genes))))
    if roles is not None:
        counts.update({f"role_{k}": int(v.sum()) for k, v in roles.items()})
        counts["role_neither"] = int((~roles["tf"] & ~roles["target"]).sum())
    ci = _bootstrap(pos, {k: np.asarray(v, dtype=np.float64) for k, v in preds.items()}, logs, parts, n_boot, seed) if n_boot > 0 else {}
    return EvalResult(metrics.pop("model"), metrics, counts, ci)


def _bootstrap(pos: _Positions, preds: dict[str, np.ndarray], logs: dict, parts: dict, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals over cells resampled with replacement (per-cell Spearman values
    are resampled; per-gene Pearson and MSE are recomputed with the resampled cells' weights)."""
    rng = np.random.default_rng([seed, 23])
    t = pos.target
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    for _ in range(n_boot):
        cw = np.bincount(rng.integers(0, pos.n_cells, pos.n_cells), minlength=pos.n_cells).astype(np.float64)
        w = cw[pos.cell_code]
        sq = {}
        for name, p in preds.items():
            key = "" if name == "model" else f"floor_{name}_"
            sq[name] = np.sum(w * (p - t) ** 2) / w.sum()
            add(f"{key}mse", sq[name])
            add(f"{key}pearson_gene", _median(grouped_pearson(pos.gene_code, p, t, pos.n_genes, w)))
            add(f"{key}spearman_cell", _median(np.repeat(parts[name]["spearman_cell"], cw.astype(np.int64))))
            if name in logs:
                pl, tl = logs[name]
                add(f"{key}mse_log", np.sum(w * (pl - tl) ** 2) / w.sum())
                add(f"{key}pearson_gene_log", _median(grouped_pearson(pos.gene_code, pl, tl, pos.n_genes, w)))
        for name in preds:
            if name != "model":
                add(f"mse_minus_floor_{name}", sq["model"] - sq[name])
    out = {}
    for k, v in samples.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[~np.isnan(v)]
        out[k] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v.size else (math.nan, math.nan)
    return out
