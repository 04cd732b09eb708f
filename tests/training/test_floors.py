"""Floors: known answers on a hand-made matrix, and scored on the model's own masks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bioformer.data.tokenize import CellDataset
from bioformer.training.floors import Floors
from bioformer.training.loop import evaluate


def test_floor_values_on_hand_made_batch():
    X = sp.csr_matrix(np.array([[10, 0, 2], [20, 4, 0], [0, 8, 0], [99, 99, 99]], dtype=np.float32))
    ids = np.array([3, 4, 5])
    f = Floors.fit(X, ids, train_cells=np.array([0, 1, 2]), vocab_size=7)
    assert f.const == pytest.approx((10 + 2 + 20 + 4 + 8) / 5)
    pred = f.predict(torch.tensor([[3, 4, 5, 6]]))
    assert pred["gene_mean"][0, :3].tolist() == pytest.approx([15.0, 6.0, 2.0])  # expressed cells only
    assert pred["gene_mean"][0, 3] == pytest.approx(f.const)  # unseen gene -> constant
    fz = Floors.fit(X, ids, np.array([0, 1, 2]), 7, include_zero_genes=True)
    assert fz.predict(torch.tensor([[3]]))["gene_mean"].item() == pytest.approx(10.0)  # zeros count


class _EchoModel(torch.nn.Module):
    """Predicts the per-gene floor exactly; the evaluator must then report identical metrics."""

    needs_prior = False

    def __init__(self, floors):
        super().__init__()
        self.floors = floors

    def forward(self, gene_ids, values, padding_mask, prior=None):
        return {"pred": self.floors.predict(gene_ids)["gene_mean"]}


def test_floors_are_scored_on_the_models_masks():
    rng = np.random.default_rng(1)
    dense = rng.integers(1, 51, size=(60, 25)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.4] = 0
    X = sp.csr_matrix(dense)
    ids = np.arange(3, 28)
    floors = Floors.fit(X, ids, np.arange(40), vocab_size=28)
    ds = CellDataset(X, ids, np.arange(40, 60), seed=0, fixed_masks=True)
    r = evaluate(_EchoModel(floors), ds, None, batch_size=7, floors=floors)
    # Same predictions on the same positions -> identical numbers. Floors that drew their own
    # masks would differ here.
    for k in ("mse", "mae", "mre", "pearson"):
        assert r[k] == pytest.approx(r[f"floor_gene_mean_{k}"], rel=1e-12)
    # and the positions are exactly the dataset's masked ones
    n_masked = sum(int(ds[i]["mask"].sum()) for i in range(len(ds)))
    manual = np.concatenate([(floors.predict(torch.tensor(ds[i]["gene_ids"]))["gene_mean"].numpy() - ds[i]["target_values"])[ds[i]["mask"]] for i in range(len(ds))])
    assert manual.size == n_masked
    assert r["floor_gene_mean_mse"] == pytest.approx(float(np.mean(manual.astype(np.float64) ** 2)))
