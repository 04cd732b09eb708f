"""Tokenization, masking and splits: invariants the models rely on."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bioformer.data.tokenize import (
    MASK_VALUE,
    PAD_VALUE,
    CellDataset,
    GeneVocab,
    collate,
    split_cells,
    split_cells_by_group,
)
from bioformer.errors import BioformerError


@pytest.fixture
def binned():
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 51, size=(40, 30)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.5] = 0
    dense[:, 0] = 7  # every cell has at least one expressed gene
    return sp.csr_matrix(dense)


def make(binned, **kw):
    vocab = GeneVocab.from_genes([f"G{i}" for i in range(binned.shape[1])])
    ids = np.arange(3, 3 + binned.shape[1])
    kw.setdefault("max_len", 64)
    return vocab, CellDataset(binned, ids, np.arange(binned.shape[0]), seed=0, **kw)


def test_vocab_specials_first():
    v = GeneVocab.from_genes(["A", "B"])
    assert v.tokens[:3] == ["<pad>", "<cls>", "<mask>"] and v.pad_id == 0 and v.cls_id == 1
    assert v.genes == ["A", "B"] and v.token_to_id["B"] == 4


def test_items_hold_expressed_genes_and_mask_15_percent(binned):
    _, ds = make(binned)
    for i in range(len(ds)):
        it = ds[i]
        assert it["gene_ids"][0] == 1 and not it["mask"][0]  # <cls> first, never masked
        row = binned[i].toarray().ravel()
        assert len(it["gene_ids"]) == 1 + (row > 0).sum()
        assert np.all(it["target_values"][1:] > 0)
        n = len(it["gene_ids"]) - 1
        assert it["mask"].sum() == max(1, round(0.15 * n))
        assert np.all(it["values"][it["mask"]] == MASK_VALUE)
        assert np.array_equal(it["values"][~it["mask"]], it["target_values"][~it["mask"]])


def test_collate_pads_with_pad_value_and_never_masks_pads(binned):
    _, ds = make(binned)
    batch = collate([ds[i] for i in range(8)])
    pad = batch["padding_mask"]
    assert pad.any()
    assert (batch["gene_ids"][pad] == 0).all()
    assert (batch["values"][pad] == PAD_VALUE).all() and (batch["target_values"][pad] == PAD_VALUE).all()
    assert not (batch["mask"] & pad).any()


def test_masks_redrawn_per_epoch_deterministic_and_fixed_for_eval(binned):
    _, a = make(binned)
    _, b = make(binned)
    a.set_epoch(1)
    b.set_epoch(1)
    assert np.array_equal(a[3]["mask"], b[3]["mask"])
    b.set_epoch(2)
    assert not all(np.array_equal(a[i]["mask"], b[i]["mask"]) for i in range(10))
    _, e = make(binned, fixed_masks=True)
    m1 = [e[i]["mask"].copy() for i in range(10)]
    e.set_epoch(5)
    assert all(np.array_equal(m, e[i]["mask"]) for i, m in enumerate(m1))


def test_long_cells_are_subsampled_to_max_len(binned):
    _, ds = make(binned, max_len=6)
    assert all(len(ds[i]["gene_ids"]) <= 6 for i in range(len(ds)))


def test_include_zero_sequences_are_aligned_across_cells(binned):
    _, ds = make(binned, include_zero_genes=True, max_len=11)
    ds.set_epoch(3)
    ids = [ds[i]["gene_ids"] for i in range(len(ds))]
    assert all(np.array_equal(ids[0], x) for x in ids)  # same genes, same positions
    assert len(ids[0]) == 11
    targets = np.stack([ds[i]["target_values"] for i in range(len(ds))])
    assert (targets[:, 1:] == 0).any()  # zeros are in the sequence ...
    masked_zero = any((ds[i]["mask"] & (ds[i]["target_values"] == 0)).any() for i in range(len(ds)))
    assert masked_zero  # ... and can be masked
    ds.set_epoch(4)
    assert not np.array_equal(ids[0], ds[0]["gene_ids"])  # the shared subset is re-drawn per epoch


def test_split_is_disjoint_complete_and_deterministic():
    s = split_cells(1000, 0.1, 0.1, seed=5)
    t = split_cells(1000, 0.1, 0.1, seed=5)
    u = split_cells(1000, 0.1, 0.1, seed=6)
    allc = np.concatenate(list(s.values()))
    assert len(allc) == 1000 and len(np.unique(allc)) == 1000
    assert len(s["test"]) == 100 and len(s["valid"]) == 100
    assert all(np.array_equal(s[k], t[k]) for k in s)
    assert not np.array_equal(s["test"], u["test"])


def test_length_grouped_batches_cover_every_item_once_and_cut_padding(binned):
    from bioformer.data.tokenize import length_grouped_batches

    _, ds = make(binned)
    lengths = ds.lengths()
    assert np.array_equal(lengths, [len(ds[i]["gene_ids"]) for i in range(len(ds))])
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000)
    batches = length_grouped_batches(lengths, 32, seed=3, group=10)
    flat = np.concatenate(batches)
    assert len(flat) == 1000 and len(np.unique(flat)) == 1000
    assert batches == length_grouped_batches(lengths, 32, seed=3, group=10)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.7 * random_padded


def _graph(n: int, edges: list[tuple[int, int]]) -> sp.csr_matrix:
    s, t = zip(*edges, strict=True)
    return sp.csr_matrix((np.ones(len(edges), dtype=np.float32), (s, t)), shape=(n, n))


def test_prior_target_masks_hide_one_tfs_targets_and_keep_the_tf(binned):
    n = binned.shape[1]
    edges = [(0, 3), (0, 5), (0, 8), (1, 2), (1, 9), (1, 1), (4, 6)]  # gene 0 is in every cell
    graph = _graph(n, edges)
    _, ds = make(binned, mask_strategy="prior-targets", target_graph=graph)
    targets = {tf: {t for s, t in edges if s == tf and t != tf} for tf in (0, 1, 4)}
    hits = 0
    for k in range(len(ds)):
        it = ds[k]
        cols = it["gene_ids"][1:] - 3  # drop <cls>; ids are 3 + column
        masked = set(cols[it["mask"][1:]].tolist())
        present = set(cols.tolist())
        candidates = [tf for tf in targets if tf in present and targets[tf] & present]
        if not it["prior_masked"]:
            assert not candidates  # fallback only when no TF of the cell has a target in it
            continue
        hits += 1
        tf = [tf for tf in candidates if masked == targets[tf] & present]
        assert len(tf) == 1 and tf[0] not in masked  # exactly one TF's targets; the TF visible
        assert np.all(it["values"][it["mask"]] == MASK_VALUE)
    assert hits >= len(ds) // 2 and ds.prior_target_share() == hits / len(ds)
    again = make(binned, mask_strategy="prior-targets", target_graph=graph)[1]
    assert all(np.array_equal(ds[k]["mask"], again[k]["mask"]) for k in range(5))  # seeded, paired
    with pytest.raises(BioformerError, match="needs a prior"):
        make(binned, mask_strategy="prior-targets")
    with pytest.raises(BioformerError, match="unknown mask strategy"):
        make(binned, mask_strategy="everything")


def test_transfer_split_by_group():
    groups = np.array(["ctrl", "stim"] * 10 + ["ctrl"] * 5)
    split = split_cells_by_group(groups, ["stim"], valid_frac=0.2, seed=0)
    assert np.array_equal(split["test"], np.flatnonzero(groups == "stim"))
    assert (groups[split["train"]] == "ctrl").all() and (groups[split["valid"]] == "ctrl").all()
    assert len(split["valid"]) == 3 and len(split["train"]) == 12
    assert not set(split["train"]) & set(split["valid"])
    with pytest.raises(BioformerError, match="not found"):
        split_cells_by_group(groups, ["IFNB"], 0.1, 0)
    with pytest.raises(BioformerError, match="no training cells"):
        split_cells_by_group(groups, ["ctrl", "stim"], 0.1, 0)
