"""Impute's isolated queries: the default path equals asking one gene per pass (exact, both
families and both pair modes), and imputation and embeddings do not depend on batch size or
cell order."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bioformer.inference.run as run_module
from bioformer import Run
from bioformer.models import build_model
from tests.conftest import H5AD


@pytest.fixture(scope="module")
def cells():
    return ad.read_h5ad(H5AD)[:6].copy()


def with_model(run: Run, pair_mode: str | None) -> Run:
    """`run` with its own model, or a freshly initialised BioFormer of `pair_mode` on its vocabulary
    and prior (exactness holds for any weights)."""
    if pair_mode is None:
        return run
    torch.manual_seed(3)
    cfg = run.config.model.replace(pair_mode=pair_mode)
    model = build_model(cfg, len(run.vocab), run.vocab.pad_id, use_prior=True).eval()
    model.start_at(run.config.data.n_bins / 2)  # predictions inside the bin range, which imputation clips to
    return Run(run.reader, model, run.prior, torch.device("cpu"))


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
@pytest.mark.parametrize("name,pair_mode", [("scgpt", None), ("bioformer", "full"), ("bioformer", "linear")])
def test_isolated_passes_equal_one_query_per_pass(runs, cells, monkeypatch, name, pair_mode):
    run = with_model(Run.load(runs[name], device="cpu"), pair_mode)
    few = cells[:3].copy()
    X = few.X.toarray()
    X[0] = 0  # a cell without any count: its genes are asked next to <cls> alone
    few.X = sp.csr_matrix(X)
    fast = run.imputation(few)
    monkeypatch.setattr(run_module, "ISOLATED_PER_PASS", 1)  # every unexpressed gene alone with the context
    alone = run.imputation(few)
    assert not np.isnan(fast.bins).any()
    np.testing.assert_allclose(fast.bins, alone.bins, rtol=1e-5, atol=1e-5)
    # and the isolation matters: the older shared passes differ (the check has power)
    shared = run.imputation(few, isolated=False)
    assert np.abs(shared.bins - fast.bins).max() > 1e-4


@pytest.mark.parametrize("name", ["scgpt", "bioformer"])
def test_outputs_do_not_depend_on_batch_size_or_cell_order(runs, cells, name):
    run = Run.load(runs[name], device="cpu")
    order = np.array([4, 1, 5, 0, 3, 2])
    back = np.argsort(order)
    imp = run.imputation(cells, batch_size=64).bins
    imp2 = run.imputation(cells[order].copy(), batch_size=1).bins[back]
    np.testing.assert_allclose(imp, imp2, rtol=1e-5, atol=1e-5)
    emb = run.embed(cells, batch_size=64)
    emb2 = run.embed(cells[order].copy(), batch_size=2)[back]
    np.testing.assert_allclose(emb, emb2, rtol=1e-5, atol=1e-5)
