"""Gene vocabulary, cell split, and the torch Dataset that turns binned cells into masked sequences.

Masks and subsampling are drawn from `np.random.default_rng([seed, epoch_key, cell])`: they
depend only on the seed, the epoch and the cell, never on batch order or on the model, so every
model trained with the same seed sees the same split and the same masks (a paired design).
Validation and test use one fixed key, so their masks are identical in every epoch and run.

Mask strategies: "random" (mask_ratio of the positions) and "prior-targets": in each cell, one
TF of the cell that has targets in the cell (drawn like the random mask) and all its targets
are masked, the TF itself stays visible; a cell without such a TF falls back to random masking.
The TF -> target graph is the real prior's (the same for every arm, so masks stay paired).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from bioformer.config import MASK_STRATEGIES
from bioformer.data.zero_genes import sequence_length, with_unexpressed_genes
from bioformer.errors import BioformerError

PAD, CLS, MASK = "<pad>", "<cls>", "<mask>"
SPECIAL_TOKENS = (PAD, CLS, MASK)
PAD_VALUE = -2.0
MASK_VALUE = -1.0
CLS_VALUE = 0.0
EVAL_EPOCH_KEY = 1_000_003  # fixed masks for validation/test


@dataclass
class GeneVocab:
    """Special tokens first, then genes in a fixed order."""

    tokens: list[str]

    @classmethod
    def from_genes(cls, genes: list[str]) -> GeneVocab:
        dup = {g for g in genes if g in SPECIAL_TOKENS}
        if dup:
            raise BioformerError(f"gene names clash with special tokens: {sorted(dup)}")
        return cls(list(SPECIAL_TOKENS) + list(genes))

    @property
    def token_to_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def cls_id(self) -> int:
        return 1

    @property
    def genes(self) -> list[str]:
        return self.tokens[len(SPECIAL_TOKENS):]

    def __len__(self) -> int:
        return len(self.tokens)


def split_cells(n_cells: int, valid_frac: float, test_frac: float, seed: int) -> dict[str, np.ndarray]:
    """Train/valid/test cell indices from one seeded permutation (sorted within each split)."""
    if not 0 <= valid_frac < 1 or not 0 < test_frac < 1 or valid_frac + test_frac >= 1:
        raise BioformerError("valid_frac and test_frac must be in [0, 1) and sum to less than 1")
    perm = np.random.default_rng([seed, 7]).permutation(n_cells)
    n_test = max(1, int(round(test_frac * n_cells)))
    n_valid = int(round(valid_frac * n_cells))
    if n_cells - n_test - n_valid < 1:
        raise BioformerError(f"too few cells ({n_cells}) for a train/valid/test split")
    return {
        "test": np.sort(perm[:n_test]),
        "valid": np.sort(perm[n_test:n_test + n_valid]),
        "train": np.sort(perm[n_test + n_valid:]),
    }


def split_cells_by_group(
    groups: np.ndarray, test_groups: list[str], valid_frac: float, seed: int, column: str = "group",
) -> dict[str, np.ndarray]:
    """Transfer split: every cell whose group is in `test_groups` is a test cell; the others are
    split into train / valid (valid_frac of them) by one seeded permutation."""
    groups = np.asarray(groups).astype(str)
    present = sorted(set(groups.tolist()))
    unknown = [g for g in test_groups if g not in present]
    if unknown:
        raise BioformerError(f"test group(s) {unknown} not found in obs[{column!r}]; its values are: {', '.join(present[:20])}")
    is_test = np.isin(groups, test_groups)
    rest = np.flatnonzero(~is_test)
    if not 0 <= valid_frac < 1:
        raise BioformerError("valid_frac must be in [0, 1)")
    n_valid = int(round(valid_frac * rest.size))
    if rest.size - n_valid < 1:
        raise BioformerError(f"no training cells left outside test groups {test_groups} of obs[{column!r}]")
    perm = rest[np.random.default_rng([seed, 7]).permutation(rest.size)]
    return {"test": np.flatnonzero(is_test), "valid": np.sort(perm[:n_valid]), "train": np.sort(perm[n_valid:])}


CLS_FILL = {"values": CLS_VALUE, "target_values": CLS_VALUE, "mask": False, "columns": -1, "targets": -1}
PAD_FILL = {"values": PAD_VALUE, "target_values": PAD_VALUE, "mask": False, "columns": -1, "targets": -1}


@dataclass(frozen=True)
class Tokenizer:
    """A cell -> one model sequence: the one place that decides which genes a cell's sequence
    holds, in which order, and where <cls> and padding go. Training and evaluation
    (`CellDataset`) and inference (`bioformer.inference.run.Run`) both call it; they differ only
    in the generator they pass (training: seed, epoch, cell index; inference: seed and the
    cell's content, so that a result never depends on a cell's position or batch).

    gene_token_ids: [n_genes] vocabulary id of each gene column of the binned matrix.
    """

    gene_token_ids: np.ndarray  # [n_genes] int64
    max_len: int  # positions per sequence, <cls> included
    include_zero_genes: bool
    append_cls: bool
    cls_id: int
    seed: int
    zero_gene_frac: float = 0.0  # > 0: unexpressed genes sampled into every sequence (data/zero_genes.py)

    def __post_init__(self) -> None:
        if self.max_genes < 1:
            raise BioformerError("max_len must leave room for at least one gene")

    @property
    def n_genes(self) -> int:
        return len(self.gene_token_ids)

    @property
    def max_genes(self) -> int:
        """Gene positions per sequence (max_len minus the <cls> token)."""
        return self.max_len - int(self.append_cls)

    def shared_columns(self, epoch_key: int) -> np.ndarray:
        """Include-zero mode: the gene columns every cell uses under `epoch_key` (one draw for all
        cells, so position i means the same gene in every cell and z stays aligned with the prior)."""
        n = self.n_genes
        if n <= self.max_genes:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch_key, 2**31 - 1])
        return np.sort(rng.choice(n, size=self.max_genes, replace=False))

    def visible(self, cols: np.ndarray, bins: np.ndarray, rng: np.random.Generator, epoch_key: int) -> tuple[np.ndarray, np.ndarray]:
        """A cell's non-zero (gene columns ascending, bins) -> the (columns, float32 bins) of its
        sequence: the shared columns in include-zero mode, else its expressed genes, a sorted
        `rng` subsample of `max_genes` of them when there are more."""
        if self.include_zero_genes:
            row = np.zeros(self.n_genes, dtype=np.float32)
            row[cols] = bins
            shared = self.shared_columns(epoch_key)
            return shared, row[shared]
        if self.zero_gene_frac > 0:
            return with_unexpressed_genes(cols, bins, self.n_genes, self.max_genes, self.zero_gene_frac, rng)
        vals = np.asarray(bins, dtype=np.float32)
        if cols.size > self.max_genes:
            pick = np.sort(rng.choice(cols.size, size=self.max_genes, replace=False))
            return cols[pick], vals[pick]
        return cols, vals

    def lengths(self, expressed: np.ndarray) -> np.ndarray:
        """Sequence lengths (<cls> included) of cells with `expressed` non-zero genes each."""
        fixed = self.include_zero_genes or self.zero_gene_frac > 0
        n = np.full(len(expressed), sequence_length(self.n_genes, self.max_genes)) if fixed else np.minimum(expressed, self.max_genes)
        return n + int(self.append_cls)

    def sequence(self, cols: np.ndarray, **fields: np.ndarray) -> dict[str, np.ndarray]:
        """`gene_ids` of the columns `cols` [n] and each per-position field [n] (values,
        target_values, mask, columns, targets), with <cls> first when the run appends it (its
        fill: `CLS_FILL`)."""
        out = {"gene_ids": self.gene_token_ids[cols], **fields}
        if not self.append_cls:
            return out
        first = {"gene_ids": self.cls_id, **CLS_FILL}
        return {k: np.concatenate([np.asarray([first[k]], dtype=v.dtype), v]) for k, v in out.items()}

    def content_rng(self, cols: np.ndarray, bins: np.ndarray) -> np.random.Generator:
        """Inference: a generator fixed by the seed and the cell's content, not its index or batch."""
        key = [self.seed, EVAL_EPOCH_KEY, zlib.crc32(cols.astype(np.int64).tobytes()), zlib.crc32(np.asarray(bins, dtype=np.float32).tobytes())]
        return np.random.default_rng(key)


def pad(items: list[dict[str, np.ndarray]], pad_id: int, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Sequences padded to the longest: gene_ids [B, L] (pad `pad_id`), each of `fields` [B, L]
    (pad `PAD_FILL`), padding_mask [B, L] (True = pad)."""
    L = max(len(it["gene_ids"]) for it in items)
    B = len(items)
    out = {"gene_ids": np.full((B, L), pad_id, dtype=np.int64)}
    for k in fields:
        out[k] = np.full((B, L), PAD_FILL[k], dtype=np.asarray(items[0][k]).dtype)
    out["padding_mask"] = np.ones((B, L), dtype=bool)
    for b, it in enumerate(items):
        n = len(it["gene_ids"])
        for k in ("gene_ids", *fields):
            out[k][b, :n] = it[k]
        out["padding_mask"][b, :n] = False
    return {k: torch.from_numpy(v) for k, v in out.items()}


class CellDataset(Dataset):
    """Masked (gene id, value) sequences for a subset of cells (sequences by `Tokenizer`).

    binned: [n_cells, n_genes] CSR of bins (0 = not expressed); gene_token_ids: [n_genes] vocab
    ids of its columns. Items hold `gene_ids`, `values` (input, masked to -1), `target_values`,
    `mask` (positions to predict). `mask_strategy="prior-targets"` needs `target_graph`, a
    [n_genes, n_genes] sparse matrix over the same columns, nonzero at (TF, target).
    """

    def __init__(
        self,
        binned: sp.csr_matrix,
        gene_token_ids: np.ndarray,
        cells: np.ndarray,
        seed: int,
        max_len: int = 1024,
        include_zero_genes: bool = False,
        append_cls: bool = True,
        mask_ratio: float = 0.15,
        cls_id: int = 1,
        fixed_masks: bool = False,
        mask_strategy: str = "random",
        target_graph: sp.csr_matrix | None = None,
        zero_gene_frac: float = 0.0,
    ) -> None:
        self.binned = binned.tocsr()
        self.binned.sort_indices()
        self.tokenizer = Tokenizer(np.asarray(gene_token_ids, dtype=np.int64), max_len, include_zero_genes, append_cls, cls_id, seed, zero_gene_frac)
        self.cells = np.asarray(cells)
        self.seed = seed
        self.include_zero_genes = include_zero_genes
        self.cls_id = cls_id
        self.mask_ratio = mask_ratio
        self.fixed_masks = fixed_masks
        if mask_strategy not in MASK_STRATEGIES:
            raise BioformerError(f"unknown mask strategy {mask_strategy!r}; use one of {', '.join(MASK_STRATEGIES)}")
        if mask_strategy == "prior-targets" and target_graph is None:
            raise BioformerError("--mask-strategy prior-targets needs a prior (its TF -> target edges choose the masks)")
        self.mask_strategy = mask_strategy
        self.target_graph = target_graph.tocsr() if target_graph is not None else None
        self.epoch = 0
        self.fold, self.n_folds = 0, 1

    def set_fold(self, fold: int, n_folds: int) -> None:
        """Full-cell scoring: mask fold `fold` of `n_folds` complementary folds (a seeded
        partition of each cell's positions), so over all folds every position is masked once.
        n_folds = 1 restores the usual `mask_ratio` draw."""
        if not 0 <= fold < n_folds:
            raise BioformerError(f"mask fold {fold} is not in 0..{n_folds - 1}")
        self.fold, self.n_folds = fold, n_folds

    def set_epoch(self, epoch: int) -> None:
        """Re-draw masks (and subsampling) for a new training epoch."""
        self.epoch = epoch

    @property
    def epoch_key(self) -> int:
        return EVAL_EPOCH_KEY if self.fixed_masks else self.epoch

    def __len__(self) -> int:
        return len(self.cells)

    def lengths(self) -> np.ndarray:
        """Sequence length of every item (incl. <cls>), without building the items."""
        return self.tokenizer.lengths(self.expressed_counts())

    @property
    def has_zero_genes(self) -> bool:
        """Whether sequences hold unexpressed genes (zero targets), by either option."""
        return self.tokenizer.include_zero_genes or self.tokenizer.zero_gene_frac > 0

    def expressed_counts(self) -> np.ndarray:
        """Number of non-zero selected genes of every cell of the dataset."""
        return np.diff(self.binned.indptr)[self.cells]

    def row(self, cell: int) -> tuple[np.ndarray, np.ndarray]:
        """A cell's non-zero (gene column, bin) pairs, columns ascending."""
        lo, hi = self.binned.indptr[cell], self.binned.indptr[cell + 1]
        return self.binned.indices[lo:hi], self.binned.data[lo:hi]

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        cell = int(self.cells[idx])
        rng = np.random.default_rng([self.seed, self.epoch_key, cell])
        cols, vals = self.tokenizer.visible(*self.row(cell), rng, self.epoch_key)
        n = cols.size
        mask = np.zeros(n, dtype=bool)
        prior_masked = False
        if self.n_folds > 1:  # full-cell scoring: every position once over the folds
            mask[rng.permutation(n)[self.fold::self.n_folds]] = True
        else:
            n_mask = min(n, max(1, int(round(self.mask_ratio * n)))) if n else 0
            mask[rng.choice(n, size=n_mask, replace=False)] = True
            if self.mask_strategy == "prior-targets":
                mask, prior_masked = self._prior_target_mask(cols, vals, rng, mask)
        inputs = np.where(mask, MASK_VALUE, vals).astype(np.float32)
        seq = self.tokenizer.sequence(cols, values=inputs, target_values=vals, mask=mask)
        return {**seq, "cell": cell, "prior_masked": prior_masked}

    def _prior_target_mask(self, cols: np.ndarray, vals: np.ndarray, rng: np.random.Generator, fallback: np.ndarray) -> tuple[np.ndarray, bool]:
        """Mask the targets (in this sequence) of one expressed TF of the sequence; TF visible.
        Returns (mask, True), or (fallback, False) when no expressed TF has a target here."""
        sub = self.target_graph[cols][:, cols].tocoo()  # [n, n] TF position -> target position
        keep = (sub.row != sub.col) & (vals[sub.row] > 0)  # no self-loops; the TF is expressed
        tf_pos, target_pos = sub.row[keep], sub.col[keep]
        if tf_pos.size == 0:
            return fallback, False
        tfs = np.unique(tf_pos)
        tf = tfs[rng.integers(tfs.size)]
        mask = np.zeros(len(cols), dtype=bool)
        mask[target_pos[tf_pos == tf]] = True
        return mask, True

    def prior_target_share(self) -> float:
        """Share of cells whose mask is a TF's targets (the rest fell back to random masking)."""
        if self.mask_strategy != "prior-targets" or len(self) == 0:
            return 0.0
        return float(np.mean([self[k]["prior_masked"] for k in range(len(self))]))


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True, group: int = 50) -> list[list[int]]:
    """Batches of similar length, so padding (and the r x r pair tensor) stays small.

    Shuffle, cut into groups of `group` batches, sort each group by length, split it into
    batches, shuffle the batch order. Deterministic for a seed. Without `shuffle`: sorted by
    length (evaluation; metrics are sums, so order does not matter).
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, 11])
    perm = rng.permutation(n)
    batches = []
    step = batch_size * group
    for start in range(0, n, step):
        chunk = perm[start:start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(items: list[dict[str, np.ndarray]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest (`pad`): gene id `pad_id`, values -2, never masked.

    Returns gene_ids [B, L] long, values / target_values [B, L] float, padding_mask [B, L]
    (True = pad), mask [B, L] (True = predict), cell [B] long.
    """
    out = pad(items, pad_id, ("values", "target_values", "mask"))
    out["cell"] = torch.tensor([int(it["cell"]) for it in items])
    return out
