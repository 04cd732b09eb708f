"""Metrics on known inputs: exact sums over a split, MRE only on positive targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bioformer.training.metrics import MaskedMetrics, SplitMetrics


def test_known_values():
    pred = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    target = torch.tensor([[2.0, 2.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    m = MaskedMetrics()
    m.update(pred, target, mask)
    r = m.compute()
    assert r["mse"] == pytest.approx((1 + 0 + 4) / 3)
    assert r["mae"] == pytest.approx(1.0)
    assert r["mre"] == pytest.approx((1 / 2 + 0 + 2 / 5) / 3, rel=1e-5)
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [2, 2, 5])[0, 1])


def test_mre_ignores_zero_targets_and_batches_accumulate_exactly():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(3, 50)), rng.integers(0, 5, size=(3, 50)).astype(float)
    mask = rng.random((3, 50)) < 0.5
    m = MaskedMetrics()
    for b in range(3):  # batch by batch
        m.update(torch.tensor(p[b:b + 1]), torch.tensor(t[b:b + 1]), torch.tensor(mask[b:b + 1]))
    r = m.compute()
    pp, tt = p[mask], t[mask]
    pos = tt > 0
    assert r["mse"] == pytest.approx(np.mean((pp - tt) ** 2))
    assert r["mre"] == pytest.approx(np.mean(np.abs(pp - tt)[pos] / (tt[pos] + 1e-6)))
    assert r["pearson"] == pytest.approx(np.corrcoef(pp, tt)[0, 1])


def test_empty_and_constant_predictions():
    m = MaskedMetrics()
    assert math.isnan(m.compute()["mse"])
    m.update(torch.full((1, 3), 2.0), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert math.isnan(m.compute()["pearson"])  # undefined for a constant prediction


def test_zero_and_nonzero_split():
    s = SplitMetrics(by_zero=True)
    s.update(torch.tensor([[1.0, 1.0, 4.0]]), torch.tensor([[0.0, 2.0, 4.0]]), torch.ones(1, 3, dtype=torch.bool))
    r = s.compute()
    assert r["mse_zero"] == pytest.approx(1.0) and r["mse_nonzero"] == pytest.approx(0.5)
    assert r["mre_nonzero"] == pytest.approx(0.25, rel=1e-5)
