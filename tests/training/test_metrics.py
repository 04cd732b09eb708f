"""Metrics on known inputs: pooled sums, per-gene / per-cell correlations against scipy, the map
back to expression, the role split, bootstrap intervals and the flat round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from bioformer.data.preprocess import bin_cells, bins_to_values
from bioformer.training.metrics import EvalResult, bins_to_log, grouped_pearson, score_positions


def _positions(n_cells=40, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    cells = np.repeat(np.arange(n_cells), n_genes)
    genes = np.tile(np.arange(n_genes) + 3, n_cells)
    target = rng.integers(0, 51, size=cells.size).astype(float)
    pred = target + rng.normal(0, 8, size=cells.size)
    return cells, genes, target, pred


def test_pooled_values_and_mre_on_positive_targets_only():
    r = score_positions(np.zeros(4, dtype=int), np.arange(4), np.array([2.0, 2.0, 5.0, 0.0]), {"model": np.array([1.0, 2.0, 3.0, 1.0])})
    assert r["mse"] == pytest.approx((1 + 0 + 4 + 1) / 4)
    assert r["mae"] == pytest.approx(1.0)
    assert r["mre"] == pytest.approx((1 / 2 + 0 + 2 / 5) / 3, rel=1e-5)
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 1], [2, 2, 5, 0])[0, 1])


def test_per_gene_pearson_and_per_cell_spearman_match_scipy():
    cells, genes, target, pred = _positions()
    r = score_positions(cells, genes, target, {"model": pred})
    per_gene = [pearsonr(pred[genes == g], target[genes == g]).statistic for g in np.unique(genes)]
    per_cell = [spearmanr(pred[cells == c], target[cells == c]).statistic for c in np.unique(cells)]
    assert r["pearson_gene"] == pytest.approx(np.median(per_gene))
    assert r["spearman_cell"] == pytest.approx(np.median(per_cell))
    assert r.counts == {"cells": 40, "positions": 480, "folds": 1, "genes_with_pearson": 12}


def test_gene_identity_alone_has_no_per_gene_pearson():
    cells, genes, target, _ = _positions()
    gene_mean = {g: target[genes == g].mean() for g in np.unique(genes)}
    r = score_positions(cells, genes, target, {"model": np.array([gene_mean[g] for g in genes])})
    assert math.isnan(r["pearson_gene"])  # a per-gene constant: undefined, not high


def test_grouped_pearson_weights_equal_repetition():
    rng = np.random.default_rng(3)
    g, x, y = rng.integers(0, 3, 60), rng.normal(size=60), rng.normal(size=60)
    w = rng.integers(0, 3, 60).astype(float)
    rep = np.repeat(np.arange(60), w.astype(int))
    assert np.allclose(grouped_pearson(g, x, y, 3, w), grouped_pearson(g[rep], x[rep], y[rep], 3))


def test_bins_to_log_equals_bins_to_values_at_integer_bins_and_is_monotone():
    rng = np.random.default_rng(0)
    X = np.where(rng.random((5, 80)) < 0.5, 0, rng.gamma(2.0, 1.0, (5, 80)))
    import scipy.sparse as sp

    _, edges = bin_cells(sp.csr_matrix(X), 11)
    bins = np.tile(np.arange(11.0), 5)
    cells = np.repeat(np.arange(5), 11)
    got = bins_to_log(bins, cells, edges)
    want = np.concatenate([bins_to_values(np.arange(11.0), edges[c]) for c in range(5)])
    assert np.allclose(got, want)
    frac = bins_to_log(np.array([2.0, 2.5, 3.0]), np.zeros(3, dtype=int), edges)
    assert frac[0] <= frac[1] <= frac[2] and frac[1] == pytest.approx((frac[0] + frac[2]) / 2)


def test_log_metrics_and_role_split():
    cells, genes, target, pred = _positions()
    edges = np.sort(np.random.default_rng(1).gamma(2.0, 1.0, (40, 51)), axis=1)
    tf = genes < 6
    tgt = (genes >= 5) & (genes < 9)
    r = score_positions(cells, genes, target, {"model": pred}, bin_edges=edges, roles={"tf": tf, "target": tgt})
    pl, tl = bins_to_log(pred, cells, edges), bins_to_log(target, cells, edges)
    assert r["mse_log"] == pytest.approx(np.mean((pl - tl) ** 2))
    assert r["mse_role_tf"] == pytest.approx(np.mean((pred[tf] - target[tf]) ** 2))
    assert r["mse_role_target"] == pytest.approx(np.mean((pred[tgt] - target[tgt]) ** 2))
    neither = ~tf & ~tgt
    assert r["mse_role_neither"] == pytest.approx(np.mean((pred[neither] - target[neither]) ** 2))
    assert r.counts["role_tf"] == tf.sum() and r.counts["role_neither"] == neither.sum()


def test_bootstrap_intervals_cover_and_separate_a_real_gap():
    cells, genes, target, pred = _positions(n_cells=120)
    worse = target + np.random.default_rng(5).normal(0, 12, size=target.size)
    r = score_positions(cells, genes, target, {"model": pred, "cell": worse}, n_boot=200)
    lo, hi = r.ci["mse"]
    assert lo < r["mse"] < hi
    lo, hi = r.ci["mse_minus_floor_cell"]
    assert hi < 0  # model error variance 64 vs 144: clearly better
    assert r.beats("cell") is True
    same = score_positions(cells, genes, target, {"model": pred, "cell": pred + 0.0}, n_boot=50)
    assert same.beats("cell") is False  # identical predictions: difference is exactly 0


def test_flat_and_dict_round_trip():
    cells, genes, target, pred = _positions()
    r = score_positions(cells, genes, target, {"model": pred, "gene_mean": pred + 1, "cell": pred + 0.5}, n_boot=20)
    assert EvalResult.from_dict(r.to_dict()) == r
    flat = r.flat("test_")
    assert flat["test_mse"] == r["mse"] and flat["floor_cell_mse"] == r.floors["cell"]["mse"]
    assert flat["test_mse_vs_floor"] == pytest.approx(r["mse"] / r.floors["gene_mean"]["mse"])
    assert flat["test_mse_vs_floor_cell"] == pytest.approx(r["mse"] / r.floors["cell"]["mse"])
    assert flat["test_ci_mse_low"] == r.ci["mse"][0]


def test_include_zero_split():
    r = score_positions(np.zeros(3, dtype=int), np.arange(3), np.array([0.0, 2.0, 4.0]), {"model": np.array([1.0, 1.0, 4.0])}, by_zero=True)
    assert r["mse_zero"] == pytest.approx(1.0) and r["mse_nonzero"] == pytest.approx(0.5)
    assert r["mre_nonzero"] == pytest.approx(0.25, rel=1e-5)
