"""Data larger than memory: an .h5ad read in backed mode, cells binned and tokenised when read.

What stays in memory grows with the number of cells only through small per-cell arrays (the CSR
row pointer, sequence lengths, the split, obs names: ~30 bytes a cell plus the names), never
with the expression values:

1. gene selection (filter, normalise, log1p, HVGs, prior genes: `preprocess`, unchanged) runs
   on a seeded subsample of `backed_hvg_cells` cells (default 20,000), read row by row;
2. one pass over the cells' column indices (no values) counts each cell's expressed selected
   genes: the sequence lengths for length-grouped batches, and the empty cells to drop;
3. cells are split exactly as in memory (same seeded permutation of the kept cells);
4. one streaming pass over the training cells bins them and sums the per-gene floor;
5. `BackedCellDataset` reads, bins and tokenises a cell when the loader asks for it, so in a
   process group each rank reads only the cells of its own shards.

Binning is by rank within the cell, and normalize_total and log1p are increasing per cell, so
binning the raw counts of the selected genes gives exactly the in-memory bins (tested).
Passes 2 and 4 are split over the ranks of a process group (chunks round-robin) and summed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from bioformer.config import DataConfig
from bioformer.data.preprocess import bin_values, preprocess
from bioformer.data.tokenize import CellDataset, GeneVocab, split_cells
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")

AUTO_BACKED_NNZ = 200_000_000  # stored values above which --backed is automatic (~2.4 GB per in-memory copy)
CHUNK_CELLS = 8192  # cells per read in the streaming passes
H5_CHUNK_CACHE = 32 * 2**20  # h5py chunk cache per open file (bytes): neighbouring rows hit it


class BackedMatrix:
    """Rows of an .h5ad's CSR expression matrix (X, a layer, or raw) read on demand through h5py.

    Only `indptr` ([n_obs + 1] int64) is held in memory.
    """

    def __init__(self, path: str | Path, layer: str | None = None) -> None:
        self.path = Path(path)
        self.layer = layer
        key = "X" if layer in (None, "X") else "raw/X" if layer == "raw" else f"layers/{layer}"
        self.key = key
        self._file: h5py.File | None = None
        self._pid = os.getpid()
        group = self.file.get(key)
        if group is None:
            raise BioformerError(f"{self.path.name} has no {key}; pass --layer with an existing layer (or --no-backed)")
        enc = group.attrs.get("encoding-type", "") if isinstance(group, h5py.Group) else "array"
        if enc != "csr_matrix":
            raise BioformerError(
                f"backed mode reads CSR matrices; {self.path.name}:{key} is {enc or 'dense'} "
                "(rewrite it with X as scipy.sparse.csr_matrix, or pass --no-backed)"
            )
        self.shape = tuple(int(v) for v in group.attrs["shape"])
        self.indptr = group["indptr"][:].astype(np.int64)

    @property
    def file(self) -> h5py.File:
        """The open file; a DataLoader worker (another process) opens its own handle."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r", rdcc_nbytes=H5_CHUNK_CACHE)
            self._pid = os.getpid()
            group = self._file.get(self.key)
            if isinstance(group, h5py.Group) and "indices" in group:
                self._indices, self._data = group["indices"], group["data"]
        return self._file

    def _datasets(self) -> tuple[h5py.Dataset, h5py.Dataset]:
        """The CSR indices and data datasets, opened in this process."""
        _ = self.file
        return self._indices, self._data

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def row(self, cell: int) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, values) of one cell."""
        lo, hi = self.indptr[cell], self.indptr[cell + 1]
        indices, data = self._datasets()
        return indices[lo:hi], data[lo:hi]

    def rows(self, lo: int, hi: int, values: bool = True) -> sp.csr_matrix:
        """Cells lo..hi-1 as CSR (with `values=False` the data are ones and never read)."""
        a, b = self.indptr[lo], self.indptr[hi]
        ds_indices, ds_data = self._datasets()
        indices = ds_indices[a:b]
        data = ds_data[a:b].astype(np.float32) if values else np.ones(b - a, dtype=np.float32)
        return sp.csr_matrix((data, indices, self.indptr[lo:hi + 1] - a), shape=(hi - lo, self.shape[1]))

    def take(self, cells: np.ndarray) -> sp.csr_matrix:
        """The given cells (any order) as CSR, read one row each."""
        parts = [self.row(int(c)) for c in cells]
        indptr = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])])
        indices = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        data = np.concatenate([p[1] for p in parts]).astype(np.float32) if parts else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(cells), self.shape[1]))

    def names(self, axis: str, column: str | None = None) -> np.ndarray:
        """obs or var names (or a var column) as strings."""
        group = self.file["raw/var" if (axis == "var" and self.layer == "raw") else axis]
        if column is None:
            column = group.attrs["_index"]
        if column not in group:
            raise BioformerError(f"gene column {column!r} not in var; available: {sorted(k for k in group.keys() if not k.startswith('__'))}")
        values = ad.io.read_elem(group[column])
        return np.asarray(values, dtype=str)

    def __getstate__(self):  # spawned DataLoader workers reopen the file
        return {**self.__dict__, "_file": None, "_indices": None, "_data": None}


def h5ad_nnz(path: str | Path, layer: str | None = None) -> int | None:
    """Stored values of the expression matrix, read from the file's CSR pointer (None if not CSR)."""
    try:
        with h5py.File(path, "r") as f:
            key = "X" if layer in (None, "X") else "raw/X" if layer == "raw" else f"layers/{layer}"
            g = f.get(key)
            if isinstance(g, h5py.Group) and "indptr" in g:
                return int(g["indptr"][-1])
    except OSError:
        return None
    return None


def use_backed(cfg: DataConfig, path: Path) -> bool:
    """--backed / --no-backed, or automatic: backed above AUTO_BACKED_NNZ stored values."""
    if cfg.backed is not None:
        return bool(cfg.backed)
    nnz = h5ad_nnz(path, cfg.layer)
    return nnz is not None and nnz > AUTO_BACKED_NNZ


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(a: np.ndarray) -> np.ndarray:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().numpy()


def _check_chunk(X: sp.csr_matrix, name: str) -> None:
    if np.isnan(X.data).any():
        raise BioformerError(f"{name}: expression matrix contains NaN values; fill or drop them before training")
    if (X.data < 0).any():
        raise BioformerError(f"{name}: expression matrix contains negative values (scaled data?); pass raw counts or log-normalised values, e.g. --layer raw_count")


class BackedCellDataset(CellDataset):
    """CellDataset whose cells are read from a BackedMatrix and binned when asked for.

    Cells are numbered like the in-memory kept cells (masks are keyed by that number); cell k
    is file row `file_rows[k]`. `positions` maps the file's gene columns to the selected genes'
    columns (-1 = not selected); `expressed[k]` is cell k's number of non-zero selected genes.
    """

    def __init__(
        self,
        matrix: BackedMatrix,
        file_rows: np.ndarray,
        positions: np.ndarray,
        n_genes: int,
        n_bins: int,
        expressed: np.ndarray,
        gene_token_ids: np.ndarray,
        cells: np.ndarray,
        seed: int,
        **options: Any,
    ) -> None:
        """`options`: CellDataset's sequence and mask options (max_len, include_zero_genes,
        append_cls, mask_ratio, cls_id, fixed_masks, zero_gene_frac)."""
        super().__init__(sp.csr_matrix((0, n_genes), dtype=np.float32), gene_token_ids, cells, seed, **options)
        self.binned = None  # rows come from the file
        self.matrix, self.file_rows, self.positions, self.n_bins = matrix, file_rows, positions, n_bins
        self.expressed = np.asarray(expressed)

    def expressed_counts(self) -> np.ndarray:
        return self.expressed[self.cells]

    def row(self, cell: int) -> tuple[np.ndarray, np.ndarray]:
        indices, values = self.matrix.row(int(self.file_rows[cell]))
        pos = self.positions[indices]
        keep = (pos >= 0) & (values > 0)
        pos, values = pos[keep], values[keep]
        order = np.argsort(pos, kind="stable")
        pos, values = pos[order], values[order]
        bins = bin_values(values, self.n_bins).astype(np.float32) if values.size else values.astype(np.float32)
        return pos, bins


def prepare_backed(
    cfg: DataConfig,
    path: Path,
    seed: int = 0,
    gene_list: list[str] | None = None,
    selection_edges: pd.DataFrame | None = None,
    quiet: bool = False,
) -> tuple[ad.AnnData, GeneVocab, dict[str, np.ndarray], BackedData]:
    """Gene selection on a subsample, lengths and split over all cells, floors over the training
    cells, all without loading the matrix. Returns (obs/var-only AnnData over the kept cells and
    selected genes, vocabulary, split, BackedData)."""
    m = BackedMatrix(path, cfg.layer)
    n_obs, n_vars = m.shape
    gene_names = pd.Index(m.names("var", cfg.gene_column))
    gene_names = pd.Index(ad.utils.make_index_unique(gene_names))
    empty = np.flatnonzero(np.diff(m.indptr) == 0)
    if empty.size:
        raise BioformerError(f"{path.name}: {empty.size} cell(s) have all-zero expression; remove them first (e.g. sc.pp.filter_cells(adata, min_counts=1))")
    universe = np.arange(n_obs)
    if cfg.max_cells is not None and cfg.max_cells < n_obs:
        universe = np.sort(np.random.default_rng(seed).choice(n_obs, size=cfg.max_cells, replace=False))
    selected = _select_genes(m, cfg, path, gene_names, universe, seed, gene_list, selection_edges, quiet)
    genes = list(selected.var_names)
    positions = np.full(n_vars, -1, dtype=np.int64)
    positions[gene_names.get_indexer(genes)] = np.arange(len(genes))
    vocab = GeneVocab.from_genes(genes)

    chunks = [(i, min(i + CHUNK_CELLS, n_obs)) for i in range(0, n_obs, CHUNK_CELLS)]
    expressed_all = _expressed_per_cell(m, positions, chunks)
    expressed = expressed_all[universe]
    keep = np.ones(len(universe), dtype=bool) if cfg.include_zero_genes else expressed > 0
    kept, n_expr = universe[keep], expressed[keep]
    if len(kept) < len(universe) and not quiet:
        log.warning("dropping %d cell(s) with no expressed selected genes", len(universe) - len(kept))
    split = split_cells(len(kept), cfg.valid_frac, cfg.test_frac, seed)  # positions among kept cells, as in memory

    is_train = np.zeros(n_obs, dtype=bool)
    is_train[kept[split["train"]]] = True
    col_sum, col_n = _floor_sums(m, positions, is_train, len(genes), cfg.n_bins, chunks, path.name)
    if cfg.has_zero_genes:
        col_n = np.full(len(genes), float(len(split["train"])))

    obs_names = pd.Index(ad.utils.make_index_unique(pd.Index(m.names("obs"))))[kept]
    frame = ad.AnnData(obs=pd.DataFrame(index=obs_names), var=selected.var.copy())
    frame.uns["input_kind"] = selected.uns.get("input_kind")
    backed = BackedData(m, positions, len(genes), cfg.n_bins, kept, n_expr, col_sum, col_n, selected)
    return frame, vocab, split, backed


def _select_genes(m: BackedMatrix, cfg: DataConfig, path: Path, gene_names: pd.Index, universe: np.ndarray, seed: int,
                  gene_list: list[str] | None, selection_edges: pd.DataFrame | None, quiet: bool) -> ad.AnnData:
    """Gene selection (`preprocess`) on a seeded subsample of backed_hvg_cells of the cells."""
    n_sub = min(cfg.backed_hvg_cells, len(universe))
    sub_cells = np.sort(np.random.default_rng([seed, 13]).choice(universe, size=n_sub, replace=False))
    sub_X = m.take(sub_cells)
    _check_chunk(sub_X, path.name)
    sub = ad.AnnData(X=sub_X, var=pd.DataFrame(index=gene_names))
    if not quiet:
        log.info("backed mode: %d cells x %d genes in %s; gene selection on %d cells (seeded subsample)", len(universe), m.shape[1], path.name, n_sub)
    return preprocess(
        sub, n_hvg=cfg.n_hvg, n_bins=cfg.n_bins, min_counts=cfg.min_counts, hvg_flavor=cfg.hvg_flavor,
        genes=cfg.genes, prior_edges=selection_edges, min_cells_frac=cfg.min_cells_frac,
        max_prior_genes=cfg.max_prior_genes, gene_list=gene_list, quiet=quiet,
    )


def _expressed_per_cell(m: BackedMatrix, positions: np.ndarray, chunks: list[tuple[int, int]]) -> np.ndarray:
    """Pass 1: expressed selected genes of every file row (column indices only, this rank's
    contiguous chunks of rows, summed over ranks): [n_obs] int64."""
    rank, world = _rank_world()
    selected_col = positions >= 0
    expressed_all = np.zeros(m.shape[0], dtype=np.float64)
    for lo, hi in chunks[rank::world]:
        X = m.rows(lo, hi, values=False)
        expressed_all[lo:hi] = np.add.reduceat(selected_col[X.indices].astype(np.int64), X.indptr[:-1]) if X.nnz else 0
    return _sum_over_ranks(expressed_all).astype(np.int64)


def _floor_sums(m: BackedMatrix, positions: np.ndarray, is_train: np.ndarray, n_genes: int, n_bins: int,
                chunks: list[tuple[int, int]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: per-gene floor sums over the training cells, binned on the fly: (sum of bins,
    number of cells expressing the gene), each [n_genes], summed over ranks."""
    rank, world = _rank_world()
    col_sum = np.zeros(n_genes, dtype=np.float64)
    col_n = np.zeros(n_genes, dtype=np.float64)
    for lo, hi in chunks[rank::world]:
        rows = np.flatnonzero(is_train[lo:hi])
        if rows.size == 0:
            continue
        X = m.rows(lo, hi)
        _check_chunk(X, name)
        for k in rows:
            idx, val = X.indices[X.indptr[k]:X.indptr[k + 1]], X.data[X.indptr[k]:X.indptr[k + 1]]
            pos = positions[idx]
            ok = (pos >= 0) & (val > 0)
            np.add.at(col_sum, pos[ok], bin_values(val[ok], n_bins))
            np.add.at(col_n, pos[ok], 1.0)
    return _sum_over_ranks(col_sum), _sum_over_ranks(col_n)


@dataclass
class BackedData:
    """What the backed datasets and floors need, next to PreparedData."""

    matrix: BackedMatrix
    positions: np.ndarray  # [file genes] column among the selected genes, -1 = not selected
    n_genes: int
    n_bins: int
    kept: np.ndarray  # [cells] file row of each kept cell (cell k of the split = file row kept[k])
    expressed: np.ndarray  # [cells] expressed selected genes of each kept cell
    col_sum: np.ndarray  # [genes] per-gene floor: sum of bins over the training cells
    col_n: np.ndarray  # [genes] ... and the number of training cells with the gene in the sequence
    subsample: ad.AnnData  # the binned gene-selection subsample (for prior coverage)

    def dataset(self, cells: np.ndarray, gene_token_ids: np.ndarray, cfg: DataConfig, seed: int, cls_id: int, fixed_masks: bool) -> BackedCellDataset:
        """Dataset over kept cells `cells` (their masks are keyed by that index, as in memory)."""
        return BackedCellDataset(
            self.matrix, self.kept, self.positions, self.n_genes, self.n_bins, self.expressed, gene_token_ids,
            cells, seed, max_len=cfg.max_len, include_zero_genes=cfg.include_zero_genes, append_cls=cfg.append_cls,
            mask_ratio=cfg.mask_ratio, cls_id=cls_id, fixed_masks=fixed_masks,
            zero_gene_frac=cfg.zero_gene_frac,
        )
