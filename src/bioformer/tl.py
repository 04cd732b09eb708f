"""Scanpy-style tools: use a trained run on an AnnData, results written into it.

    import bioformer as bf
    bf.tl.embed(adata, "runs/mine")                # obsm["X_bioformer"] (a scGPT run: "X_scgpt")
    bf.tl.impute(adata, run, layer="counts")       # layers["bioformer_imputed"], ["..._bins"]
    bf.tl.grn(adata, run, groupby="condition")     # varp["bioformer_pair_scores_<group>"]

Like `sc.tl.*`: `key_added` overrides the default key (named after the run's model family),
`copy=True` returns a new AnnData and leaves `adata` alone, else `adata` is modified in place and
None is returned. `uns[key]` records the absolute run directory, the model family, the package
version and the options. The `bioformer embed | impute | grn` commands call these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad

from bioformer.inference import outputs

if TYPE_CHECKING:
    from bioformer.inference.pairs import PairScores
    from bioformer.inference.run import Run


def as_run(run: Run | str | Path, device: str | None = None) -> Run:
    """A loaded `Run` from a `Run` or a run directory."""
    from bioformer.inference.run import Run

    return run if isinstance(run, Run) else Run.load(run, device=device)


def _apply(write, adata: ad.AnnData, run: Run | str | Path, copy: bool, layer: str | None,
           gene_column: str | None, **kwargs: Any) -> tuple[ad.AnnData, Any]:
    """Load the run, map `adata` onto its genes, call `write(run, target, cells, **kwargs)`."""
    loaded = as_run(run)
    cells = loaded.prepare(adata, layer=layer, gene_column=gene_column, quiet=True)
    target = adata.copy() if copy else adata
    return target, write(loaded, target, cells, **kwargs)


def embed(adata: ad.AnnData, run: Run | str | Path, key_added: str | None = None, copy: bool = False,
          pooling: str | None = None, layer: str | None = None, gene_column: str | None = None,
          batch_size: int | None = None, progress: bool = False, readout: str | None = None) -> ad.AnnData | None:
    """Cell embeddings [n_cells, d_model] -> obsm[key_added or "X_<family>"] by an embed readout
    (`bioformer readouts`: cls | mean; `pooling` is its older name)."""
    target, _ = _apply(outputs.add_embedding, adata, run, copy, layer, gene_column, readout=readout or pooling,
                       batch_size=batch_size, progress=progress, key=key_added)
    return target if copy else None


def impute(adata: ad.AnnData, run: Run | str | Path, key_added: str | None = None, copy: bool = False,
           layer: str | None = None, gene_column: str | None = None, batch_size: int | None = None,
           n_query: int | None = None, progress: bool = False, readout: str | None = None) -> ad.AnnData | None:
    """Imputed log-expression of every run gene -> layers[key_added or "<family>_imputed"] (+ "_bins"),
    by an impute readout (default "expression")."""
    target, _ = _apply(outputs.add_imputation, adata, run, copy, layer, gene_column, batch_size=batch_size,
                       n_query=n_query, progress=progress, key=key_added, readout=readout)
    return target if copy else None


def grn(adata: ad.AnnData, run: Run | str | Path, key_added: str | None = None, copy: bool = False,
        groupby: str | None = None, layer: str | None = None, gene_column: str | None = None,
        batch_size: int | None = None, progress: bool = False, readout: str | None = None) -> ad.AnnData | dict[str, PairScores]:
    """Gene x gene scores (row = source) of a grn readout (`bioformer readouts`; default
    BioFormer's last-block pair bias, scGPT's attention) -> varp[key_added or
    "<family>_pair_scores"], one per group of obs[groupby]. Returns the new AnnData with `copy`,
    else the PairScores by group (to rank edges: `scores["all"].to_edges(top_k=...)`)."""
    target, scores = _apply(outputs.add_pair_scores, adata, run, copy, layer, gene_column, groupby=groupby,
                            batch_size=batch_size, progress=progress, key=key_added, readout=readout)
    return target if copy else scores
