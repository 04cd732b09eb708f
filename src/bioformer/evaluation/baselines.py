"""GRN baselines: what a gene x gene score matrix must beat, each [G, G] over the truth's genes.

- random: uniform scores (seeded);
- co-expression: |Pearson| and |Spearman| correlation over the training cells;
- GENIE3-style trees: per target gene, an extra-trees regression of its expression on the
  regulators' (the prior's TFs) over the training cells; a regulator's score for that target is
  its feature importance (Huynh-Thu et al. 2010, kept cheap: few trees, a cell subsample);
- degree (leak-free): visible out-degree of the source x visible in-degree of the target, from
  the edges the model was given (never from the truth), i.e. what knowing only which TFs and
  which targets are hubs in the prior scores. The old `degree_shuffle(truth)` kept 11-15% of
  the true edges (an oracle) and is gone.

Rows that cannot be scored (a non-regulator for GENIE3) are NaN: ranked last.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bioformer.errors import BioformerError


def coexpression(X: np.ndarray, method: str = "pearson") -> np.ndarray:
    """|correlation| between genes over cells: X [cells, G] -> [G, G]; constant genes score 0."""
    X = np.asarray(X, dtype=np.float64)
    if method == "spearman":
        from scipy.stats import rankdata

        X = rankdata(X, axis=0)
    elif method != "pearson":
        raise BioformerError(f"unknown co-expression method {method!r}; use pearson or spearman")
    Xc = X - X.mean(axis=0)
    norm = np.sqrt((Xc * Xc).sum(axis=0))
    norm[norm == 0] = np.inf
    Z = Xc / norm
    return np.abs(Z.T @ Z)


def genie3(X: np.ndarray, regulators: np.ndarray, seed: int = 0, n_trees: int = 20, max_cells: int = 400) -> np.ndarray:
    """GENIE3-style scores: X [cells, G] (training cells), regulators [R] column indices ->
    [G, G] with S[r, t] = importance of regulator r for target t (NaN on non-regulator rows and
    the diagonal). Each gene is scaled to unit variance, as in GENIE3."""
    from sklearn.ensemble import ExtraTreesRegressor

    X = np.asarray(X, dtype=np.float64)
    rng = np.random.default_rng([seed, 31])
    if X.shape[0] > max_cells:
        X = X[np.sort(rng.choice(X.shape[0], max_cells, replace=False))]
    sd = X.std(axis=0)
    Xs = X / np.where(sd > 0, sd, 1.0)
    regulators = np.asarray(sorted(set(int(r) for r in regulators)), dtype=np.int64)
    G = X.shape[1]
    S = np.full((G, G), np.nan)
    S[regulators] = 0.0
    for t in range(G):
        regs = regulators[regulators != t]
        if regs.size == 0 or sd[t] == 0:
            continue
        model = ExtraTreesRegressor(n_estimators=n_trees, max_features="sqrt", min_samples_leaf=5, random_state=int(rng.integers(2**31)), n_jobs=1)
        model.fit(Xs[:, regs], Xs[:, t])
        S[regs, t] = model.feature_importances_
    np.fill_diagonal(S, np.nan)
    return S


def degree_baseline(given: pd.DataFrame, genes: list[str]) -> np.ndarray:
    """[G, G]: out-degree(source) x in-degree(target) counted in `given` (the model's visible
    prior edges among `genes`): leak-free, it never looks at the truth."""
    idx = {g: i for i, g in enumerate(genes)}
    s, t = given["source"].map(idx), given["target"].map(idx)
    ok = s.notna() & t.notna()
    out_deg = np.bincount(s[ok].astype(int), minlength=len(genes)).astype(np.float64)
    in_deg = np.bincount(t[ok].astype(int), minlength=len(genes)).astype(np.float64)
    return out_deg[:, None] * in_deg[None, :]


def baselines(genes: list[str], X_train: np.ndarray | None, seed: int = 0, given: pd.DataFrame | None = None,
              regulators: list[str] | None = None, with_genie3: bool = True) -> dict[str, np.ndarray]:
    """Random, co-expression and GENIE3 (when X_train [cells, G] is given; GENIE3 also needs
    `regulators`, gene names) and the degree baseline (when the `given` edges are known)."""
    g = len(genes)
    out = {"random": np.random.default_rng([seed, 17]).random((g, g))}
    if X_train is not None:
        out["pearson co-expression"] = coexpression(X_train, "pearson")
        out["spearman co-expression"] = coexpression(X_train, "spearman")
        idx = {x: i for i, x in enumerate(genes)}
        regs = [idx[r] for r in (regulators or []) if r in idx]
        if with_genie3 and regs:
            out["GENIE3 (trees)"] = genie3(X_train, np.asarray(regs), seed)
    if given is not None:
        out["degree (visible out x in)"] = degree_baseline(given, genes)
    return out

