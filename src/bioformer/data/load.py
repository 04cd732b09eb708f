"""Load an .h5ad (built-in name or path) into an AnnData with counts in X, checked for bad input."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioformer.data.datasets import DATASETS, cache_dir, fetch
from bioformer.data.simulate import cached_simulation, is_synthetic
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")

MIN_CELLS = 50  # fewer cannot give usable HVGs (seurat_v3's loess crashes on 1 cell) or splits


def min_cells_for_split(valid_frac: float, test_frac: float, per_split: int = 2) -> int:
    """Fewest cells for training: MIN_CELLS, and enough that the validation and test splits
    (rounded like `split_cells`) get `per_split` cells each."""
    need = MIN_CELLS
    while round(valid_frac * need) < per_split or round(test_frac * need) < per_split:
        need += 1
    return need


def check_cell_count(n_cells: int, need: int, name: str, max_cells: int | None = None, n_file: int | None = None) -> None:
    """One clear error when `n_cells` (after --max-cells) is below `need`, advising only what helps."""
    if n_cells >= need:
        return
    if max_cells is not None and n_file is not None and n_file >= need:
        fix = f"raise --max-cells to at least {need} (the file has {n_file} cells)"
    else:
        fix = "use a data set with more cells"
    raise BioformerError(
        f"{name}: only {n_cells} cell(s); training needs at least {need} so that gene selection is stable "
        f"and the validation and test splits hold cells; {fix}"
    )


def as_checked_csr(X, name: str) -> sp.csr_matrix:
    """The expression matrix as CSR float32, refused with one BioformerError when it cannot be
    expression: boolean, NaN, infinite or negative values, or counts with some non-integers
    (more than half of the non-zero values are whole numbers, but not all: a broken export,
    neither counts nor normalised values). Shared by training (`load_anndata`) and inference."""
    dtype = getattr(X, "dtype", None)
    if dtype is not None and np.dtype(dtype) == np.bool_:
        raise BioformerError(f"{name}: the expression matrix is boolean (detected / not detected); pass counts or log-normalised values")
    X = sp.csr_matrix(np.asarray(X, dtype=np.float32)) if not sp.issparse(X) else X.tocsr().astype(np.float32)
    data = X.data
    if np.isnan(data).any():
        raise BioformerError(f"{name}: expression matrix contains NaN values; fill or drop them first")
    if np.isinf(data).any():
        raise BioformerError(f"{name}: expression matrix contains infinite values; fill or drop them first")
    if (data < 0).any():
        raise BioformerError(
            f"{name}: expression matrix contains negative values (scaled data?); pass raw counts "
            "or log-normalised values, e.g. --layer raw_count or --layer raw"
        )
    nonzero = data[data != 0]
    whole = int(np.count_nonzero(np.mod(nonzero, 1) == 0))
    if 0.5 * nonzero.size < whole < nonzero.size:
        raise BioformerError(
            f"{name}: expression matrix looks like counts ({whole} of {nonzero.size} non-zero values are whole numbers) "
            f"but {nonzero.size - whole} are not; pass integer counts or log-normalised values"
        )
    return X


def sum_duplicate_genes(X: sp.csr_matrix, names: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """Merge columns that share a gene name by summing them (e.g. several Ensembl IDs of one symbol).

    Returns (X with one column per unique name in first-seen order, those names, the duplicated names).
    """
    uniq, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    if len(uniq) == len(names):
        return X, names, []
    order = np.argsort(first)  # unique names in first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    col = rank[inverse]  # [n_vars] -> merged column
    merge = sp.csr_matrix((np.ones(len(names), dtype=np.float32), (np.arange(len(names)), col)), shape=(len(names), len(uniq)))
    counts = np.bincount(col)
    dup = [str(uniq[order][i]) for i in np.flatnonzero(counts > 1)]
    return (X @ merge).tocsr(), uniq[order], dup


def check_input_file(path: str | Path, what: str) -> Path:
    """`path` is an existing, readable regular file (checked with stat, never opened: opening a
    FIFO would block). Returns it with ~ expanded; one BioformerError naming `what` otherwise."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BioformerError(f"file not found: {path} (given as {what})") from None
    except OSError as e:
        raise BioformerError(f"{what} {path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise BioformerError(f"{what} {path} is a directory; pass the path of a file")
    if not stat.S_ISREG(st.st_mode):
        raise BioformerError(f"{what} {path} is not a regular file (a FIFO, socket or device); pass the path of a file")
    if not os.access(path, os.R_OK):
        raise BioformerError(f"{what} {path} is not readable (permissions)")
    return path


def check_data_file(source: str) -> None:
    """A --data that is not a built-in or synthetic name must be a readable regular file (checked, not opened)."""
    if source not in DATASETS and not is_synthetic(source):
        check_input_file(source, "--data")


def data_file(source: str, quiet: bool = False) -> Path:
    """The .h5ad behind a --data value: a built-in name (fetched, verified), a `synthetic:` name
    (simulated into the cache on first use) or a path (checked: an existing readable file)."""
    if is_synthetic(source):
        return cached_simulation(source, cache_dir()) / "counts.h5ad"
    if source in DATASETS:
        return fetch(source, quiet=quiet)
    return check_input_file(source, "--data")


def _read_h5ad(path: Path) -> ad.AnnData:
    if not path.exists():
        raise BioformerError(f"file not found: {path}; pass a built-in name ({', '.join(DATASETS)}) or an existing .h5ad path")
    check_input_file(path, "--data")
    try:
        return ad.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many different types for a non-h5ad file
        raise BioformerError(f"{path} is not a readable .h5ad file ({type(e).__name__}); write it with adata.write_h5ad()") from None


def _layer(adata: ad.AnnData, layer: str | None, path: Path) -> tuple:
    """The expression matrix `layer` names (None / "X": X, "raw": adata.raw) and its var frame."""
    if layer in (None, "X"):
        X, var = adata.X, adata.var
    elif layer == "raw":
        if adata.raw is None:
            raise BioformerError(f"{path.name} has no .raw; available layers: {sorted(adata.layers.keys()) or 'none'} (or omit --layer to use X)")
        X, var = adata.raw.X, adata.raw.var
    elif layer in adata.layers:
        X, var = adata.layers[layer], adata.var
    else:
        avail = sorted(adata.layers.keys())
        raise BioformerError(
            f"layer {layer!r} not found in {path.name}; available layers: {avail or 'none'}"
            + (" and 'raw'" if adata.raw is not None else "") + " (omit --layer to use X)"
        )
    if X is None:
        raise BioformerError(f"{path.name} has no expression matrix in X; pass --layer NAME")
    return X, var


def _gene_names(var: pd.DataFrame, gene_column: str | None) -> np.ndarray:
    """Gene symbols: the `gene_column` of var, or var_names."""
    if gene_column is not None:
        if gene_column not in var.columns:
            raise BioformerError(f"gene column {gene_column!r} not in var; available: {list(var.columns) or 'none'} (omit --gene-column to use var_names)")
        return var[gene_column].astype(str).to_numpy()
    return np.asarray(var.index, dtype=str)


def load_anndata(
    source: str | Path,
    layer: str | None = None,
    gene_column: str | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> ad.AnnData:
    """Read cells × genes with the expression matrix in `X` (CSR float32) and gene symbols as var_names.

    `source` is a built-in dataset name, a `synthetic:...` spec (bioformer.data.simulate) or a path. `layer` picks `layers[layer]` ("raw" picks
    `adata.raw`); `gene_column` a `var` column holding gene symbols. `max_cells` subsamples
    cells with `seed`. Columns sharing a gene name are summed (with a warning). Raises
    BioformerError on missing/unreadable files, unknown layers or columns, no cells or genes,
    negative, NaN or infinite values and all-zero cells.
    """
    source = str(source)
    is_file = source not in DATASETS and not is_synthetic(source)
    path = Path(source).expanduser() if is_file else data_file(source, quiet=quiet)
    adata = _read_h5ad(path)

    X, var = _layer(adata, layer, path)
    names = _gene_names(var, gene_column)

    if adata.n_obs == 0:
        raise BioformerError(f"{path.name} has no cells (0 rows); pass a file with cells")
    if len(names) == 0:
        raise BioformerError(f"{path.name} has no genes (0 columns); pass a file with genes")
    X = as_checked_csr(X, path.name)
    X.eliminate_zeros()
    X, names, dup = sum_duplicate_genes(X, names)
    if dup:
        log.warning(
            "%s: %d gene name(s) occur more than once (%s%s); their columns are summed into one gene",
            path.name, len(dup), ", ".join(dup[:5]), ", ..." if len(dup) > 5 else "",
        )

    out = ad.AnnData(X=X, obs=adata.obs.copy())
    out.var_names = names
    out.obs_names_make_unique()

    zero_cells = np.asarray(X.getnnz(axis=1) == 0)
    if zero_cells.any():
        raise BioformerError(
            f"{path.name}: {int(zero_cells.sum())} cell(s) have all-zero expression; remove them first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))"
        )

    out.uns["n_cells_in_file"] = int(out.n_obs)
    if max_cells is not None and max_cells < out.n_obs:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(out.n_obs, size=max_cells, replace=False))
        out = out[keep].copy()
    if not quiet:
        log.info("loaded %s: %d cells x %d genes", path.name, out.n_obs, out.n_vars)
    return out
