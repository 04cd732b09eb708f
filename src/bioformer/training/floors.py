"""Trivial predictors every model must beat, scored on exactly the model's masked positions.

- constant: the mean target over the training cells' sequence values;
- per-gene mean: each gene's mean binned value over training cells where it is in the sequence
  (expressed cells in the default mode; all cells in include-zero mode), falling back to the
  constant for genes never seen in training;
- cell-aware: per gene, a ridge regression on four statistics of the cell's *unmasked* input
  bins (the modal bin, its share, the sequence length, the mean bin), fitted on the training
  cells' masked positions. It knows the gene and the cell's overall binning, nothing about which
  other genes are there: with per-cell rank binning these statistics explain much of a masked
  value, so a model that does not beat this floor has learnt nothing about gene-gene structure;
- non-linear ("tree"): one gradient-boosted tree ensemble (sklearn HistGradientBoostingRegressor)
  on the masked gene's training statistics (`GENE_FEATURES`) and the same four cell statistics,
  fitted on a subsample of the training cells' masked positions. Like the cell-aware floor it
  never sees another gene's value, but it can model any interaction of "which gene" and "how is
  this cell binned" (e.g. a gene's bin tracking the cell's modal bin only when it is highly
  expressed), which a per-gene linear rule cannot.

Every floor is fitted on training cells only (`Floors.for_data` takes the training split).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

CELL_FEATURES = ("modal_bin", "modal_share", "length", "mean_bin")
GENE_FEATURES = ("gene_mean", "gene_sd", "gene_log_n")


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


class TreeFloor:
    """Gradient-boosted trees on (GENE_FEATURES of the masked gene, CELL_FEATURES of the cell's
    visible input): a non-linear floor that still never sees another gene's value."""

    def __init__(self, model, gene_stats: np.ndarray, n_bins: int, cls_id: int) -> None:
        self.model = model  # fitted HistGradientBoostingRegressor, or None: predict the constant
        self.gene_stats = torch.from_numpy(np.asarray(gene_stats, dtype=np.float32))  # [V, 3] by vocab id
        self.n_bins, self.cls_id = n_bins, cls_id

    @staticmethod
    def gene_table(gene_ids: np.ndarray, targets: np.ndarray, vocab: int) -> np.ndarray:
        """[vocab, 3] GENE_FEATURES from training positions: mean and sd of the gene's target bins
        and log(1 + its number of positions); genes never seen get the overall mean and sd, n 0."""
        n = np.bincount(gene_ids, minlength=vocab).astype(np.float64)
        s1 = np.bincount(gene_ids, weights=targets, minlength=vocab)
        s2 = np.bincount(gene_ids, weights=targets**2, minlength=vocab)
        mean = np.divide(s1, n, out=np.full(vocab, targets.mean() if targets.size else 0.0), where=n > 0)
        var = np.divide(s2, n, out=np.full(vocab, targets.var() if targets.size else 0.0), where=n > 0) - np.where(n > 0, mean**2, 0.0)
        return np.stack([mean, np.sqrt(np.clip(var, 0, None)), np.log1p(n)], axis=1)

    @classmethod
    def fit(cls, gene_ids: np.ndarray, features: np.ndarray, targets: np.ndarray, n_bins: int, cls_id: int,
            vocab: int | None = None, max_positions: int = 100_000, max_iter: int = 60, seed: int = 0) -> TreeFloor:
        """Fit on training positions: gene_ids [P], cell features [P, 4], target bins [P]. The gene
        statistics use every position; the trees a seeded subsample of `max_positions` (fast)."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        vocab = int(vocab or (gene_ids.max() + 1 if gene_ids.size else 1))
        stats = cls.gene_table(gene_ids, targets, vocab)
        if gene_ids.size < 2:
            return cls(None, stats, n_bins, cls_id)
        rng = np.random.default_rng([seed, 29])
        pick = rng.choice(gene_ids.size, size=max_positions, replace=False) if gene_ids.size > max_positions else np.arange(gene_ids.size)
        X = np.concatenate([stats[gene_ids[pick]], features[pick]], axis=1)  # [P', 7]
        model = HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.15, max_leaf_nodes=31, early_stopping=False, random_state=seed)
        model.fit(X, targets[pick])
        return cls(model, stats, n_bins, cls_id)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, L] predictions at the batch's masked positions (0 elsewhere: never scored)."""
        m = batch["mask"]  # [B, L]
        out = torch.zeros(m.shape, dtype=torch.float32)
        if not bool(m.any()):
            return out
        gene_ids = batch["gene_ids"].cpu()
        ids = gene_ids[m.cpu()].clamp(max=len(self.gene_stats) - 1)
        if self.model is None:
            out[m.cpu()] = self.gene_stats[ids, 0]
            return out
        f = cell_features(gene_ids, batch["values"].cpu(), batch["padding_mask"].cpu(), m.cpu(), self.n_bins, self.cls_id)  # [B, 4]
        cell = f[:, None, :].expand(-1, m.shape[1], -1)[m.cpu()]  # [P, 4]
        X = torch.cat([self.gene_stats[ids], cell], dim=1).double().numpy()  # [P, 7]
        out[m.cpu()] = torch.from_numpy(self.model.predict(X)).float()
        return out


class Floors:
    """`predict(gene_ids, batch)` -> {"const", "gene_mean"[, "cell", "tree"]}: [B, L] floor predictions."""

    def __init__(self, const: float, gene_mean: torch.Tensor, cell: CellFloor | None = None, tree: TreeFloor | None = None) -> None:
        self.const = float(const)
        self.gene_mean = gene_mean  # [V] by vocabulary id
        self.cell = cell
        self.tree = tree

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
        with `train_set` (the training cells only), also the cell-aware and non-linear floors."""
        col_sum, col_n = np.asarray(col_sum, dtype=np.float64), np.asarray(col_n, dtype=np.float64)
        const = col_sum.sum() / max(col_n.sum(), 1.0)
        table = np.full(vocab_size, const, dtype=np.float32)
        seen = col_n > 0
        table[np.asarray(gene_token_ids)[seen]] = col_sum[seen] / col_n[seen]
        cell = tree = None
        if train_set is not None:
            positions = training_positions(train_set, n_bins)
            cell = fit_cell_floor(train_set, table, n_bins, positions)
            tree = TreeFloor.fit(*positions, n_bins=n_bins, cls_id=train_set.cls_id, vocab=vocab_size, seed=getattr(train_set, "seed", 0))
        return cls(const, torch.from_numpy(table), cell, tree)

    @classmethod
    def for_data(cls, data, cell_floor: bool = True) -> Floors:
        """The floors of a PreparedData's training cells (in backed mode from the sums of its
        streaming pass; the matrix is not in memory), with the cell-aware and non-linear floors
        unless asked not."""
        train_set = data.dataset("train") if cell_floor else None
        n_bins = data.config.n_bins
        if data.backed is not None:
            return cls.from_sums(data.backed.col_sum, data.backed.col_n, data.gene_token_ids, len(data.vocab), train_set, n_bins)
        return cls.fit(data.adata.X, data.gene_token_ids, data.split["train"], len(data.vocab), data.config.has_zero_genes, train_set, n_bins)

    def predict(self, gene_ids: torch.Tensor, batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = {
            "const": torch.full(gene_ids.shape, self.const, dtype=torch.float32, device=gene_ids.device),
            "gene_mean": self.gene_mean.to(gene_ids.device)[gene_ids],
        }
        if self.cell is not None and batch is not None:
            out["cell"] = self.cell.predict(batch)
        if self.tree is not None and batch is not None:
            out["tree"] = self.tree.predict(batch)
        return out


def training_positions(train_set, n_bins: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every position of the training cells as a masked target once: fixed masks over
    round(1 / mask_ratio) complementary folds, with the masking the model's inputs have.
    Returns gene ids [P], cell features [P, 4] (of the visible input) and target bins [P]."""
    import copy

    from bioformer.data.tokenize import collate

    ds = copy.copy(train_set)
    ds.fixed_masks = True
    n_folds = max(1, round(1 / ds.mask_ratio)) if ds.mask_ratio > 0 else 1
    genes, feats, targets = [np.zeros(0, np.int64)], [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
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
    return np.concatenate(genes), np.concatenate(feats).astype(np.float64), np.concatenate(targets).astype(np.float64)


def fit_cell_floor(train_set, fallback: np.ndarray, n_bins: int, positions: tuple | None = None) -> CellFloor:
    """Fit the cell-aware floor on every position of the training cells (`training_positions`)."""
    genes, feats, targets = positions if positions is not None else training_positions(train_set, n_bins)
    if genes.size == 0:
        w = np.zeros((len(fallback), 5), dtype=np.float32)
        w[:, 0] = fallback
        return CellFloor(torch.from_numpy(w), torch.zeros(4), torch.ones(4), n_bins, train_set.cls_id)
    return CellFloor.fit(genes, feats, targets, fallback.astype(np.float64), n_bins, train_set.cls_id)
