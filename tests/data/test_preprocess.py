"""Preprocessing: binning properties, input-kind detection, gene selection with the prior."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from bioformer.data.load import load_anndata
from bioformer.data.preprocess import bin_cells, bins_to_values, detect_input_kind, preprocess
from bioformer.data.prior import read_edge_file
from bioformer.errors import BioformerError
from tests.conftest import H5AD, PRIOR_CSV


@pytest.fixture(scope="module")
def counts():
    return load_anndata(H5AD, quiet=True)


def test_bins_cover_range_and_are_monotone_per_cell(counts):
    out = preprocess(counts, n_hvg=200, n_bins=51, quiet=True)
    X, raw = out.X.tocsr(), None
    assert X.data.min() >= 1 and X.data.max() <= 50
    assert np.all(np.mod(X.data, 1) == 0)
    # Same sparsity as the log-normalised values, and monotone within each cell.
    logged = counts[:, out.var_names].copy()
    sc.pp.normalize_total(logged, target_sum=1e4)  # per-cell scale: ranks equal those of the raw counts
    raw = logged.X.tocsr()
    for i in range(0, X.shape[0], 37):
        b = X[i].toarray().ravel()
        v = raw[i].toarray().ravel()
        assert np.array_equal(b > 0, v > 0)
        nz = v > 0
        order = np.argsort(v[nz], kind="stable")
        assert np.all(np.diff(b[nz][order]) >= 0)
        assert b[nz].max() == 50  # the top value of a cell always reaches the top bin


def test_binning_spreads_distinct_values_evenly():
    X = sp.csr_matrix(np.arange(1, 101, dtype=np.float32)[None, :])
    binned, edges = bin_cells(X, n_bins=11)
    counts = np.bincount(binned.data.astype(int), minlength=11)
    assert counts[0] == 0 and np.all(counts[1:] == 10)
    assert edges.shape == (1, 11) and edges[0, 0] == 1 and edges[0, -1] == 100
    # bins map back into their own value range
    back = bins_to_values(np.array([0, 1, 10]), edges[0])
    assert back[0] == 0 and 1 <= back[1] <= 11 and 90 <= back[2] <= 100


def test_ties_share_a_bin():
    X = sp.csr_matrix(np.array([[1, 1, 1, 5]], dtype=np.float32))
    binned, _ = bin_cells(X, n_bins=51)
    assert len(set(binned.data[:3])) == 1 and binned.data[3] == 50


def test_logged_input_detected_and_not_renormalised(caplog):
    pbmc = sc.datasets.pbmc68k_reduced()
    raw = ad.AnnData(X=sp.csr_matrix(pbmc.raw.X), obs=pbmc.obs)
    raw.var_names = pbmc.raw.var_names
    assert detect_input_kind(raw.X) == "logged"
    with caplog.at_level("INFO", logger="bioformer"):
        out = preprocess(raw, n_hvg=100, quiet=False)
    assert "log-normalised already" in caplog.text
    assert out.n_vars == 100 and out.uns["input_kind"] == "logged"


def test_no_genes_left_is_a_clear_error(counts):
    with pytest.raises(BioformerError, match="no genes left after removing the 1000 genes with fewer than"):
        preprocess(counts, min_counts=10**9, quiet=True)


def test_logged_input_with_empty_genes_filters_them(counts):
    """A log-normalised file subset to some cells keeps genes that are zero in all of them; they
    are removed like on the counts path (scanpy's HVG binning failed on them: "Bin edges must be unique")."""
    logged = counts.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    logged = logged[:60].copy()
    n_empty = int((np.asarray((logged.X > 0).sum(axis=0)).ravel() == 0).sum())
    assert n_empty > 0
    out = preprocess(logged, n_hvg=logged.n_vars, quiet=True)  # every kept gene is selected
    assert out.uns["input_kind"] == "logged"
    assert out.n_vars == logged.n_vars - n_empty
    assert np.all(np.asarray((out.X > 0).sum(axis=0)).ravel() > 0)
    assert preprocess(logged, n_hvg=64, quiet=True).n_vars == 64  # cell_ranger HVG now works


@pytest.mark.parametrize("n_cells", [1, 2, 5, 20])
def test_too_few_cells_stop_before_scanpy(counts, n_cells, monkeypatch):
    def never(*a, **k):
        raise AssertionError("scanpy was called")

    monkeypatch.setattr(sc.pp, "highly_variable_genes", never)
    monkeypatch.setattr(sc.pp, "filter_genes", never)
    with pytest.raises(BioformerError, match=f"only {n_cells} cell\\(s\\); training needs at least 50"):
        preprocess(counts[:n_cells].copy(), quiet=True)


def test_hvg_plus_prior_keeps_tfs_that_hvg_drops(counts):
    edges = read_edge_file(PRIOR_CSV)
    plain = preprocess(counts, n_hvg=100, quiet=True)
    aware = preprocess(counts, n_hvg=100, genes="hvg+prior", prior_edges=edges, max_prior_genes=50, quiet=True)
    tfs = set(edges["source"])
    dropped_tfs = (tfs & set(aware.var_names)) - set(plain.var_names)
    assert dropped_tfs, "hvg+prior should add TFs that HVG selection dropped"
    assert set(plain.var_names) <= set(aware.var_names)
    assert (aware.var["source"] == "prior").sum() <= 50
    # every added gene is detected in >= 1% of cells
    added = aware.var_names[aware.var["source"] == "prior"]
    det = np.asarray((counts[:, added].X > 0).mean(axis=0)).ravel()
    assert np.all(det >= 0.01)
