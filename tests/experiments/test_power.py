"""Power and MDE: the MDE is detected 80% of the time (checked by simulation), and verdicts are
worded from power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bioformer.experiments.power import mde, paired_power, power_at, power_verdict


@pytest.mark.parametrize("n", [5, 10])
def test_mde_is_detected_with_80_percent_power_by_simulation(n):
    sd = 0.7
    effect = mde(sd, n)
    assert power_at(effect, sd, n) == pytest.approx(0.8, abs=1e-6)
    # normal approximation (z quantiles) is a lower bound; the t-based MDE is larger for few seeds
    assert effect > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)
    d = np.random.default_rng(0).normal(effect, sd, size=(20000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert rejected == pytest.approx(0.8, abs=0.015)
    assert power_at(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's size


def test_verdicts_are_worded_from_power():
    d = np.array([0.5, -0.3, 0.9, -0.6, 0.2])
    res = {"n": 5, "t_p": 0.6, **paired_power(d)}
    assert power_verdict(res, "A").startswith(f"no effect larger than {res['mde']:.2f}")
    low = power_verdict(res, "A", claimed=0.3)
    assert low.startswith("not replicated (power") and "0.30" in low
    big = power_verdict(res, "A", claimed=10.0)
    assert big.startswith("claimed +10.00 not replicated at 100% power")
    assert power_verdict({**res, "t_p": 0.001}, "A").startswith("**A better**")
    assert power_verdict({"n": 1, "t_p": math.nan}, "A") == "too few seeds"
    assert power_verdict({**res, "n": 2}, "A").startswith("not significant; too few seeds")
