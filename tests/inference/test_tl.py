"""bioformer.tl: scanpy-style embed / impute / grn (key_added, copy, provenance in uns)."""

from __future__ import annotations

import anndata as ad
import numpy as np

import bioformer
from bioformer import Run
from tests.conftest import H5AD


def _cells(n: int = 40) -> ad.AnnData:
    return ad.read_h5ad(H5AD)[:n].copy()


def test_embed_in_place_uses_the_family_key_and_records_provenance(runs):
    adata = _cells()
    assert bioformer.tl.embed(adata, runs["scgpt"]) is None
    ref = Run.load(runs["scgpt"], device="cpu").embed(_cells())
    np.testing.assert_allclose(adata.obsm["X_scgpt"], ref, atol=1e-5)
    info = adata.uns["X_scgpt"]
    assert info["model"] == "scgpt" and info["bioformer_version"] == bioformer.__version__
    assert info["run_dir"] == str(runs["scgpt"].resolve())


def test_copy_leaves_the_input_alone_and_key_added_is_honoured(runs):
    adata = _cells()
    run = Run.load(runs["bioformer"], device="cpu")
    out = bioformer.tl.embed(adata, run, key_added="X_mine", copy=True, pooling="mean")
    assert "X_mine" not in adata.obsm and len(adata.uns) == 0
    np.testing.assert_allclose(out.obsm["X_mine"], run.embed(_cells(), pooling="mean"), atol=1e-5)
    assert out.uns["X_mine"]["pooling"] == "mean"


def test_impute_values_follow_the_genes(runs):
    adata = _cells(20)
    run = Run.load(runs["bioformer"], device="cpu")
    bioformer.tl.impute(adata, run)
    expected = run.imputation(_cells(20)).expression  # [cells, run genes]
    col = {g: i for i, g in enumerate(run.genes)}
    shared = [g for g in adata.var_names if g in col][:25]
    got = adata[:, shared].layers["bioformer_imputed"].toarray()
    np.testing.assert_allclose(got, expected[:, [col[g] for g in shared]], atol=1e-5)


def test_grn_returns_scores_and_writes_varp(runs):
    adata = _cells(30)
    scores = bioformer.tl.grn(adata, runs["bioformer"])
    assert set(scores) == {"all"} and "bioformer_pair_scores" in adata.varp
    edges = scores["all"].to_edges(top_k=5)
    top = edges.iloc[0]
    i, j = list(adata.var_names).index(top.source), list(adata.var_names).index(top.target)
    assert np.isclose(adata.varp["bioformer_pair_scores"][i, j], top.score, atol=1e-6)
