"""Cells of any AnnData on a run's genes, preprocessed as training did (`prepare_cells`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioformer.config import DataConfig
from bioformer.data.load import as_checked_csr
from bioformer.data.preprocess import preprocess
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")


@dataclass
class PreparedCells:
    """Cells of any AnnData on a run's genes: `binned` [n_cells, n_run_genes] CSR of bins (0 = not
    expressed; run genes missing from the input are all-zero columns), `bin_edges` [n_cells, n_bins]
    per-cell edges to map bins back to log-normalised values."""

    binned: sp.csr_matrix
    bin_edges: np.ndarray
    obs_names: pd.Index
    input_genes: pd.Index  # the input's gene names (after gene_column)
    input_to_run: np.ndarray  # [n_input_genes] run gene column of each input gene, -1 if none
    n_missing: int  # run genes absent from the input
    var_to_run: np.ndarray | None = None  # [adata.n_vars] run column of each of the AnnData's own genes (-1: none),
    # when the matrix read (layer "raw") has other genes than adata.var; None: the same as input_to_run

    @property
    def output_to_run(self) -> np.ndarray:
        """Run column of each gene of the AnnData that outputs are written into."""
        return self.input_to_run if self.var_to_run is None else self.var_to_run

    @property
    def n_cells(self) -> int:
        return self.binned.shape[0]


def matrix_of(adata: ad.AnnData, layer: str | None, gene_column: str | None) -> tuple[sp.csr_matrix, pd.Index]:
    """(expression matrix as CSR float32, gene names) of an in-memory AnnData, checked as
    `load_anndata` checks files: known layer / gene column, values that can be expression."""
    if layer in (None, "X"):
        X, var = adata.X, adata.var
    elif layer == "raw":
        if adata.raw is None:
            raise BioformerError("the AnnData has no .raw; pass layer=None to use X or name a layer")
        X, var = adata.raw.X, adata.raw.var
    elif layer in adata.layers:
        X, var = adata.layers[layer], adata.var
    else:
        raise BioformerError(f"layer {layer!r} not found; available layers: {sorted(adata.layers.keys()) or 'none'} (omit it to use X)")
    if gene_column is not None and gene_column not in var.columns:
        raise BioformerError(f"gene column {gene_column!r} not in var; available: {list(var.columns)} (omit it to use var_names)")
    names = pd.Index(var[gene_column].astype(str) if gene_column is not None else var.index.astype(str))
    return as_checked_csr(X, "the input"), names


def prepare_cells(adata: ad.AnnData, genes: list[str], cfg: DataConfig, layer: str | None = None,
                  gene_column: str | None = None, quiet: bool = False) -> PreparedCells:
    """Map `adata` onto a run's `genes` by name and preprocess it as training did (`cfg`:
    normalise, log1p unless already logged, per-cell binning). Every cell is kept, in order; run
    genes the input lacks are treated as not expressed (their number is logged and kept in
    `n_missing`).
    """
    if isinstance(adata, PreparedCells):
        return adata
    X, names = matrix_of(adata, layer, gene_column)
    run_column = {g: i for i, g in enumerate(genes)}
    tmp = ad.AnnData(X=X, obs=pd.DataFrame(index=np.asarray(adata.obs_names, dtype=str)))
    tmp.var_names = names
    tmp.var_names_make_unique()
    input_to_run = np.array([run_column.get(g, -1) for g in tmp.var_names], dtype=np.int64)
    n_found = int((input_to_run >= 0).sum())
    if n_found == 0:
        raise BioformerError(
            f"none of the run's {len(genes)} genes (e.g. {', '.join(genes[:3])}) is among the "
            f"input's {len(names)} genes (e.g. {', '.join(map(str, names[:3]))}); pass gene_column/--gene-column "
            "with gene symbols"
        )
    binned = preprocess(tmp, n_bins=cfg.n_bins, min_counts=cfg.min_counts, gene_list=genes, quiet=True)
    cols = np.array([run_column[g] for g in binned.var_names], dtype=np.int64)
    B = binned.X.tocsr()
    B.sort_indices()
    full = sp.csr_matrix((B.data.astype(np.float32), cols[B.indices], B.indptr.copy()), shape=(B.shape[0], len(genes)))
    full.sort_indices()
    n_missing = len(genes) - n_found
    if not quiet:
        log.info("mapped %d cells onto the run's genes: %d of %d found, %d missing (treated as not expressed)",
                 full.shape[0], n_found, len(genes), n_missing)
    var_to_run = None
    if layer == "raw" and not adata.raw.var_names.equals(adata.var_names):  # scanpy: raw keeps every gene, X the HVGs
        pos = pd.Index(adata.raw.var_names).get_indexer(adata.var_names)
        var_to_run = np.where(pos >= 0, input_to_run[np.maximum(pos, 0)], -1)
    return PreparedCells(full, np.asarray(binned.obsm["bin_edges"]), tmp.obs_names, tmp.var_names, input_to_run, n_missing, var_to_run)
