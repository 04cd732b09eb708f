"""scanpy preprocessing (filter, normalise, log1p, HVG, optional prior genes) and per-cell binning."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from bioformer.data.load import MIN_CELLS, check_cell_count
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")

LOGGED_MAX = 30.0  # log1p of a 1e4-normalised count stays far below this


def detect_input_kind(X: sp.csr_matrix) -> str:
    """'counts' (integers), 'logged' (non-integers, max <= 30) or 'normalized' (non-integers, larger)."""
    sample = X.data[: 1_000_000]
    if sample.size == 0 or np.all(np.equal(np.mod(sample, 1), 0)):
        return "counts"
    return "logged" if float(X.data.max()) <= LOGGED_MAX else "normalized"


def _hvg(adata: ad.AnnData, n_hvg: int, flavor: str, counts: sp.csr_matrix | None) -> np.ndarray:
    if n_hvg >= adata.n_vars:
        return np.ones(adata.n_vars, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flavor == "seurat_v3":
            if counts is None:
                raise BioformerError("seurat_v3 HVG selection needs raw counts; pass --hvg-flavor cell_ranger for logged input")
            tmp = ad.AnnData(X=counts, var=pd.DataFrame(index=adata.var_names))
            try:
                sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="seurat_v3")
            except ImportError:
                raise BioformerError("seurat_v3 HVG selection needs scikit-misc: pip install scikit-misc") from None
            except ValueError as e:  # loess fails on very few cells / degenerate variances
                raise BioformerError(f"seurat_v3 HVG selection failed on {adata.n_obs} cells ({e}); use more cells or --hvg-flavor cell_ranger") from None
            return tmp.var["highly_variable"].to_numpy()
        res = sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor=flavor, inplace=False)
        return res["highly_variable"].to_numpy()


def prior_gene_candidates(
    adata: ad.AnnData,
    selected: np.ndarray,
    edges: pd.DataFrame,
    min_cells_frac: float,
    max_prior_genes: int,
) -> np.ndarray:
    """Boolean mask of prior TFs/targets to add to `selected`.

    A candidate is any gene at an end of a prior edge, detected in >= min_cells_frac of cells,
    not already selected; candidates are ranked by their number of edges to the selected genes
    plus the other candidates, and the top `max_prior_genes` are kept.
    """
    names = np.asarray(adata.var_names)
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= max(1, min_cells_frac * adata.n_obs)
    in_prior = np.isin(names, np.union1d(edges["source"].to_numpy(), edges["target"].to_numpy()))
    cand = detected & in_prior & ~selected
    pool = set(names[cand | selected])
    e = edges[edges["source"].isin(pool) & edges["target"].isin(pool)]
    degree = pd.concat([e["source"], e["target"]]).value_counts()
    cand_names = names[cand]
    deg = degree.reindex(cand_names).fillna(0).to_numpy()
    order = np.lexsort((cand_names, -deg))  # by degree desc, then name
    chosen = [cand_names[i] for i in order[:max_prior_genes] if deg[i] > 0]
    return np.isin(names, chosen)


def bin_values(vals: np.ndarray, n_bins: int) -> np.ndarray:
    """One cell's non-zero values -> bins 1..n_bins-1 by average rank (see `bin_cells`). Any
    increasing transform of the values (normalize_total, log1p) gives the same bins."""
    # average ranks (1-based, ties share the mean rank), as scipy.stats.rankdata(method="average")
    # computes them, without its per-call overhead (this runs once per cell, per read in backed mode)
    order = np.argsort(vals, kind="stable")
    v = vals[order]
    first = np.r_[True, v[1:] != v[:-1]]  # [n] start of a group of ties
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], v.size]
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = (0.5 * (starts + ends + 1))[np.cumsum(first) - 1]
    return np.clip(np.ceil(ranks / vals.size * (n_bins - 1)), 1, n_bins - 1)


def bin_cells(X: sp.csr_matrix, n_bins: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Per-cell quantile binning of non-zero values into 1..n_bins-1 (0 stays 0).

    A value's bin is ceil(average rank / n_nonzero * (n_bins - 1)): ties share a bin, bins are
    monotone in the value, and a cell's non-zero values spread evenly over the bins. Returns the
    binned matrix (same sparsity) and per-cell edges [n_cells, n_bins] (the cell's value
    quantiles at k / (n_bins - 1)), so a bin can be mapped back to an expression range.
    """
    X = X.tocsr()
    X.sort_indices()
    out = X.copy().astype(np.float32)
    edges = np.zeros((X.shape[0], n_bins), dtype=np.float32)
    q = np.linspace(0.0, 1.0, n_bins)
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        vals = X.data[lo:hi]
        if vals.size == 0:
            continue
        out.data[lo:hi] = bin_values(vals, n_bins)
        edges[i] = np.quantile(vals, q)
    return out, edges


def bins_to_values(bins: np.ndarray, cell_edges: np.ndarray) -> np.ndarray:
    """Map (possibly fractional) bins of one cell back to log-expression: the midpoint of the
    bin's quantile interval (bin 0 -> 0). `cell_edges` is one row of `bin_cells`' edges."""
    b = np.clip(np.asarray(bins, dtype=np.float64), 0, len(cell_edges) - 1)
    k = np.clip(np.round(b).astype(int), 1, len(cell_edges) - 1)
    mid = 0.5 * (cell_edges[k - 1] + cell_edges[k])
    return np.where(b < 0.5, 0.0, mid)


def preprocess(
    adata: ad.AnnData,
    n_hvg: int = 512,
    n_bins: int = 51,
    min_counts: int = 3,
    hvg_flavor: str | None = None,
    genes: str = "hvg",
    prior_edges: pd.DataFrame | None = None,
    min_cells_frac: float = 0.01,
    max_prior_genes: int = 512,
    gene_list: list[str] | None = None,
    quiet: bool = False,
) -> ad.AnnData:
    """Return an AnnData over the selected genes with `X` = binned values and extras in `uns`/`obsm`.

    Steps (scanpy): filter genes with < `min_counts` counts, normalize_total(1e4), log1p, HVG
    selection (seurat_v3 on counts by default; cell_ranger on logged input), optionally plus
    prior genes (`genes="hvg+prior"`), then per-cell binning. `gene_list` skips selection and
    keeps exactly those genes (in that order; used to evaluate a trained model on new data).
    Already log-normalised input is detected and not normalised again; there, genes that are zero
    in every cell are removed instead of the count filter. Selecting genes needs >= MIN_CELLS cells.
    """
    say = (lambda *a: None) if quiet else log.info
    if genes not in ("hvg", "hvg+prior"):
        raise BioformerError(f"unknown gene selection {genes!r}; use hvg or hvg+prior")
    if adata.n_obs == 0:
        raise BioformerError("no cells to preprocess; pass a data set with cells")
    if gene_list is None:  # before any scanpy call: seurat_v3's loess crashes the process on 1 cell
        check_cell_count(adata.n_obs, MIN_CELLS, "data")
    kind = detect_input_kind(adata.X)
    adata = adata.copy()
    if gene_list is None:
        _filter_genes(adata, kind, min_counts, say)
    counts = _normalise(adata, kind, say)
    if gene_list is not None:
        out, hvg_mask, prior_mask = _keep_genes(adata, gene_list)
    else:
        flavor = hvg_flavor or ("seurat_v3" if kind == "counts" else "cell_ranger")
        hvg_mask = _hvg(adata, n_hvg, flavor, counts)
        prior_mask = np.zeros(adata.n_vars, dtype=bool)
        if genes == "hvg+prior":
            if prior_edges is None:
                raise BioformerError("--genes hvg+prior needs a prior; pass --prior collectri|dorothea|all|PATH or use --genes hvg")
            prior_mask = prior_gene_candidates(adata, hvg_mask, prior_edges, min_cells_frac, max_prior_genes)
        sel = hvg_mask | prior_mask
        out = adata[:, sel].copy()
        hvg_mask, prior_mask = hvg_mask[sel], prior_mask[sel]
        if out.n_vars == 0:
            raise BioformerError("no genes selected; raise --n-hvg")
    say("selected %d genes (%d HVG, %d added from the prior)", out.n_vars, int(hvg_mask.sum()), int(prior_mask.sum()))

    X = out.X.tocsr() if sp.issparse(out.X) else sp.csr_matrix(out.X)
    X.eliminate_zeros()
    binned, cell_edges = bin_cells(X, n_bins)
    out.X = binned
    out.obsm["bin_edges"] = cell_edges
    out.var["source"] = np.where(prior_mask, "prior", "hvg")
    out.uns["input_kind"] = kind
    return out


def _filter_genes(adata: ad.AnnData, kind: str, min_counts: int, say) -> None:
    """Drop (in place) genes never or too rarely seen: they carry nothing and break HVG binning
    ("Bin edges must be unique"); on logged input the count threshold has no meaning, so keep
    genes seen once."""
    n_before = adata.n_vars
    if kind == "counts":
        sc.pp.filter_genes(adata, min_counts=max(min_counts, 1))
        rule = f"with fewer than {min_counts} counts"
        fix = "lower --min-counts or check the input" if min_counts > 1 else "check the input"
    else:
        sc.pp.filter_genes(adata, min_cells=1)
        rule, fix = "that are zero in every cell", "check the input"
    if adata.n_vars == 0:
        raise BioformerError(f"no genes left after removing the {n_before} genes {rule}; {fix}")
    if adata.n_vars < n_before:
        say("removed %d genes %s", n_before - adata.n_vars, rule)


def _normalise(adata: ad.AnnData, kind: str, say):
    """normalize_total(1e4) + log1p in place, as far as the input `kind` still needs; returns the
    raw counts (for seurat_v3 HVGs) when the input was counts, else None."""
    if kind == "counts":
        counts = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        return counts
    if kind == "logged":
        say("input looks log-normalised already (non-integer values, max <= %.0f): skipping normalize_total/log1p", LOGGED_MAX)
    else:
        say("input looks normalised but not logged (non-integer values, max > %.0f): applying log1p only", LOGGED_MAX)
        sc.pp.log1p(adata)
    return None


def _keep_genes(adata: ad.AnnData, gene_list: list[str]) -> tuple[ad.AnnData, np.ndarray, np.ndarray]:
    """`adata` over the genes of `gene_list` it has (in that order), all marked HVG."""
    present = set(adata.var_names)  # once: a set per gene made this O(genes x input genes)
    keep = [g for g in gene_list if g in present]
    if not keep:
        raise BioformerError("none of the model's genes are in this data set; check --gene-column")
    out = adata[:, keep].copy()
    return out, np.ones(out.n_vars, dtype=bool), np.zeros(out.n_vars, dtype=bool)
