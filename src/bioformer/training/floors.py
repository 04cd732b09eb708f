"""Trivial predictors every model must beat, scored on exactly the model's masked positions.

- constant: the mean target over the training cells' sequence values;
- per-gene mean: each gene's mean binned value over training cells where it is in the sequence
  (expressed cells in the default mode; all cells in include-zero mode), falling back to the
  constant for genes never seen in training;
- cell-aware: per gene, a ridge regression on four statistics of the cell's *unmasked* input
  bins (the modal bin, its share, the sequence length, the mean bin), fitted on the training
  cells' masked positions. It knows the gene and the cell's overall binning, nothing about which
  other genes are there: with per-cell rank binning these statistics explain much of a masked
  value, so a model that does not beat this floor has learnt nothing about gene-gene structure.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

CELL_FEATURES = ("modal_bin", "modal_share", "length", "mean_bin")


def cell_features(gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor, mask: torch.Tensor, n_bins: int, cls_id: int = 1) -> torch.Tensor:
    """Statistics of each cell's unmasked input bins: [B, L] batch -> [B, 4] (CELL_FEATURES).

    Only positions the model sees as values count (not pads, not masked, not <cls>); the length
    counts every gene position, masked ones included (the model sees those gene ids too).
    """
    genes = ~padding_mask & (gene_ids != cls_id)  # [B, L]
    seen = genes & ~mask  # [B, L]
    bins = values.round().long().clamp(0, n_bins - 1) * seen  # [B, L]
    counts = torch.zeros(values.shape[0], n_bins, dtype=torch.float32).scatter_add_(1, bins, seen.float())  # [B, n_bins]
    n_seen = seen.sum(1).clamp(min=1).float()  # [B]
    modal = counts.argmax(1)  # [B], first (lowest) bin on ties
    share = counts.gather(1, modal[:, None])[:, 0] / n_seen
    mean = (values.float() * seen).sum(1) / n_seen
    return torch.stack([modal.float(), share, genes.sum(1).float(), mean], dim=1)  # [B, 4]


class CellFloor:
    """Per-gene ridge on `cell_features`: pred = w[g, 0] + w[g, 1:] . standardised features."""

    def __init__(self, weights: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor, n_bins: int, cls_id: int) -> None:
        self.weights = weights  # [V, 1 + 4]
        self.mu, self.sd = mu, sd  # [4]
        self.n_bins, self.cls_id = n_bins, cls_id

    @classmethod
    def fit(cls, gene_ids: np.ndarray, features: np.ndarray, targets: np.ndarray, fallback: np.ndarray, n_bins: int, cls_id: int, ridge: float = 10.0) -> CellFloor:
        """Closed-form ridge per gene from masked positions: gene_ids [P], features [P, 4],
        targets [P]. The intercept is not penalised; genes never seen keep `fallback` [V]."""
        vocab = len(fallback)
        mu = features.mean(0)
        sd = features.std(0)
        sd[sd == 0] = 1.0
        X = np.concatenate([np.ones((len(features), 1)), (features - mu) / sd], axis=1)  # [P, 5]
        XtX = np.zeros((vocab, 5, 5))
        Xty = np.zeros((vocab, 5))
        np.add.at(XtX, gene_ids, X[:, :, None] * X[:, None, :])
        np.add.at(Xty, gene_ids, X * targets[:, None])
        penalty = np.diag([0.0, ridge, ridge, ridge, ridge]) + 1e-9 * np.eye(5)
        unseen = XtX[:, 0, 0] == 0
        XtX[unseen] = np.eye(5)
        Xty[unseen, 0] = fallback[unseen]
        w = np.linalg.solve(XtX + penalty, Xty[:, :, None])[:, :, 0]  # [V, 5]
        return cls(torch.from_numpy(w).float(), torch.from_numpy(mu).float(), torch.from_numpy(sd).float(), n_bins, cls_id)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, L] predictions for every position of the batch (only masked ones are scored)."""
        f = cell_features(batch["gene_ids"], batch["values"], batch["padding_mask"], batch["mask"], self.n_bins, self.cls_id)
        x = (f - self.mu) / self.sd  # [B, 4]
        w = self.weights[batch["gene_ids"]]  # [B, L, 5]
        return w[..., 0] + (w[..., 1:] * x[:, None, :]).sum(-1)


class Floors:
    """`predict(gene_ids, batch)` -> {"const", "gene_mean"[, "cell"]}: [B, L] floor predictions."""

    def __init__(self, const: float, gene_mean: torch.Tensor, cell: CellFloor | None = None) -> None:
        self.const = float(const)
        self.gene_mean = gene_mean  # [V] by vocabulary id
        self.cell = cell

    @classmethod
    def fit(
        cls,
        binned: sp.csr_matrix,  # [cells, genes] bins
        gene_token_ids: np.ndarray,  # [genes] vocab ids
        train_cells: np.ndarray,
        vocab_size: int,
        include_zero_genes: bool = False,
        train_set=None,  # CellDataset of the training cells: fits the cell-aware floor
        n_bins: int = 51,
    ) -> Floors:
        X = binned[train_cells].tocsr()
        col_sum = np.asarray(X.sum(axis=0)).ravel()
        if include_zero_genes:
            col_n = np.full(X.shape[1], X.shape[0], dtype=np.float64)
        else:
            col_n = np.asarray(X.getnnz(axis=0)).ravel().astype(np.float64)
        return cls.from_sums(col_sum, col_n, gene_token_ids, vocab_size, train_set, n_bins)

    @classmethod
    def from_sums(
        cls,
        col_sum: np.ndarray,  # [genes] sum of bins over the training cells
        col_n: np.ndarray,  # [genes] number of training cells in which the gene is in the sequence
        gene_token_ids: np.ndarray,  # [genes] vocab ids
        vocab_size: int,
        train_set=None,
        n_bins: int = 51,
    ) -> Floors:
        """The floors from per-gene sums (e.g. accumulated in one streaming pass over the cells);
        with `train_set`, also the cell-aware floor."""
        col_sum, col_n = np.asarray(col_sum, dtype=np.float64), np.asarray(col_n, dtype=np.float64)
        const = col_sum.sum() / max(col_n.sum(), 1.0)
        table = np.full(vocab_size, const, dtype=np.float32)
        seen = col_n > 0
        table[np.asarray(gene_token_ids)[seen]] = col_sum[seen] / col_n[seen]
        cell = fit_cell_floor(train_set, table, n_bins) if train_set is not None else None
        return cls(const, torch.from_numpy(table), cell)

    @classmethod
    def for_data(cls, data, cell_floor: bool = True) -> Floors:
        """The floors of a PreparedData's training cells (in backed mode from the sums of its
        streaming pass; the matrix is not in memory), with the cell-aware floor unless asked not."""
        train_set = data.dataset("train") if cell_floor else None
        n_bins = data.config.n_bins
        if data.backed is not None:
            return cls.from_sums(data.backed.col_sum, data.backed.col_n, data.gene_token_ids, len(data.vocab), train_set, n_bins)
        return cls.fit(data.adata.X, data.gene_token_ids, data.split["train"], len(data.vocab), data.config.include_zero_genes, train_set, n_bins)

    def predict(self, gene_ids: torch.Tensor, batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = {
            "const": torch.full(gene_ids.shape, self.const, dtype=torch.float32, device=gene_ids.device),
            "gene_mean": self.gene_mean.to(gene_ids.device)[gene_ids],
        }
        if self.cell is not None and batch is not None:
            out["cell"] = self.cell.predict(batch)
        return out


def fit_cell_floor(train_set, fallback: np.ndarray, n_bins: int, batch_size: int = 256) -> CellFloor:
    """Fit the cell-aware floor on every position of the training cells: fixed masks over
    round(1 / mask_ratio) complementary folds, so each observed value is a target once, with the
    same masking the model's inputs have."""
    import copy

    from bioformer.data.tokenize import collate

    ds = copy.copy(train_set)
    ds.fixed_masks = True
    n_folds = max(1, round(1 / ds.mask_ratio)) if ds.mask_ratio > 0 else 1
    genes, feats, targets = [], [], []
    order = np.argsort(ds.lengths(), kind="stable")
    for fold in range(n_folds):
        ds.set_fold(fold, n_folds)
        for start in range(0, len(ds), batch_size):
            batch = collate([ds[int(i)] for i in order[start:start + batch_size]])
            m = batch["mask"]
            f = cell_features(batch["gene_ids"], batch["values"], batch["padding_mask"], m, n_bins, ds.cls_id)  # [B, 4]
            genes.append(batch["gene_ids"][m].numpy())
            feats.append(f[:, None, :].expand(-1, m.shape[1], -1)[m].numpy())
            targets.append(batch["target_values"][m].numpy())
    if not genes or sum(g.size for g in genes) == 0:
        w = np.zeros((len(fallback), 5), dtype=np.float32)
        w[:, 0] = fallback
        return CellFloor(torch.from_numpy(w), torch.zeros(4), torch.ones(4), n_bins, ds.cls_id)
    return CellFloor.fit(np.concatenate(genes), np.concatenate(feats).astype(np.float64), np.concatenate(targets).astype(np.float64), fallback.astype(np.float64), n_bins, ds.cls_id)


def floor_names(floors: Floors | None) -> list[str]:
    """The floors a Floors object predicts, in table order (weakest first)."""
    if floors is None:
        return []
    return ["const", "gene_mean"] + (["cell"] if floors.cell is not None else [])

