"""Outcome tests of the use objectives (issue 27) on tiny planted data, a few seconds each.

- two planted cell groups: after training with the cell-embedding (MVC) objective the <cls>
  embedding separates them (kNN accuracy well above chance), the untrained one does not, and the
  MVC head alone (cell embedding + gene embedding) predicts the planted genes far better than
  their mean;
- planted detection (genes detected in one group only): the zero head's P(zero) tells masked zeros
  from masked non-zeros (AUROC well above 0.5) after a few steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bioformer.config import ModelConfig
from bioformer.data.tokenize import CellDataset, collate
from bioformer.evaluation.grn import auroc
from bioformer.evaluation.use import knn_accuracy
from bioformer.models import build_model

N_SPECIAL = 3  # <pad>, <cls>, <mask>
N_INFORMATIVE = 4  # genes 0-3 high in group 0, genes 4-7 high in group 1; the rest uniform noise


def two_groups(n_cells: int = 240, n_genes: int = 32, detection: bool = False, noise: tuple[int, int] = (1, 50),
               seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binned cells [n_cells, n_genes] of two alternating groups. Levels: the informative genes
    are 45 or 5 by group (+-3), the others uniform in `noise` (wide noise hides the groups from
    an untrained model's random features). With `detection` the informative genes of the other
    group are not detected (0) instead of low."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_cells) % 2
    X = rng.integers(noise[0], noise[1] + 1, size=(n_cells, n_genes)).astype(np.float32)
    high = np.where(group[:, None] == 0, 45, 5)  # [cells, 1]
    jitter = lambda: rng.integers(-3, 4, size=(n_cells, N_INFORMATIVE))  # noqa: E731
    X[:, :N_INFORMATIVE] = np.clip(high + jitter(), 1, 50)
    X[:, N_INFORMATIVE:2 * N_INFORMATIVE] = np.clip(50 - high + jitter(), 1, 50)
    if detection:
        X[:, :2 * N_INFORMATIVE][X[:, :2 * N_INFORMATIVE] < 20] = 0
    return sp.csr_matrix(X), group


def tiny_model(family: str, seed: int, **over) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig.of(model=family, d_model=16, nhead=2, nlayers=2, dropout=0.0, d_z=4, d_opm=4, **over)
    model = build_model(cfg, N_SPECIAL + 32, 0, use_prior=False)
    model.start_at(25.0)
    return model


def fit(model: torch.nn.Module, ds: CellDataset, cells: np.ndarray, steps: int, lr: float = 5e-3) -> None:
    """`steps` Adam steps on batches of 16 training cells (fresh masks every step)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        ds.set_epoch(step)
        b = collate([ds[i] for i in rng.choice(cells, 16, replace=False)])
        loss = model.loss(model(b["gene_ids"], b["values"], b["padding_mask"]), b["target_values"], b["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def cls_embedding(model: torch.nn.Module, ds: CellDataset) -> np.ndarray:
    """<cls> hidden state of every cell, nothing masked. [cells, d_model]"""
    items = [ds[i] for i in range(len(ds))]
    b = collate(items)
    return model.encode(b["gene_ids"], b["target_values"], b["padding_mask"])[:, 0].numpy()


def split(n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    cells = np.arange(n_cells)
    return cells[cells % 4 != 3], cells[cells % 4 == 3]


def dataset(X: sp.csr_matrix, max_len: int | None = None, zero_gene_frac: float = 0.0) -> CellDataset:
    n_genes = X.shape[1]
    return CellDataset(X, np.arange(N_SPECIAL, N_SPECIAL + n_genes), np.arange(X.shape[0]), seed=0,
                       max_len=max_len or n_genes + 1, zero_gene_frac=zero_gene_frac)


SEEDS = {"scgpt": 1, "bioformer": 3}  # torch seeds (init); each family's untrained <cls> is near chance (BioFormer: linear pair mode, the default)


@pytest.mark.parametrize("family", ["scgpt", "bioformer"])
def test_trained_embedding_separates_planted_groups(family):
    """Mutants: the cell embedding left untrained (no optimiser step; `fit` skipped); <cls> read
    from the input embedding instead of the last layer."""
    X, group = two_groups()
    ds = dataset(X)
    train, test = split(X.shape[0])
    model = tiny_model(family, SEEDS[family], mvc_weight=1.0)
    untrained = cls_embedding(model, ds)
    fit(model, ds, train, steps=100)
    trained = cls_embedding(model, ds)
    acc_untrained = knn_accuracy(untrained[train], group[train], untrained[test], group[test])
    acc_trained = knn_accuracy(trained[train], group[train], trained[test], group[test])
    assert acc_trained >= 0.9 > 0.7 >= acc_untrained, (acc_trained, acc_untrained)


@pytest.mark.parametrize("family", ["scgpt", "bioformer"])
def test_mvc_head_reads_the_cell_from_its_embedding(family):
    """The MVC head alone (cell embedding + gene embedding) predicts the planted genes with an
    MSE far below their variance. Mutants: MVC loss weight ignored in MaskedValueModel.loss;
    cell_embedding returns zeros."""
    X, _ = two_groups(noise=(15, 35))  # narrow noise: the planted genes dominate the loss
    ds = dataset(X)
    train, test = split(X.shape[0])
    model = tiny_model(family, 0, mvc_weight=1.0)
    fit(model, ds, train, steps=150)
    model.train()  # the MVC prediction exists in training mode only (dropout is 0)
    with torch.no_grad():
        b = collate([ds[i] for i in test])
        out = model(b["gene_ids"], b["target_values"], b["padding_mask"])
    planted = (b["gene_ids"] >= N_SPECIAL) & (b["gene_ids"] < N_SPECIAL + 2 * N_INFORMATIVE)  # [B, L]
    target = b["target_values"][planted]
    mse = float(((out["mvc_pred"][planted] - target) ** 2).mean())
    assert mse < 0.3 * float(target.var()), (mse, float(target.var()))


def test_zero_head_detects_planted_zeros():
    """The zero head ranks masked zeros above masked non-zeros (AUROC) and is a calibrated
    probability (log loss well below the base rate's). Mutants: the zero head never trained
    (zero_logit detached in ExprDecoder); its Bernoulli loss dropped from MaskedValueModel.loss."""
    X, _ = two_groups(detection=True)
    ds = dataset(X, max_len=17, zero_gene_frac=0.5)
    train, test = split(X.shape[0])
    model = tiny_model("scgpt", 0, explicit_zero_prob=True)
    fit(model, ds, train, steps=60)
    with torch.no_grad():
        b = collate([ds[i] for i in test])
        out = model(b["gene_ids"], b["values"], b["padding_mask"])
    mask = b["mask"]
    is_zero = (b["target_values"][mask] == 0).numpy()
    assert 0.1 < is_zero.mean() < 0.9  # the masks hold zeros and non-zeros
    logit = out["zero_logit"][mask]
    assert auroc(logit.numpy(), is_zero) > 0.8
    rate = float(is_zero.mean())
    base_rate_loss = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    log_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.from_numpy(is_zero).float()))
    assert log_loss < 0.9 * base_rate_loss, (log_loss, base_rate_loss)


@pytest.mark.parametrize("family", ["scgpt", "bioformer"])
def test_loss_is_masked_mse_plus_bernoulli_plus_weighted_mvc(family):
    """The training loss on a fixed output equals the sum computed by hand (numpy): the masked MSE
    of "pred", the Bernoulli NLL of "target is zero" from "zero_logit", and mvc_weight x the masked
    MSE of "mvc_pred"; unmasked positions count for nothing. Mutants: the zero head's Bernoulli loss
    dropped (the expected-value MSE alone also trains the zero logit, so the outcome test above
    does not see it); its target flipped to "non-zero"; the MVC weight ignored; the mask ignored."""
    model = tiny_model(family, 0, explicit_zero_prob=True, mvc_weight=0.7)
    rng = np.random.default_rng(3)
    target = rng.integers(0, 5, size=(3, 6)).astype(np.float32)  # [B, L], zeros included
    target[0, :2] = 0.0
    mask = rng.random((3, 6)) < 0.6  # [B, L]
    mask[0, :3] = True
    out = {k: rng.normal(size=(3, 6)).astype(np.float32) * 2 for k in ("pred", "zero_logit", "mvc_pred")}
    got = float(model.loss({k: torch.from_numpy(v) for k, v in out.items()}, torch.from_numpy(target), torch.from_numpy(mask)))
    t, is_zero = target[mask].astype(np.float64), (target[mask] == 0).astype(np.float64)
    p_zero = 1.0 / (1.0 + np.exp(-out["zero_logit"][mask].astype(np.float64)))
    bce = -np.mean(is_zero * np.log(p_zero) + (1 - is_zero) * np.log(1 - p_zero))
    mse = np.mean((out["pred"][mask] - t) ** 2)
    mvc = np.mean((out["mvc_pred"][mask] - t) ** 2)
    assert 0 < is_zero.mean() < 1  # the masked targets hold zeros and non-zeros
    assert got == pytest.approx(mse + bce + 0.7 * mvc, rel=1e-5), (got, mse, bce, mvc)


def test_ecs_loss_is_the_mean_elastic_similarity_of_the_batch_cells():
    """In training with ecs_weight the model emits each cell's embedding (its <cls> state) and the
    loss adds ecs_weight x mean over distinct cell pairs of 1 - (cos - 0.6)^2, computed here by
    hand. Mutants: the ECS weight ignored; the diagonal (a cell with itself) counted."""
    X, _ = two_groups(n_cells=6)
    ds = dataset(X)
    model = tiny_model("scgpt", 0, ecs_weight=0.5)
    model.train()
    b = collate([ds[i] for i in range(6)])
    with torch.no_grad():
        out = model(b["gene_ids"], b["values"], b["padding_mask"])
        cls = model.encode(b["gene_ids"], b["values"], b["padding_mask"])[:, 0]
    assert torch.equal(out["cell"], cls)
    out["cell"] = torch.from_numpy(np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32))  # varied cosines
    loss = float(model.loss(out, b["target_values"], b["mask"]))
    cell = out["cell"].double().numpy()
    unit = cell / np.linalg.norm(cell, axis=1, keepdims=True)
    cos = (unit @ unit.T)[~np.eye(6, dtype=bool)]
    mse = float(((out["pred"][b["mask"]] - b["target_values"][b["mask"]]) ** 2).mean())
    assert loss == pytest.approx(mse + 0.5 * np.mean(1 - (cos - 0.6) ** 2), rel=1e-5)
