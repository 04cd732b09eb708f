"""Backed mode: the same genes, split, sequences, masks and floors as in memory, without the matrix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from bioformer.data import backed as backed_mod
from bioformer.data.pipeline import prepare_data
from bioformer.errors import BioformerError
from bioformer.training.floors import Floors
from bioformer.training.run import run_training
from tests.conftest import H5AD, tiny_config


def prepared_pair(tmp_path, **data):
    cfg = tiny_config(tmp_path, data=data)
    memory = prepare_data(cfg.data, seed=3, quiet=True)
    cfg.data.backed = True
    backed = prepare_data(cfg.data, seed=3, quiet=True)
    return memory, backed


def assert_same_items(a, b, split: str, epoch: int = 1) -> None:
    da, db = a.dataset(split), b.dataset(split)
    da.set_epoch(epoch)
    db.set_epoch(epoch)
    assert len(da) == len(db)
    assert np.array_equal(da.lengths(), db.lengths())
    for i in range(len(da)):
        x, y = da[i], db[i]
        for k in x:
            assert np.array_equal(x[k], y[k]), (split, i, k)


@pytest.mark.parametrize("data", [{}, {"include_zero_genes": True, "max_len": 40}, {"max_cells": 200}])
def test_backed_equals_in_memory(tmp_path, data):
    memory, backed = prepared_pair(tmp_path, **data)
    assert backed.backed is not None and memory.backed is None
    assert backed.adata.X is None  # nothing of the matrix is held
    assert list(backed.adata.var_names) == list(memory.adata.var_names)
    assert list(backed.adata.obs_names) == list(memory.adata.obs_names)
    for k in ("train", "valid", "test"):
        assert np.array_equal(backed.split[k], memory.split[k]), k
    assert_same_items(memory, backed, "train", epoch=2)
    assert_same_items(memory, backed, "test")
    # prior coverage: same genes, TFs and edges; per-cell numbers over the subsample's cells
    for k in ("genes", "tfs", "edges", "edges_activating", "edges_repressing"):
        assert backed.coverage[k] == memory.coverage[k] > 0, k
    assert backed.coverage["cells"] == backed.backed.subsample.n_obs
    fm, fb = Floors.for_data(memory), Floors.for_data(backed)
    assert fb.const == pytest.approx(fm.const, rel=1e-12)
    assert np.allclose(fb.gene_mean.numpy(), fm.gene_mean.numpy(), rtol=1e-6, atol=0)


def test_backed_training_gives_the_in_memory_numbers(tmp_path):
    cfg = tiny_config(tmp_path / "m")
    cfg.train.epochs = 1
    _, memory = run_training(cfg, quiet=True)
    cfg = tiny_config(tmp_path / "b", data={"backed": True})
    cfg.train.epochs = 1
    _, backed = run_training(cfg, quiet=True)
    for k in ("test_mse", "test_pearson", "floor_gene_mean_mse", "floor_const_mse", "best_valid_mse"):
        assert backed[k] == pytest.approx(memory[k], rel=1e-9), k


def test_backed_is_automatic_above_the_threshold(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path).data
    assert prepare_data(cfg, quiet=True).backed is None  # 300 small cells: in memory
    monkeypatch.setattr(backed_mod, "AUTO_BACKED_NNZ", 1000)
    assert prepare_data(cfg, quiet=True).backed is not None
    cfg.backed = False
    assert prepare_data(cfg, quiet=True).backed is None


def test_backed_gene_selection_uses_the_stated_subsample(tmp_path):
    _, sub = prepared_pair(tmp_path, backed_hvg_cells=100)
    assert sub.backed.subsample.n_obs == 100
    assert sub.adata.n_obs == 300 and len(sub.split["train"]) == 240  # all cells are still used


def test_backed_refuses_dense_and_bad_values(tmp_path):
    a = ad.read_h5ad(H5AD)
    dense = a.copy()
    dense.X = dense.X.toarray()
    p = tmp_path / "dense.h5ad"
    dense.write_h5ad(p)
    cfg = tiny_config(tmp_path, data={"data": str(p), "backed": True}).data
    with pytest.raises(BioformerError, match="backed mode reads CSR"):
        prepare_data(cfg, quiet=True)
    neg = a.copy()
    neg.X = neg.X.tocsr()
    neg.X.data[5] = -1.0
    p = tmp_path / "neg.h5ad"
    neg.write_h5ad(p)
    cfg.data = str(p)
    with pytest.raises(BioformerError, match="negative values"):
        prepare_data(cfg, quiet=True)


def test_bin_values_equals_scipy_average_ranks():
    from scipy.stats import rankdata

    from bioformer.data.preprocess import bin_values

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 400):
        for ties in (True, False):
            v = (rng.integers(1, 6, n) if ties else rng.random(n)).astype(np.float32)
            want = np.clip(np.ceil(rankdata(v, method="average") / n * 50), 1, 50)
            assert np.array_equal(bin_values(v, 51), want), (n, ties)


def test_backed_batches_are_the_same_with_loader_workers(tmp_path):
    """Worker processes open their own file handle and give exactly the batches of one process."""
    from torch.utils.data import DataLoader

    from bioformer.data.tokenize import collate, length_grouped_batches

    cfg = tiny_config(tmp_path, data={"backed": True})
    ds = prepare_data(cfg.data, quiet=True).dataset("train")
    ds.set_epoch(1)
    batches = length_grouped_batches(ds.lengths(), 16, 1)[:6]
    one = list(DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=0))
    two = list(DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=2))
    for a, b in zip(one, two, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
