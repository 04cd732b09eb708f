"""Regenerate the test fixture from the pinned sources (run from the repo root).

tests/fixtures/pbmc3k_small.h5ad: 300 PBMC3k cells (seeded) x 1,000 genes, raw counts (CSR),
obs["celltype"]; the genes are the 700 top seurat_v3 HVGs of those cells plus the 300 most
detected CollecTRI TFs/targets not already among them, so the prior reaches the fixture.
tests/fixtures/prior_edges.csv: the CollecTRI edges (source, target, sign) among those genes.

    python scripts/make_fixture.py
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from bioformer.data.load import load_anndata
from bioformer.data.prior import omnipath_edges

OUT = Path("tests/fixtures")


def main() -> None:
    adata = load_anndata("pbmc3k", max_cells=300, seed=0)
    adata = adata[:, np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 3].copy()
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=700, flavor="seurat_v3", inplace=False)["highly_variable"].to_numpy()
    edges = omnipath_edges("collectri")
    names = np.asarray(adata.var_names)
    in_prior = np.isin(names, np.union1d(edges["source"], edges["target"]))
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    cand = np.where(in_prior & ~hvg)[0]
    extra = cand[np.argsort(-detected[cand], kind="stable")[:300]]
    keep = np.sort(np.concatenate([np.where(hvg)[0], extra]))
    small = adata[:, keep].copy()
    X = sp.csr_matrix(small.X, dtype=np.float32)
    out = ad.AnnData(X=X, obs=pd.DataFrame({"celltype": small.obs["celltype"].astype(str).to_numpy()}, index=small.obs_names), var=pd.DataFrame(index=small.var_names))
    OUT.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(OUT / "pbmc3k_small.h5ad", compression="gzip")
    genes = set(out.var_names)
    e = edges[edges["source"].isin(genes) & edges["target"].isin(genes)]
    e.to_csv(OUT / "prior_edges.csv", index=False)
    print(f"wrote {out.n_obs} cells x {out.n_vars} genes, {len(e)} prior edges")


if __name__ == "__main__":
    main()
