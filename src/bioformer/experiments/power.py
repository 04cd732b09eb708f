"""Power of a paired comparison over seeds, and verdicts worded from it.

A study that finds no significant difference has shown only that there is no effect it could
see. How large that is follows from the paired differences: the minimum detectable effect (MDE)
is the true mean difference a two-sided paired t-test at alpha 0.05 detects with 80% power, given
the observed standard deviation of the differences and the number of seeds (noncentral t). So a
null verdict reads "no effect larger than MDE"; when an earlier study claimed an effect and this
one had less than 80% power to see it, the verdict is "not replicated (power N%)", never "does
not hold".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

POWER = 0.8
ALPHA = 0.05


def power_at(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test (n pairs, differences with standard deviation sd) to
    detect a true mean difference `effect`."""
    if n < 2 or not sd > 0 or math.isnan(effect):
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n) / sd
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return p if not math.isnan(p) else float(nc > crit)  # far tails: scipy's nct gives NaN


def mde(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """Minimum detectable effect: the |mean difference| detected with `power` (see `power_at`)."""
    if n < 2 or not sd > 0:
        return math.nan
    hi = sd
    while power_at(hi, sd, n, alpha) < power:  # bracket the root
        hi *= 2
    return float(optimize.brentq(lambda e: power_at(e, sd, n, alpha) - power, 1e-12 * sd, hi))


def paired_power(differences) -> dict[str, float]:
    """{"n", "sd_diff", "mde"} of paired differences (NaNs dropped)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    sd = float(d.std(ddof=1)) if d.size >= 2 else math.nan
    return {"n": int(d.size), "sd_diff": sd, "mde": mde(sd, d.size)}


def power_verdict(res: dict, better: str | None, claimed: float | None = None, digits: int = 2) -> str:
    """Verdict of one paired comparison `res` (paired_test + paired_power keys, `t_p_holm` if
    adjusted): `better` names the winning arm when significant. Otherwise "no effect larger than
    MDE" or, for an earlier `claimed` effect this study had < 80% power to see, "not replicated
    (power N%)"."""
    n, p = res.get("n", 0), res.get("t_p_holm", res.get("t_p", math.nan))
    m = res.get("mde", math.nan)
    if n < 2 or math.isnan(p):
        return "too few seeds"
    if p < ALPHA:
        return f"**{better} better** (MDE {m:.{digits}f})"
    if n < 3:  # one degree of freedom: the sd, hence the MDE, is not estimable in any useful sense
        return f"not significant; too few seeds for a power statement (n = {n})"
    if claimed is not None:
        pw = power_at(claimed, res.get("sd_diff", math.nan), n)
        if not pw >= POWER:
            return f"not replicated (power {100 * pw:.0f}% for the claimed {claimed:+.{digits}f})"
        return f"claimed {claimed:+.{digits}f} not replicated at {100 * pw:.0f}% power; no effect larger than {m:.{digits}f}"
    return f"no effect larger than {m:.{digits}f} (80% power)"
