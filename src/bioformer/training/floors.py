"""Trivial predictors every model must beat, scored on exactly the model's masked positions.

- constant: the mean target over the training cells' sequence values;
- per-gene mean: each gene's mean binned value over training cells where it is in the sequence
  (expressed cells in the default mode; all cells in include-zero mode), falling back to the
  constant for genes never seen in training.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class Floors:
    """`predict(gene_ids)` -> {"const": [B, L], "gene_mean": [B, L]} floor predictions."""

    def __init__(self, const: float, gene_mean: torch.Tensor) -> None:
        self.const = float(const)
        self.gene_mean = gene_mean  # [V] by vocabulary id

    @classmethod
    def fit(
        cls,
        binned: sp.csr_matrix,  # [cells, genes] bins
        gene_token_ids: np.ndarray,  # [genes] vocab ids
        train_cells: np.ndarray,
        vocab_size: int,
        include_zero_genes: bool = False,
    ) -> Floors:
        X = binned[train_cells].tocsr()
        col_sum = np.asarray(X.sum(axis=0)).ravel()
        if include_zero_genes:
            col_n = np.full(X.shape[1], X.shape[0], dtype=np.float64)
        else:
            col_n = np.asarray(X.getnnz(axis=0)).ravel().astype(np.float64)
        return cls.from_sums(col_sum, col_n, gene_token_ids, vocab_size)

    @classmethod
    def from_sums(
        cls,
        col_sum: np.ndarray,  # [genes] sum of bins over the training cells
        col_n: np.ndarray,  # [genes] number of training cells in which the gene is in the sequence
        gene_token_ids: np.ndarray,  # [genes] vocab ids
        vocab_size: int,
    ) -> Floors:
        """The floors from per-gene sums (e.g. accumulated in one streaming pass over the cells)."""
        col_sum, col_n = np.asarray(col_sum, dtype=np.float64), np.asarray(col_n, dtype=np.float64)
        const = col_sum.sum() / max(col_n.sum(), 1.0)
        table = np.full(vocab_size, const, dtype=np.float32)
        seen = col_n > 0
        table[np.asarray(gene_token_ids)[seen]] = col_sum[seen] / col_n[seen]
        return cls(const, torch.from_numpy(table))

    @classmethod
    def for_data(cls, data) -> Floors:
        """The floors of a PreparedData's training cells (in backed mode from the sums of its
        streaming pass; the matrix is not in memory)."""
        if data.backed is not None:
            return cls.from_sums(data.backed.col_sum, data.backed.col_n, data.gene_token_ids, len(data.vocab))
        return cls.fit(data.adata.X, data.gene_token_ids, data.split["train"], len(data.vocab), data.config.include_zero_genes)

    def predict(self, gene_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "const": torch.full(gene_ids.shape, self.const, dtype=torch.float32, device=gene_ids.device),
            "gene_mean": self.gene_mean.to(gene_ids.device)[gene_ids],
        }
