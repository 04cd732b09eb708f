"""Statistics over seeds: t intervals, paired tests and the Holm adjustment (used by the study
reports and the scripts that tabulate studies)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the t-based confidence interval for the mean; NaN bounds for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_test(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of a and b (same seeds, same order): mean of a - b with its t interval,
    the paired t-test p-value and (n >= 5) the Wilcoxon signed-rank p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal length ({a.shape} vs {b.shape})")
    d = a - b
    mean, lo, hi = t_interval(d, confidence)
    out = {"n": int(d.size), "mean_diff": mean, "ci_low": lo, "ci_high": hi, "t_p": math.nan, "wilcoxon_p": math.nan}
    if d.size >= 2:
        if np.all(d == d[0]):  # no variance: the t statistic is undefined
            out["t_p"] = 1.0 if d[0] == 0 else 0.0
        else:
            out["t_p"] = float(stats.ttest_rel(a, b).pvalue)
    if d.size >= 5 and np.any(d != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
