"""Sequences that hold genes a cell does not express (`DataConfig.zero_gene_frac`).

A model that only ever sees expressed genes never has to predict a zero: it learns "the value if
detected" and cannot tell a dropout from a real zero. With `zero_gene_frac` = f > 0 every cell's
sequence has the fixed length L = min(n_genes, max_genes): up to L - round(f * L) of its expressed
genes (a random subsample when it has more) and, for the remaining positions, genes it does not
express, drawn at random. Positions stay in ascending column order, as for expressed-only cells.
One function for training (`CellDataset`) and inference (`Run`), so both build the same sequences.
"""

from __future__ import annotations

import numpy as np


def sequence_length(n_genes: int, max_genes: int) -> int:
    """Gene positions of every sequence when unexpressed genes are sampled (fixed length)."""
    return min(n_genes, max_genes)


def with_unexpressed_genes(
    cols: np.ndarray,  # [n_expressed] the cell's expressed gene columns, ascending
    vals: np.ndarray,  # [n_expressed] their bins (> 0)
    n_genes: int,
    max_genes: int,
    zero_gene_frac: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(columns, bins) of a sequence of `sequence_length` genes: expressed genes subsampled to
    leave round(zero_gene_frac * L) positions (at least) to unexpressed genes (bin 0), which fill
    the rest. Deterministic for a given generator state."""
    length = sequence_length(n_genes, max_genes)
    n_expressed_max = length - int(round(zero_gene_frac * length))
    unexpressed = np.ones(n_genes, dtype=bool)
    unexpressed[cols] = False  # every expressed gene, also those the subsample leaves out
    if cols.size > n_expressed_max:
        pick = np.sort(rng.choice(cols.size, size=n_expressed_max, replace=False))
        cols, vals = cols[pick], vals[pick]
    n_zero = min(length - cols.size, int(unexpressed.sum()))
    candidates = np.flatnonzero(unexpressed)
    zeros = rng.choice(candidates, size=n_zero, replace=False) if n_zero else candidates[:0]
    out_cols = np.concatenate([cols, zeros])
    out_vals = np.concatenate([vals.astype(np.float32), np.zeros(n_zero, dtype=np.float32)])
    order = np.argsort(out_cols, kind="stable")
    return out_cols[order], out_vals[order]
