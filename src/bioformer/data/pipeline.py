"""One call from a DataConfig to everything a model needs: binned cells, vocab, split, prior, coverage."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioformer.config import DataConfig, prior_enabled
from bioformer.data.backed import BackedData, prepare_backed, use_backed
from bioformer.data.datasets import DATASETS, cache_dir
from bioformer.data.load import check_cell_count, load_anndata, min_cells_for_split
from bioformer.data.preprocess import preprocess
from bioformer.data.prior import PriorMatrix, control_edges, load_edges, split_control
from bioformer.data.simulate import cached_simulation, is_synthetic
from bioformer.data.tokenize import (
    SPECIAL_TOKENS,
    CellDataset,
    GeneVocab,
    split_cells,
    split_cells_by_group,
)
from bioformer.errors import BioformerError

log = logging.getLogger("bioformer")


@dataclass
class PreparedData:
    adata: ad.AnnData  # cells x selected genes, X = bins, obsm["bin_edges"]
    vocab: GeneVocab
    split: dict[str, np.ndarray]
    prior: PriorMatrix | None
    config: DataConfig
    seed: int
    coverage: dict[str, float] = field(default_factory=dict)
    backed: BackedData | None = None  # set in backed mode: cells are read from the file on demand
    target_graph: sp.csr_matrix | None = None  # [genes, genes] real TF -> target edges (prior-targets masks)
    heldout_edges: pd.DataFrame | None = None  # prior edges withheld from z, scored as GRN truth

    @property
    def gene_token_ids(self) -> np.ndarray:
        t2i = self.vocab.token_to_id
        return np.array([t2i[g] for g in self.adata.var_names], dtype=np.int64)

    def dataset(self, split: str, mask_strategy: str | None = None) -> CellDataset:
        """The cells of `split` as masked sequences (mask_strategy: default the config's)."""
        c = self.config
        if self.backed is not None:
            if (mask_strategy or c.mask_strategy) != "random":
                raise BioformerError("--mask-strategy prior-targets is not available in backed mode (--no-backed reads the file into memory)")
            return self.backed.dataset(self.split[split], self.gene_token_ids, c, self.seed, self.vocab.cls_id, split != "train")
        return CellDataset(
            self.adata.X, self.gene_token_ids, self.split[split], seed=self.seed,
            max_len=c.max_len, include_zero_genes=c.include_zero_genes, append_cls=c.append_cls,
            mask_ratio=c.mask_ratio, cls_id=self.vocab.cls_id, fixed_masks=(split != "train"),
            mask_strategy=mask_strategy or c.mask_strategy, target_graph=self.target_graph, zero_gene_frac=c.zero_gene_frac,
        )

    def coverage_of(self, prior: PriorMatrix) -> dict[str, float]:
        """`prior_coverage` over the training sequences (backed: over the gene-selection
        subsample's expressed genes, which does not read every cell again)."""
        if self.backed is not None:
            cov = prior_coverage(self.backed.subsample.X, self.gene_token_ids, prior)
        else:
            cov = prior_coverage(self.adata.X, self.gene_token_ids, prior, self.dataset("train"))
        if self.heldout_edges is not None:
            cov["heldout_edges_in_prior"] = heldout_in_prior(prior, self.heldout_edges, self.vocab.token_to_id)
        return cov


def heldout_in_prior(prior: PriorMatrix, heldout: pd.DataFrame, token_to_id: dict[str, int]) -> int:
    """How many held-out (truth) edges the model's prior holds: 0 for every valid arm, real prior
    or control; anything else means the GRN score of that arm is contaminated."""
    src, tgt, _ = prior.edge_index()
    given = set(zip(src.tolist(), tgt.tolist(), strict=True))
    s, t = heldout["source"].map(token_to_id), heldout["target"].map(token_to_id)
    ok = s.notna() & t.notna()
    return int(sum((int(a), int(b)) in given for a, b in zip(s[ok], t[ok], strict=True)))


def target_graph(edges: pd.DataFrame, genes: list[str]) -> sp.csr_matrix:
    """[n_genes, n_genes] 0/1 matrix over `genes` (columns of the data): 1 at (TF, target)."""
    col = {g: i for i, g in enumerate(genes)}
    s = edges["source"].map(col)
    t = edges["target"].map(col)
    keep = (s.notna() & t.notna()).to_numpy()
    n = len(genes)
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (s[keep].astype(int).to_numpy(), t[keep].astype(int).to_numpy())), shape=(n, n),
    )


def prior_coverage(
    binned: sp.csr_matrix,
    gene_token_ids: np.ndarray,
    prior: PriorMatrix,
    dataset: CellDataset | None = None,
) -> dict[str, float]:
    """How much of the prior can reach the model.

    Counts TFs and edges (by sign) among the selected genes, and per cell the edges among the
    genes actually in that cell's sequence (from `dataset`, which applies the same non-zero /
    include-zero and max_len rules the model sees; without it, all non-zero genes).
    """
    src, tgt, sign = prior.edge_index()
    col_of = np.full(prior.vocab_size, -1, dtype=np.int64)
    col_of[gene_token_ids] = np.arange(len(gene_token_ids))
    s, t = col_of[src], col_of[tgt]
    ok = (s >= 0) & (t >= 0)
    s, t, sign = s[ok], t[ok], sign[ok]
    n = binned.shape[1]
    A = sp.csr_matrix((np.ones(len(s), dtype=np.float32), (s, t)), shape=(n, n))
    if dataset is None:
        S = (binned > 0).astype(np.float32).tocsr()
    else:
        rows, cols = [], []
        col_index = {int(g): i for i, g in enumerate(gene_token_ids)}
        for k in range(len(dataset)):
            ids = dataset[k]["gene_ids"]
            c = [col_index[int(g)] for g in ids if int(g) in col_index]
            rows.extend([k] * len(c))
            cols.extend(c)
        S = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(dataset), n))
    per_cell = np.asarray((S @ A).multiply(S).sum(axis=1)).ravel()
    return {
        "genes": int(n),
        "tfs": int(len(np.unique(s))),
        "edges": int(len(s)),
        "edges_activating": int((sign > 0).sum()),
        "edges_repressing": int((sign < 0).sum()),
        "edges_unsigned": int((sign == 0).sum()),
        "cells": int(S.shape[0]),
        "edges_per_cell_median": float(np.median(per_cell)) if per_cell.size else 0.0,
        "edges_per_cell_mean": float(per_cell.mean()) if per_cell.size else 0.0,
        "cells_without_edges_frac": float((per_cell == 0).mean()) if per_cell.size else 1.0,
    }


def edges_for_genes(prior: str, genes: set[str] | dict[str, int], seed: int, quiet: bool = True, heldout: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The edge table a model over `genes` gets for the option `prior`, without the `heldout`
    pairs (GRN truth the model must not see).

    The controls `NAME-rewired` (degree-preserving, avoiding NAME's edges), `NAME-random`
    (Erdos-Renyi, same density and sign mix) and `NAME-shuffled` are built *inside the genes*
    from NAME's edges among them, so they keep the number of edges the model sees (a genome-wide
    control would also thin the edges out, confounding knowledge with density). Held-out edges
    are removed from NAME's edges before a control is built from them, and the rewired and
    random controls never place an edge on a held-out pair (`control_edges(exclude=...)`).
    """
    base_name, suffix = split_control(prior)
    if suffix is not None:
        base = load_edges(base_name, seed=seed, quiet=quiet)
        gene_names = [g for g in genes if g not in SPECIAL_TOKENS]
        return control_edges(drop_edges(base, heldout), gene_names, suffix, seed, exclude=heldout)
    edges = load_edges(prior, seed=seed, quiet=quiet)
    return None if edges is None else drop_edges(edges, heldout)


def hold_out_edges(edges: pd.DataFrame | None, genes, frac: float, seed: int) -> pd.DataFrame | None:
    """A seeded `frac` of `edges` with both ends among `genes`: withheld from the model's prior
    and used only to score the gene x gene structure it learnt (GRN truth)."""
    if not 0 <= frac < 1:
        raise BioformerError(f"heldout_edge_frac must be in [0, 1), got {frac}")
    if edges is None or frac == 0:
        return None
    genes = set(genes)
    inside = edges[edges["source"].isin(genes) & edges["target"].isin(genes)].reset_index(drop=True)
    n = int(round(frac * len(inside)))
    pick = np.sort(np.random.default_rng([seed, 13]).choice(len(inside), size=n, replace=False))
    return inside.iloc[pick].reset_index(drop=True)


def drop_edges(edges: pd.DataFrame, remove: pd.DataFrame | None) -> pd.DataFrame:
    """`edges` without the (source, target) pairs of `remove` (e.g. held-out edges)."""
    if remove is None or remove.empty:
        return edges
    drop = pd.MultiIndex.from_frame(remove[["source", "target"]])
    keep = ~pd.MultiIndex.from_frame(edges[["source", "target"]]).isin(drop)
    return edges[keep].reset_index(drop=True)


def _unshuffled(prior: str | None) -> str | None:
    """The real prior behind a control name (collectri-rewired -> collectri)."""
    return split_control(prior)[0] if prior else prior


def role_prior(cfg: DataConfig, token_to_id: dict[str, int], seed: int = 0) -> PriorMatrix | None:
    """The whole gene-selection prior (held-out edges included, never shuffled) over a
    vocabulary: it names each masked gene's role (TF / target / neither) in its cell, the same
    for every arm of a study."""
    name = _unshuffled(cfg.gene_prior or cfg.prior)
    if not prior_enabled(name):
        return None
    return PriorMatrix.from_edges(load_edges(name, seed=seed), token_to_id)


def coverage_warning(cov: dict[str, float]) -> str | None:
    if cov.get("edges_per_cell_median", 0) > 0:
        return None
    return (
        "the prior cannot reach the model: the median cell has 0 prior edges among its genes "
        f"({cov.get('edges', 0)} edges among {cov.get('genes', 0)} genes); use --genes hvg+prior, "
        "a larger --n-hvg, or --include-zero-genes"
    )


def _split(adata: ad.AnnData, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Random split by cell, or the transfer split of `split_by` / `test_groups`."""
    if cfg.split_by is None and cfg.test_groups is None:
        return split_cells(adata.n_obs, cfg.valid_frac, cfg.test_frac, seed)
    if cfg.split_by is None or not cfg.test_groups:
        raise BioformerError("a transfer split needs both --split-by (an obs column) and --test-groups (its test values)")
    if cfg.split_by not in adata.obs.columns:
        raise BioformerError(f"--split-by {cfg.split_by!r} is not an obs column; columns: {', '.join(map(str, adata.obs.columns))}")
    groups = [g.strip() for g in cfg.test_groups.split(",") if g.strip()]
    return split_cells_by_group(adata.obs[cfg.split_by].to_numpy(), groups, cfg.valid_frac, seed, cfg.split_by)


def prepare_data(
    cfg: DataConfig,
    seed: int = 0,
    need_prior: bool = True,
    gene_list: list[str] | None = None,
    quiet: bool = False,
    require_prior_edges: bool = True,
    heldout_edges: pd.DataFrame | None = None,
) -> PreparedData:
    """Load, preprocess, tokenize and split `cfg.data`; build the prior over the vocabulary.

    `need_prior=False` skips the prior (e.g. scGPT with --genes hvg). `gene_list` fixes the
    genes (evaluating a trained model on other data). With `require_prior_edges`, a prior with no
    edge among the selected genes is an error (training would silently get a zero prior).
    A seeded `cfg.heldout_edge_frac` of the gene-selection prior's edges among the genes is
    withheld from the model's prior (`heldout_edges`, GRN truth; pass a run's table to reuse it).
    """
    backed_path = _backed_path(cfg)
    if backed_path is None:
        adata = load_anndata(cfg.data, cfg.layer, cfg.gene_column, cfg.max_cells, seed, quiet=quiet)
        if gene_list is None:  # before preprocessing: scanpy must never see too few cells
            n_file = adata.uns.get("n_cells_in_file", adata.n_obs)
            check_cell_count(adata.n_obs, min_cells_for_split(cfg.valid_frac, cfg.test_frac), Path(cfg.data).name, cfg.max_cells, n_file)
    use_prior = prior_enabled(cfg.prior)
    selection_prior = _unshuffled(cfg.gene_prior or (cfg.prior if use_prior else None))
    selection_edges: pd.DataFrame | None = None
    if cfg.genes == "hvg+prior" and gene_list is None:
        if not prior_enabled(selection_prior):
            raise BioformerError("--genes hvg+prior needs a prior (not --prior none); pass --gene-prior collectri or use --genes hvg")
        selection_edges = load_edges(selection_prior, seed=seed, quiet=quiet)
    if backed_path is not None:
        return _prepare_backed(cfg, backed_path, seed, need_prior and use_prior, gene_list, selection_edges, quiet, require_prior_edges, heldout_edges)
    binned = preprocess(
        adata, n_hvg=cfg.n_hvg, n_bins=cfg.n_bins, min_counts=cfg.min_counts,
        hvg_flavor=cfg.hvg_flavor, genes=cfg.genes, prior_edges=selection_edges,
        min_cells_frac=cfg.min_cells_frac, max_prior_genes=cfg.max_prior_genes,
        gene_list=gene_list, quiet=quiet,
    )
    empty = np.asarray(binned.X.getnnz(axis=1) == 0)
    if empty.any() and not cfg.include_zero_genes:
        if not quiet:
            log.warning("dropping %d cell(s) with no expressed selected genes", int(empty.sum()))
        binned = binned[~empty].copy()
    vocab = GeneVocab.from_genes(list(binned.var_names))
    split = _split(binned, cfg, seed)
    heldout_edges = _heldout(cfg, binned.var_names, seed, quiet, heldout_edges)
    prior = _build_prior(cfg, vocab, binned.n_vars, seed, quiet, require_prior_edges, heldout_edges) if (use_prior and need_prior) else None
    data = PreparedData(binned, vocab, split, prior, cfg, seed, heldout_edges=heldout_edges)
    real_prior = _unshuffled(cfg.prior if use_prior else cfg.gene_prior)
    if prior_enabled(real_prior):
        data.target_graph = target_graph(load_edges(real_prior, seed=seed, quiet=quiet), list(binned.var_names))
    elif cfg.mask_strategy == "prior-targets":
        raise BioformerError("--mask-strategy prior-targets needs a prior (its TF -> target edges choose the masks); pass --prior")
    if prior is not None:
        data.coverage = data.coverage_of(prior)
    return data


def _backed_path(cfg: DataConfig) -> Path | None:
    """The .h5ad path when it is to be read in backed mode (--backed, or large: see use_backed)."""
    if cfg.backed is False or cfg.data in DATASETS:
        return None
    path = Path(cfg.data).expanduser()
    if not path.is_file():
        return None  # load_anndata says what is wrong
    return path if use_backed(cfg, path) else None


def _heldout(cfg: DataConfig, genes, seed: int, quiet: bool, given: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """`given` (a run's own table) or a seeded `cfg.heldout_edge_frac` of the gene-selection
    prior's edges among `genes` (None without a prior); for a `synthetic:` prior, the simulated
    true edges among `genes` that its given prior leaves out (heldout_edge_frac is not used)."""
    if given is not None:
        return given
    truth_prior = _unshuffled(cfg.gene_prior or (cfg.prior if prior_enabled(cfg.prior) else None))
    if not prior_enabled(truth_prior):
        return None
    if is_synthetic(truth_prior):  # the simulator's true edges left out of the given prior
        held = pd.read_csv(cached_simulation(truth_prior, cache_dir()) / "heldout_edges.csv")
        inside = held["source"].isin(list(genes)) & held["target"].isin(list(genes))
        return held[inside].reset_index(drop=True)
    return hold_out_edges(load_edges(truth_prior, seed=seed, quiet=quiet), genes, cfg.heldout_edge_frac, seed)


def _build_prior(cfg: DataConfig, vocab: GeneVocab, n_genes: int, seed: int, quiet: bool, require_prior_edges: bool, heldout: pd.DataFrame | None = None) -> PriorMatrix:
    prior = PriorMatrix.from_edges(edges_for_genes(cfg.prior, vocab.token_to_id, seed, quiet, heldout=heldout), vocab.token_to_id)
    if prior.n_edges == 0 and require_prior_edges:
        fix = "check that the prior and the data name genes alike (--gene-column with symbols)"
        if cfg.genes != "hvg+prior":  # never advise what is already in effect
            fix += ", or use --genes hvg+prior"
        raise BioformerError(f"no prior edges between the selected genes ({n_genes} genes, prior {cfg.prior}); {fix}")
    return prior


def _prepare_backed(cfg, path, seed, with_prior, gene_list, selection_edges, quiet, require_prior_edges, heldout_edges=None) -> PreparedData:
    if cfg.split_by is not None or cfg.test_groups is not None or cfg.mask_strategy != "random":
        raise BioformerError("--split-by / --test-groups and --mask-strategy prior-targets are not available in backed mode; use --no-backed")
    frame, vocab, split, backed = prepare_backed(cfg, path, seed, gene_list, selection_edges, quiet)
    heldout = _heldout(cfg, vocab.genes, seed, quiet, heldout_edges)
    prior = _build_prior(cfg, vocab, frame.n_vars, seed, quiet, require_prior_edges, heldout) if with_prior else None
    data = PreparedData(frame, vocab, split, prior, cfg, seed, backed=backed, heldout_edges=heldout)
    if prior is not None:
        data.coverage = data.coverage_of(prior)
    return data
