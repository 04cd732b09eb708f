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
        assert r[k] == pytest.approx(r.floors["gene_mean"][k], rel=1e-12)
    # and the positions are exactly the dataset's masked ones
    n_masked = sum(int(ds[i]["mask"].sum()) for i in range(len(ds)))
    manual = np.concatenate([(floors.predict(torch.tensor(ds[i]["gene_ids"]))["gene_mean"].numpy() - ds[i]["target_values"])[ds[i]["mask"]] for i in range(len(ds))])
    assert manual.size == n_masked
    assert r.floors["gene_mean"]["mse"] == pytest.approx(float(np.mean(manual.astype(np.float64) ** 2)))


def test_cell_features_on_a_hand_made_batch():
    from bioformer.training.floors import cell_features

    gene_ids = torch.tensor([[1, 5, 6, 7, 8, 9, 0], [1, 5, 6, 0, 0, 0, 0]])
    values = torch.tensor([[0.0, 3.0, 3.0, -1.0, 7.0, 4.0, -2.0], [0.0, 2.0, -1.0, -2.0, -2.0, -2.0, -2.0]])
    pad = gene_ids == 0
    mask = values == -1.0
    f = cell_features(gene_ids, values, pad, mask, n_bins=11)
    # cell 0 sees bins 3, 3, 7, 4 (<cls>, the masked gene and the pad excluded); 5 gene positions
    assert f[0].tolist() == pytest.approx([3.0, 0.5, 5.0, 17 / 4])
    assert f[1].tolist() == pytest.approx([2.0, 1.0, 2.0, 2.0])


def test_cell_floor_ridge_recovers_an_exact_linear_rule():
    from bioformer.training.floors import CellFloor

    rng = np.random.default_rng(0)
    genes = rng.integers(3, 6, 300)
    feats = rng.normal(size=(300, 4)) * [5, 0.2, 20, 3] + [10, 0.5, 60, 12]
    slope = {3: 1.0, 4: -2.0, 5: 0.5}
    targets = np.array([2.0 + slope[g] * f[3] for g, f in zip(genes, feats, strict=True)])
    fallback = np.full(8, 7.0)
    floor = CellFloor.fit(genes, feats, targets, fallback, n_bins=51, cls_id=1, ridge=0.0)
    x = (torch.tensor(feats, dtype=torch.float32) - floor.mu) / floor.sd
    w = floor.weights[torch.tensor(genes)]
    pred = (w[:, 0] + (w[:, 1:] * x).sum(-1)).numpy()
    assert np.allclose(pred, targets, atol=1e-3)
    assert floor.weights[7].tolist() == pytest.approx([7.0, 0, 0, 0, 0])  # unseen gene: fallback


def _cell_driven_matrix(n_cells=120, n_genes=20, seed=0):
    """Each cell's bins are its own level plus noise: cell statistics predict a masked bin."""
    rng = np.random.default_rng(seed)
    level = rng.integers(5, 45, size=(n_cells, 1))
    dense = np.clip(level + rng.integers(-3, 4, size=(n_cells, n_genes)), 1, 50).astype(np.float32)
    return sp.csr_matrix(dense), np.arange(3, 3 + n_genes)


def _floors_scored(X: sp.csr_matrix, ids: np.ndarray, n_train: int, n_test: int, vocab_size: int):
    """Fit the floors on the first n_train cells, score them on the next n_test (every position)."""
    train = CellDataset(X, ids, np.arange(n_train), seed=0)
    floors = Floors.fit(X, ids, np.arange(n_train), vocab_size=vocab_size, train_set=train)
    test = CellDataset(X, ids, np.arange(n_train, n_train + n_test), seed=0, fixed_masks=True)
    return evaluate(_EchoModel(floors), test, None, batch_size=16, floors=floors, folds=5)


def test_cell_floor_beats_the_per_gene_floor_when_cells_drive_the_bins():
    X, ids = _cell_driven_matrix()
    r = _floors_scored(X, ids, 80, 40, vocab_size=30)
    assert r.floors["cell"]["mse"] < 0.2 * r.floors["gene_mean"]["mse"]
    assert r.floors["cell"]["pearson_gene"] > 0.8


def test_mask_folds_partition_every_cell_and_full_cell_scoring_counts_every_position():
    X, ids = _cell_driven_matrix(n_cells=30)
    ds = CellDataset(X, ids, np.arange(30), seed=3, max_len=16, fixed_masks=True)
    k = 4
    masks = []
    for f in range(k):
        ds.set_fold(f, k)
        masks.append(np.stack([ds[i]["mask"] for i in range(len(ds))]))
    total = np.sum(masks, axis=0)
    assert (total[:, 1:] == 1).all() and (total[:, 0] == 0).all()  # each gene once, never <cls>
    ds.set_fold(0, 1)
    floors = Floors.fit(X, ids, np.arange(30), vocab_size=30)
    r = evaluate(_EchoModel(floors), ds, None, batch_size=8, floors=floors, folds=k)
    assert r.counts["positions"] == 30 * 15 and r.counts["folds"] == k
    assert ds.n_folds == 1  # evaluate restores the dataset's masking


def _nonlinear_cell_matrix(n_cells=160, n_genes=16, seed=0):
    """A gene's bin depends on the cell's level, differently per gene: genes 0-5 (mod 8) track
    it, genes 6 mirror it (50 - level), genes 7 are V-shaped (2 |level - 25|). A per-gene mean
    sees none of it; a per-gene linear rule misses the V; trees on (gene statistics, cell
    statistics) can fit all of it."""
    rng = np.random.default_rng(seed)
    level = rng.integers(5, 45, size=(n_cells, 1)).astype(np.float64)
    kind = np.arange(n_genes) % 8
    rule = np.where(kind < 6, level, np.where(kind == 6, 50 - level, 2 * np.abs(level - 25)))
    dense = rule + np.arange(n_genes) % 3 + rng.integers(-1, 2, size=(n_cells, n_genes))
    return sp.csr_matrix(np.clip(dense, 1, 50).astype(np.float32)), np.arange(3, 3 + n_genes)


def test_tree_floor_beats_the_per_gene_floor_when_a_cell_statistic_matters():
    X, ids = _nonlinear_cell_matrix()
    r = _floors_scored(X, ids, 120, 40, vocab_size=20)
    assert r.floors["tree"]["mse"] < 0.2 * r.floors["gene_mean"]["mse"]
    assert r.floors["tree"]["mse"] < 0.3 * r.floors["cell"]["mse"]  # the V-shaped genes
    assert r.floors["tree"]["pearson_gene"] > 0.8


def _prepared(X, ids, split):
    import anndata as ad

    from bioformer.config import DataConfig
    from bioformer.data.pipeline import PreparedData
    from bioformer.data.tokenize import GeneVocab

    genes = [f"G{i}" for i in range(X.shape[1])]
    adata = ad.AnnData(X=X.copy())
    adata.var_names = genes
    vocab = GeneVocab.from_genes(genes)
    assert list(vocab.token_to_id[g] for g in genes) == list(ids - ids[0] + vocab.token_to_id[genes[0]])
    return PreparedData(adata, vocab, split, None, DataConfig(n_bins=51, max_len=64), seed=0)


def test_floors_are_fitted_on_training_cells_only():
    """Changing only the test cells must not change any floor: a floor fitted on (or with) test
    cells would move here."""
    X, ids = _nonlinear_cell_matrix()
    split = {"train": np.arange(100), "valid": np.arange(100, 120), "test": np.arange(120, 160)}
    other = X.toarray()
    other[120:] = 51 - other[120:]  # test cells: the rule reversed
    a = Floors.for_data(_prepared(X, ids, split))
    b = Floors.for_data(_prepared(sp.csr_matrix(other), ids, split))
    ds = _prepared(X, ids, split).dataset("test")
    from bioformer.data.tokenize import collate

    batch = collate([ds[i] for i in range(len(ds))])
    pa, pb = a.predict(batch["gene_ids"], batch), b.predict(batch["gene_ids"], batch)
    assert set(pa) == {"const", "gene_mean", "cell", "tree"}
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
