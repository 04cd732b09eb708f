"""Outcome tests that each pin one behaviour a named mutant breaks (issue #22, point 7).

Each test compares against an independent reference or a planted effect, so that the mutant
named in its docstring fails it (see results/bad_input/README.md for the mutant runs).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from bioformer.data.pipeline import prepare_data
from bioformer.data.tokenize import split_cells, split_cells_by_group
from bioformer.inference.outputs import add_imputation, add_pair_scores
from bioformer.inference.run import Run
from bioformer.training.evaluate import evaluate_run
from bioformer.training.floors import Floors, fit_cell_floor
from bioformer.training.run import run_training
from tests.bad_input_cases import prior_run
from tests.conftest import H5AD, tiny_config

IMPUTED_KEY, PAIR_KEY = "bioformer_imputed", "bioformer_pair_scores"  # a BioFormer run's default keys


@functools.lru_cache(maxsize=1)
def _prepared():
    cfg = tiny_config(Path("/nonexistent"))
    return prepare_data(cfg.data, seed=0, need_prior=True, quiet=True)


# ------------------------------------------------------------------ floors on the training cells
def test_per_gene_floor_is_the_training_cells_mean():
    """Mutant: Floors.for_data fits the per-gene floor on split["test"]."""
    data = _prepared()
    floors = Floors.for_data(data, cell_floor=False)
    X = data.adata.X[data.split["train"]].toarray()  # [train cells, genes] bins
    seen = (X > 0).sum(0)
    ref = X.sum(0)[seen > 0] / seen[seen > 0]
    got = floors.gene_mean.numpy()[data.gene_token_ids[seen > 0]]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_cell_floor_is_fitted_on_the_training_cells():
    """Mutant: Floors.for_data fits the cell-aware floor on data.dataset("test")."""
    data = _prepared()
    floors = Floors.for_data(data)
    table = floors.gene_mean.numpy()
    on_train = fit_cell_floor(data.dataset("train"), table, data.config.n_bins).weights
    on_test = fit_cell_floor(data.dataset("test"), table, data.config.n_bins).weights
    assert torch.equal(floors.cell.weights, on_train)
    assert not torch.allclose(on_train, on_test)  # the check can tell the two apart


# ------------------------------------------------------------------ splits never share a cell
@pytest.mark.parametrize("n", [50, 51, 300, 1001])
def test_split_cells_partitions_the_cells(n):
    """Mutant: a training cell leaks into the test set (overlapping slices of the permutation)."""
    s = split_cells(n, 0.1, 0.1, seed=3)
    parts = [set(s[k].tolist()) for k in ("train", "valid", "test")]
    assert sum(map(len, parts)) == n and set.union(*parts) == set(range(n))
    assert not (parts[0] & parts[2]) and not (parts[0] & parts[1]) and not (parts[1] & parts[2])


def test_transfer_split_keeps_every_test_group_cell_out_of_training():
    groups = np.array(["ctrl", "stim"] * 60)
    s = split_cells_by_group(groups, ["stim"], 0.1, seed=0)
    assert set(s["test"].tolist()) == set(np.flatnonzero(groups == "stim").tolist())
    assert not set(s["train"].tolist()) & set(s["test"].tolist())
    assert not set(s["valid"].tolist()) & set(s["test"].tolist())


def test_prepared_split_is_disjoint():
    data = _prepared()
    tr, va, te = (set(data.split[k].tolist()) for k in ("train", "valid", "test"))
    assert not (tr & te) and not (tr & va) and not (va & te)
    assert len(tr) + len(va) + len(te) == data.adata.n_obs


# ------------------------------------------------------------------ the loss reads masked positions only
def test_loss_is_the_mse_over_masked_positions_only():
    """Mutant: the loss is computed over unmasked (or all) positions."""
    from bioformer.config import ModelConfig
    from bioformer.models import build_model

    for family in ("bioformer", "scgpt"):
        model = build_model(ModelConfig.of(model=family, d_model=8, nhead=2, nlayers=1, d_z=4, d_opm=4), 20, use_prior=False)
        g = torch.Generator().manual_seed(0)
        pred, target = torch.rand(3, 7, generator=g) * 10, torch.rand(3, 7, generator=g) * 10
        mask = torch.rand(3, 7, generator=g) < 0.3
        mask[0, 0] = True
        ref = ((pred - target)[mask] ** 2).mean()
        assert torch.allclose(model.loss({"pred": pred}, target, mask), ref)
        moved = pred.masked_fill(~mask, 1e4)  # predictions at unmasked positions must not count
        assert torch.allclose(model.loss({"pred": moved}, target, mask), ref)


# ------------------------------------------------------------------ evaluation is in eval mode
def test_evaluation_with_dropout_is_deterministic_and_equals_the_summary():
    """Mutant: evaluate() leaves the model in train mode (the run has dropout 0.1: scores would
    vary between calls and differ from summary.json)."""
    run = prior_run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["model"]["mse"] > 0
    from bioformer.config import RunConfig

    assert RunConfig.load(run / "config.yaml").model.dropout > 0
    a = evaluate_run(run, quiet=True)[0]
    b = evaluate_run(run, quiet=True)[0]
    np.testing.assert_equal(a.model, b.model)  # NaN == NaN here
    assert a.model["mse"] == summary["test"]["model"]["mse"]


# ------------------------------------------------------------------ the restored weights are the best epoch's
def test_restored_weights_are_the_best_epoch(tmp_path, monkeypatch):
    """Validation MSE planted as 3, 1, 2 over three epochs: best epoch 2; the test metrics in
    summary.json come from epoch 2's weights (those in model.safetensors), not the last ones.
    Mutants: no restore after training; best weights kept every epoch; best chosen by '>'."""
    from bioformer.training import loop

    planted = iter([3.0, 1.0, 2.0])
    real = loop.evaluate

    def fake(*args, **kwargs):
        result = real(*args, **kwargs)
        result.model["mse"] = next(planted)
        return result

    monkeypatch.setattr(loop, "evaluate", fake)
    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.warmup_steps = 3, 0
    out, summary = run_training(cfg, quiet=True)
    monkeypatch.setattr(loop, "evaluate", real)
    assert summary["best_epoch"] == 2 and summary["best_valid_mse"] == 1.0
    again = evaluate_run(out, quiet=True)[0]  # model.safetensors: the best weights
    assert again.model["mse"] == summary["test"]["model"]["mse"]


# ------------------------------------------------------------------ outputs follow the genes
def _with_outputs(run: Run, adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
    cells = run.prepare(adata, layer=layer, quiet=True)
    add_imputation(run, adata, cells)
    add_pair_scores(run, adata, cells)
    return adata


def test_impute_and_grn_values_follow_the_genes_when_the_input_order_differs():
    """Mutant: outputs written in run-gene order instead of the input's (values under the wrong
    genes once the input's var order differs from the run's)."""
    run = Run.load(prior_run())
    a = _with_outputs(run, ad.read_h5ad(H5AD))
    perm = np.random.default_rng(0).permutation(a.n_vars)
    b = _with_outputs(run, ad.read_h5ad(H5AD)[:, perm].copy())
    assert list(b.var_names) == list(a.var_names[perm])
    imp_a, imp_b = a.layers[IMPUTED_KEY].toarray(), b.layers[IMPUTED_KEY].toarray()
    assert (imp_a != 0).sum() > 1000
    np.testing.assert_allclose(imp_b, imp_a[:, perm], rtol=1e-5, atol=1e-5)
    pa, pb = a.varp[PAIR_KEY].toarray(), b.varp[PAIR_KEY].toarray()
    np.testing.assert_allclose(pb, pa[np.ix_(perm, perm)], rtol=1e-5, atol=1e-6)


def test_layer_raw_with_more_genes_than_x_writes_onto_x_genes():
    """scanpy's layout after HVG subsetting: raw holds all genes, X a subset. Imputation from raw
    lands on X's genes with the values a full file gives for them."""
    run = Run.load(prior_run())
    full = _with_outputs(run, ad.read_h5ad(H5AD))
    src = ad.read_h5ad(H5AD)
    src.raw = src.copy()
    keep = np.arange(0, src.n_vars, 2)
    sub = src[:, keep].copy()
    sub.X = np.ones(sub.shape, dtype=np.float32)  # X is something else entirely: only raw may be read
    sub = _with_outputs(run, sub, layer="raw")
    assert sub.layers[IMPUTED_KEY].shape == (src.n_obs, len(keep))
    np.testing.assert_allclose(sub.layers[IMPUTED_KEY].toarray(), full.layers[IMPUTED_KEY].toarray()[:, keep], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sub.varp[PAIR_KEY].toarray(), full.varp[PAIR_KEY].toarray()[np.ix_(keep, keep)], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ held-out GRN candidates
def test_heldout_scoring_never_counts_the_given_prior_edges(tmp_path):
    """A score matrix that is 1 exactly on the prior edges the model was given (z) and 0
    elsewhere carries no information about the held-out edges: its AUPRC is the random level.
    Mutant: the given edges stay candidates (they would rank first as false positives)."""
    from bioformer.data.pipeline import drop_edges
    from bioformer.data.prior import read_edge_file
    from bioformer.evaluation.grn import edges_matrix, score_run
    from tests.conftest import PRIOR_CSV

    run = prior_run()
    genes = json.loads((run / "vocab.json").read_text())["genes"]
    heldout = pd.read_csv(run / "heldout_edges.csv")
    given = drop_edges(read_edge_file(PRIOR_CSV), heldout)
    chip = tmp_path / "chip.json"
    chip.write_text(json.dumps({"NOTAGENE K562": ["NOTAGENE2"]}))
    table = score_run(run, {"given": edges_matrix(given, genes)}, chip_path=chip)
    row = table[(table["truth"] == "heldout prior edges") & (table["predictor"] == "given")].iloc[0]
    assert row["n_true"] > 0
    assert row["auprc"] == pytest.approx(row["random"], rel=1e-9)


# ------------------------------------------------------------------ run files follow the umask
def test_atomic_writes_follow_the_umask(tmp_path):
    from bioformer.inference.outputs import write_h5ad_atomic
    from bioformer.training.checkpoint import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_h5ad_atomic(ad.AnnData(np.ones((2, 2), dtype=np.float32)), tmp_path / "a.h5ad")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.h5ad").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_a_run_is_marked_checksummed_and_readable_by_others():
    from bioformer.training.rundir import RUN_MARKER, sha256_file

    run = prior_run()
    assert (run / RUN_MARKER).is_file()
    files = json.loads((run / "summary.json").read_text())["files"]
    assert set(files) == {"config.yaml", "split.npz", "vocab.json", "heldout_edges.csv", "model.safetensors"}
    assert all(sha256_file(run / f) == h for f, h in files.items())
    mask = os.umask(0)
    os.umask(mask)
    if mask == 0o022:  # the usual umask: every run file 0644 (mkstemp alone gave 0600)
        assert {f: (run / f).stat().st_mode & 0o777 for f in files} == {f: 0o644 for f in files}


def test_overwrite_replaces_an_existing_output_but_never_the_input(tmp_path, capsys):
    """--overwrite is what lets embed replace the user's existing file (and only that)."""
    import shutil

    from bioformer.cli import main

    inp, old = tmp_path / "in.h5ad", tmp_path / "old.h5ad"
    shutil.copy(H5AD, inp)
    old.write_text("an older result")
    before = inp.read_bytes()
    argv = ["-q", "embed", str(prior_run()), "--data", str(inp), "--out", str(old), "--no-progress"]
    assert main(argv) == 2 and old.read_text() == "an older result"
    assert main([*argv, "--overwrite"]) == 0
    assert "X_" in "".join(ad.read_h5ad(old).obsm.keys())
    assert inp.read_bytes() == before
