"""Dropout-aware outputs of `Run` (issue 27): the expected value, P(detected), sampled zeros.

The tiny fixture run's model is swapped for an untrained one with a zero head (the outputs'
arithmetic does not depend on training), so no extra run is trained.
"""

from __future__ import annotations

import copy
import dataclasses

import anndata as ad
import numpy as np
import torch

from bioformer import Run
from bioformer.data.preprocess import bins_to_values
from bioformer.inference.outputs import add_imputation
from bioformer.models import build_model
from tests.conftest import H5AD


def _zero_head_run(run_dir, zero_gene_frac: float = 0.0) -> Run:
    run = copy.copy(Run.load(run_dir, device="cpu"))
    cfg = copy.deepcopy(run.config)
    cfg.model = cfg.model.replace(explicit_zero_prob=True)
    cfg.data = dataclasses.replace(cfg.data, zero_gene_frac=zero_gene_frac)
    torch.manual_seed(0)
    run.config = cfg
    run.tokenizer = dataclasses.replace(run.tokenizer, zero_gene_frac=zero_gene_frac)
    run.model = build_model(cfg.model, len(run.vocab), run.vocab.pad_id, use_prior=False).eval()
    run.model.start_at(25.0)  # values in the middle of the bins, so every mapping is exercised
    return run


def test_impute_writes_expected_value_and_p_detected(runs):
    """Mutants: the expected value left as the value if detected; P(zero) written as P(detected)."""
    run = _zero_head_run(runs["scgpt"])
    cells = ad.read_h5ad(H5AD)[:6].copy()
    imp = run.imputation(cells)
    prepared = run.prepare(cells, quiet=True)
    p_detected = 1.0 - imp.zero_prob
    assert 0.0 < p_detected.min() and p_detected.max() < 1.0
    np.testing.assert_allclose(imp.expression, p_detected * imp.value_if_detected, rtol=1e-6)
    value_bins = np.clip(imp.bins / p_detected, 0, run.config.data.n_bins - 1)  # pred = P(det) x value, in bins
    ref = np.stack([bins_to_values(value_bins[i], prepared.bin_edges[i]) for i in range(len(cells))])
    close = value_bins < run.config.data.n_bins - 1  # not clipped
    np.testing.assert_allclose(imp.value_if_detected[close], ref[close], atol=1e-4)
    add_imputation(run, cells, prepared)
    key = "scgpt_imputed"
    genes = [g for g in run.genes if g in cells.var_names]
    cols = [cells.var_names.get_loc(g) for g in genes]
    pos = [run.genes.index(g) for g in genes]
    written = cells.layers[key + "_p_detected"][:, cols].toarray()  # CSR over the input's genes
    np.testing.assert_allclose(written, p_detected[:, pos], rtol=1e-6)


def test_sequences_hold_sampled_unexpressed_genes(runs):
    """A run trained with zero_gene_frac reads cells as it trained: fixed-length sequences with
    at least that share of unexpressed genes, every expressed bin the cell's own."""
    run = _zero_head_run(runs["scgpt"], zero_gene_frac=0.25)
    prepared = run.prepare(ad.read_h5ad(H5AD)[:8].copy(), quiet=True)
    dense = prepared.binned.toarray()
    for i in range(8):
        cols, vals, _ = run._visible(prepared, i)
        assert cols.size == min(len(run.genes), run.max_genes)
        np.testing.assert_array_equal(vals, dense[i, cols])
        assert (vals == 0).sum() >= round(0.25 * cols.size)
