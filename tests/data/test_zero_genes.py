"""Sequences with unexpressed genes (`zero_gene_frac`): fixed length, true zeros, expressed bins kept."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bioformer.data.tokenize import CellDataset
from bioformer.data.zero_genes import with_unexpressed_genes


def test_sequence_holds_true_zeros_and_the_cells_own_bins():
    """Mutants: zeros drawn from all genes (an expressed gene dropped by the subsample enters as
    0); the expressed share not capped (no zero positions in a cell with many genes)."""
    rng = np.random.default_rng(0)
    n_genes, max_genes, frac = 60, 20, 0.25
    row = np.zeros(n_genes, np.float32)
    expressed = np.sort(rng.choice(n_genes, 30, replace=False))
    row[expressed] = rng.integers(1, 51, expressed.size)
    for draw in range(20):
        cols, vals = with_unexpressed_genes(expressed, row[expressed], n_genes, max_genes, frac, np.random.default_rng(draw))
        assert cols.size == max_genes and np.all(np.diff(cols) > 0)
        np.testing.assert_array_equal(vals, row[cols])  # every position holds the cell's true bin (0 = unexpressed)
        assert (vals == 0).sum() == round(frac * max_genes)


def test_few_expressed_genes_are_all_kept_and_the_rest_filled_with_zeros():
    cols, vals = with_unexpressed_genes(np.array([3, 7]), np.array([5.0, 9.0]), 40, 10, 0.25, np.random.default_rng(1))
    assert cols.size == 10 and set(cols[vals > 0]) == {3, 7} and (vals == 0).sum() == 8


def test_dataset_lengths_match_its_items():
    X = sp.random(30, 50, density=0.2, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 50)
    ds = CellDataset(X, np.arange(3, 53), np.arange(30), seed=0, max_len=17, zero_gene_frac=0.5)
    assert [len(ds[i]["gene_ids"]) for i in range(30)] == ds.lengths().tolist()
    assert all((ds[i]["target_values"][1:] == 0).sum() >= 8 for i in range(30))


def test_zero_head_is_on_by_default_exactly_where_sequences_hold_zeros():
    """Mutant: the default resolved without looking at the data options (always off / always on)."""
    from bioformer.config import DataConfig, RunConfig

    def head(**data) -> bool:
        return RunConfig(data=DataConfig(**data)).validate(check_hardware=False).resolved().model.explicit_zero_prob

    assert head() is False
    assert head(zero_gene_frac=0.25) is True
    assert head(include_zero_genes=True) is True
    cfg = RunConfig(data=DataConfig(zero_gene_frac=0.25))
    cfg.model = cfg.model.replace(explicit_zero_prob=False)  # an explicit choice is kept
    assert cfg.resolved().model.explicit_zero_prob is False
