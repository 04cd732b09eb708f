"""Per-pair sums over cells: `PairAccumulator` / `CandidateAccumulator` and their result,
`PairScores`. Pure numpy/torch with no knowledge of run directories.

Pair scores come from a model as [B, r, r] in query/key layout ([b, i, j] = query gene i, key
gene j) and are stored in that layout: `scores[s, t]` sits where BioFormer's z holds the pair
(s, t), whose initial value is the prior's code for the edge s -> t; so row = source, column =
target, the layout of the prior (and of held-out prior edges). For scGPT, row s is the attending
gene and column t the gene it attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class PairScores:
    """Gene x gene scores of one run over its genes, averaged over cells.

    `scores[s, t]`: mean over the cells whose sequence holds both genes of the per-cell score of
    the pair (s, t) (source s -> target t in the prior's layout) (0 where `n_cells` is 0); `n_cells[s, t]`: how many cells that is.
    """

    genes: list[str]
    scores: np.ndarray  # [n_genes, n_genes] float64
    n_cells: np.ndarray  # [n_genes, n_genes] int64
    readout: str

    def ranked(self) -> np.ndarray:
        """[n_genes, n_genes] scores for ranking: NaN (no opinion, ranked last by the GRN metrics)
        where no cell held both genes, instead of a 0 that would sit mid-ranking."""
        return np.where(self.n_cells > 0, self.scores, np.nan)

    def to_edges(self, top_k: int | None = None, min_cells: int = 1) -> pd.DataFrame:
        """Ranked edge list (source, target, score, n_cells): off-diagonal pairs seen in at
        least `min_cells` cells, highest score first (ties by gene order), at most `top_k` rows."""
        s, t = np.nonzero((self.n_cells >= max(1, min_cells)) & ~np.eye(len(self.genes), dtype=bool))
        score = self.scores[s, t]
        order = np.lexsort((t, s, -score))
        if top_k is not None:
            order = order[:top_k]
        g = np.asarray(self.genes, dtype=object)
        return pd.DataFrame({
            "source": g[s[order]], "target": g[t[order]],
            "score": score[order], "n_cells": self.n_cells[s[order], t[order]],
        })


class PairAccumulator:
    """Running sums of per-cell pair scores over a fixed gene set, one batch at a time.

    Memory is two [n_genes, n_genes] arrays, whatever the number of cells.
    """

    def __init__(self, n_genes: int) -> None:
        self.n = n_genes
        self.total = torch.zeros(n_genes * n_genes, dtype=torch.float64)
        self.count = torch.zeros(n_genes * n_genes, dtype=torch.int64)

    def add(
        self,
        scores: torch.Tensor,  # [B, r, r] query/key layout
        columns: torch.Tensor,  # [B, r] gene column of each position, -1 for <cls> and pads
    ) -> None:
        scores = scores.detach().to("cpu", torch.float64)
        columns = columns.cpu()
        valid = columns >= 0  # [B, r]
        pair_ok = valid[:, :, None] & valid[:, None, :]  # [B, r(query), r(key)]
        flat = columns[:, :, None] * self.n + columns[:, None, :]  # [B, r, r]: row i, column j
        idx = flat[pair_ok]
        self.total += torch.bincount(idx, weights=scores[pair_ok], minlength=self.n * self.n)
        self.count += torch.bincount(idx, minlength=self.n * self.n)

    def result(self, genes: list[str], readout: str) -> PairScores:
        count = self.count.view(self.n, self.n).numpy()
        total = self.total.view(self.n, self.n).numpy()
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return PairScores(list(genes), mean, count.copy(), readout)


class CandidateAccumulator:
    """Running per-pair sums of several named readouts over a fixed gene set (one shared count)."""

    def __init__(self, n_genes: int) -> None:
        self.n = n_genes
        self.totals: dict[str, torch.Tensor] = {}
        self.count = torch.zeros(n_genes * n_genes, dtype=torch.int64)

    def add(self, readouts: dict[str, torch.Tensor], columns: torch.Tensor) -> None:
        """readouts: name -> [B, r, r] (query/key layout); columns [B, r]: gene column, -1 for
        <cls> and pads."""
        columns = columns.cpu()
        valid = columns >= 0  # [B, r]
        pair_ok = valid[:, :, None] & valid[:, None, :]  # [B, r, r]
        idx = (columns[:, :, None] * self.n + columns[:, None, :])[pair_ok]  # [P]
        self.count += torch.bincount(idx, minlength=self.n * self.n)
        for name, s in readouts.items():
            w = s.detach().to("cpu", torch.float64)[pair_ok]
            self.totals[name] = self.totals.get(name, torch.zeros(self.n * self.n, dtype=torch.float64)) + torch.bincount(idx, weights=w, minlength=self.n * self.n)

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(name -> [G, G] mean over the cells holding both genes, NaN where no cell does, i.e.
        no opinion: ranked last), and the [G, G] cell counts."""
        count = self.count.view(self.n, self.n).numpy()
        out = {}
        for name, total in self.totals.items():
            t = total.view(self.n, self.n).numpy()
            out[name] = np.divide(t, count, out=np.full_like(t, np.nan), where=count > 0)
        return out, count.copy()
