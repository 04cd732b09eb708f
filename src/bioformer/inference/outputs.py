"""Results of a `Run` written back into AnnData (scverse conventions) and onto disk atomically.

Default keys are named after the run's model family (`bioformer`, `scgpt`, ...; `FAMILY` below),
so two models' results sit side by side in one AnnData; every writer takes `key` to override:

    obsm["X_FAMILY"]                    cell embeddings          (`add_embedding`)
    layers["FAMILY_imputed"]            imputed log-expression   (`add_imputation`)
    layers["FAMILY_imputed_bins"]       the same in bins
    varp["FAMILY_pair_scores"]          source -> target scores  (`add_pair_scores`)
    uns[<key>]                          how it was made: run (absolute path), model, version, options

Everything is over the *input's* genes: columns of genes the run does not know are zero (layers
and varp are sparse, so that costs nothing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioformer.errors import BioformerError
from bioformer.inference.cells import PreparedCells
from bioformer.inference.pairs import PairScores
from bioformer.inference.run import Run
from bioformer.training.checkpoint import new_temp_file


def default_key(run: Run, task: str) -> str:
    """The AnnData key a task ("embed" | "impute" | "grn") of `run` is written under by default
    (its readouts' `key`, e.g. "X_{family}")."""
    return run.readout(task).key.format(family=run.config.model.model)


def provenance(run: Run, **options: Any) -> dict[str, Any]:
    """What `uns` records about a readout: the absolute run directory, model family, package version."""
    from bioformer import __version__

    return {"run_dir": str(Path(run.run_dir).resolve()), "model": run.config.model.model,
            "bioformer_version": __version__, **options}


def _present(cells: PreparedCells) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the AnnData's genes that are run genes, their run columns), in its order."""
    to_run = cells.output_to_run
    pos = np.flatnonzero(to_run >= 0)
    return pos, to_run[pos]


def _on_input_genes(values: np.ndarray, cells: PreparedCells) -> sp.csr_matrix:
    """[n_cells, n_run_genes] dense -> [n_cells, n_input_genes] CSR, zero outside the run's genes."""
    pos, cols = _present(cells)
    sub = sp.csr_matrix(values[:, cols])  # columns 0..len(pos)-1, in input order
    return sp.csr_matrix((sub.data, pos[sub.indices], sub.indptr), shape=(values.shape[0], len(cells.output_to_run)))


def add_embedding(run: Run, adata: ad.AnnData, cells: PreparedCells, readout: str | None = None,
                  batch_size: int | None = None, progress: bool = False, key: str | None = None) -> str:
    """obsm[key] = run.embed(cells, readout) (default key "X_<family>"); how it was made in
    uns[key] ("pooling": the readout's name). Returns the key."""
    key = key or default_key(run, "embed")
    pool = run.readout("embed", readout)
    adata.obsm[key] = run.embed(cells, readout=pool, batch_size=batch_size, progress=progress)
    adata.uns[key] = provenance(run, readout=pool.name, pooling=pool.name, n_missing_genes=cells.n_missing)
    return key


def add_imputation(run: Run, adata: ad.AnnData, cells: PreparedCells, batch_size: int | None = None,
                   n_query: int | None = None, progress: bool = False, key: str | None = None,
                   readout: str | None = None) -> str:
    """layers[key] (log-normalised; default "<family>_imputed") and layers[key + "_bins"], over the
    input's genes (run genes only; others zero). With a zero head the imputed value is the
    expected value and layers[key + "_p_detected"] holds P(detected) = 1 - P(zero). Returns the key."""
    key = key or default_key(run, "impute")
    imp = run.imputation(cells, batch_size=batch_size, n_query=n_query, progress=progress, readout=readout)
    adata.layers[key] = _on_input_genes(imp.expression, cells)
    adata.layers[key + "_bins"] = _on_input_genes(imp.bins, cells)
    if imp.detected_prob is not None:
        adata.layers[key + "_p_detected"] = _on_input_genes(imp.detected_prob, cells)
    adata.uns[key] = provenance(run, readout=imp.readout, n_missing_genes=cells.n_missing, n_bins=run.config.data.n_bins)
    return key


def pair_matrix_on_input(pairs: PairScores, cells: PreparedCells) -> sp.csr_matrix:
    """[n_input_genes, n_input_genes] CSR of pair scores (source row, target column); zero where a
    gene is not a run gene or the pair was never in a cell together, and on the diagonal."""
    pos, cols = _present(cells)
    n = len(cells.output_to_run)
    sub_n = pairs.n_cells[np.ix_(cols, cols)]
    keep = (sub_n > 0) & ~np.eye(len(cols), dtype=bool)
    r, c = np.nonzero(keep)
    vals = pairs.scores[np.ix_(cols, cols)][r, c]
    return sp.csr_matrix((vals.astype(np.float32), (pos[r], pos[c])), shape=(n, n))


def add_pair_scores(run: Run, adata: ad.AnnData, cells: PreparedCells, groupby: str | None = None,
                    batch_size: int | None = None, progress: bool = False, key: str | None = None,
                    readout: str | None = None) -> dict[str, PairScores]:
    """varp[key] (default "<family>_pair_scores"; or one varp[key + "_<group>"] per group of
    obs[`groupby`]), how it was made in uns[key]; returns the PairScores by group name ("all"
    without groupby)."""
    key = key or default_key(run, "grn")
    if groupby is not None:
        if groupby not in adata.obs:
            raise BioformerError(f"groupby {groupby!r} is not an obs column; available: {list(adata.obs.columns)}")
        result = run.pair_scores(cells, batch_size=batch_size, progress=progress, groups=np.asarray(adata.obs[groupby].astype(str)), readout=readout)
    else:
        result = {"all": run.pair_scores(cells, batch_size=batch_size, progress=progress, readout=readout)}
    for name, pairs in result.items():
        adata.varp[key if groupby is None else f"{key}_{name}"] = pair_matrix_on_input(pairs, cells)
    readout = next(iter(result.values())).readout if result else ""
    adata.uns[key] = provenance(run, readout=readout, groupby=groupby or "", n_missing_genes=cells.n_missing)
    return result


def edge_table(result: dict[str, PairScores], top_k: int | None = None, min_cells: int = 1, grouped: bool = False) -> pd.DataFrame:
    """Ranked edges (source, target, score, n_cells[, group]), the top `top_k` per group."""
    frames = []
    for name, pairs in result.items():
        df = pairs.to_edges(top_k=top_k, min_cells=min_cells)
        if grouped:
            df.insert(0, "group", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["source", "target", "score", "n_cells"])


def write_h5ad_atomic(adata: ad.AnnData, path: str | Path) -> None:
    """Write to a temp file next to `path`, then rename: a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path, suffix=".tmp.h5ad")  # the user's umask, not mkstemp's 0600
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
