"""Is a trained model worth using? Embeddings and imputation against what a user gets from scanpy.

- `embedding_scores`: kNN (k = 15, fitted on training cells) cell-type accuracy on test cells and
  the silhouette of the test cells by cell type, for any representation (a model's <cls> / mean
  embedding, 50 PCs of the same genes, an untrained model).
- `hide_nonzeros` + `imputation_scores`: hide a share of each cell's observed non-zero counts
  (they become zeros in the input, like a dropout), impute, and score (a) the hidden values
  (Pearson r, MSE on log-normalised values) and (b) how well a score tells a hidden non-zero from a
  true zero of the same cells (AUROC: P(detected) for a zero-head model, else the predicted value).
- `knn_smoothing`: the floors, a kNN mean in PCA space (also over the neighbours that express the
  gene) and the per-gene mean over expressing training cells.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bioformer.evaluation.grn import auroc


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 15) -> float:
    """Share of test cells whose k nearest training cells (Euclidean) vote for their own label."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def embedding_scores(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, k: int = 15) -> dict[str, float]:
    """kNN accuracy (train -> test) and silhouette (test cells, Euclidean) of a representation
    x [n_cells, d] against labels [n_cells]."""
    from sklearn.metrics import silhouette_score

    ok = np.isfinite(x).all(axis=1)
    tr, te = train[ok[train]], test[ok[test]]
    return {"knn_accuracy": knn_accuracy(x[tr], labels[tr], x[te], labels[te], k),
            "silhouette": float(silhouette_score(x[te], labels[te])) if len(set(labels[te])) > 1 else float("nan")}


def lognorm(counts: sp.spmatrix) -> sp.csr_matrix:
    """normalize_total(1e4) + log1p, as training does (scanpy)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32, copy=True))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return sp.csr_matrix(a.X)


def hide_nonzeros(counts: sp.spmatrix, frac: float, seed: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Counts with round(frac * nnz) of each cell's non-zero entries set to 0, and the (row, col)
    of the hidden entries."""
    X = sp.csr_matrix(counts, copy=True)
    X.sort_indices()
    rng = np.random.default_rng(seed)
    rows, cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        k = int(round(frac * (hi - lo)))
        if k == 0:
            continue
        pick = lo + rng.choice(hi - lo, size=k, replace=False)
        rows.append(np.full(k, i))
        cols.append(X.indices[pick].astype(np.int64))
        X.data[pick] = 0
    X.eliminate_zeros()
    return X, np.concatenate(rows), np.concatenate(cols)


def zero_positions(counts: sp.spmatrix, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the true zeros of `counts` among the columns `cols` (before hiding)."""
    dense = np.asarray(sp.csr_matrix(counts)[:, cols].todense())  # [cells, len(cols)]
    r, c = np.nonzero(dense == 0)
    return r, np.asarray(cols)[c]


def imputation_scores(value: np.ndarray, truth: np.ndarray, detect_hidden: np.ndarray, detect_zero: np.ndarray) -> dict[str, float]:
    """Pearson r and MSE of imputed `value` against `truth` at the hidden entries, and the AUROC of
    the detection score (hidden non-zeros positive, true zeros negative)."""
    labels = np.r_[np.ones(len(detect_hidden), bool), np.zeros(len(detect_zero), bool)]
    return {"pearson": float(np.corrcoef(value, truth)[0, 1]), "mse": float(np.mean((value - truth) ** 2)),
            "auroc_hidden_vs_zero": auroc(np.r_[detect_hidden, detect_zero], labels)}


def knn_smoothing(train_logn: np.ndarray, pcs_train: np.ndarray, pcs_query: np.ndarray, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """kNN floors [n_query, genes]: the mean of each query cell's k nearest training cells (PCA
    space), and the mean over those neighbours that express the gene (0 where none does)."""
    from sklearn.neighbors import NearestNeighbors

    _, nbr = NearestNeighbors(n_neighbors=k).fit(pcs_train).kneighbors(pcs_query)
    neigh = train_logn[nbr]  # [query, k, genes]
    n_expr = (neigh > 0).sum(axis=1)
    mean = neigh.mean(axis=1)
    mean_expr = np.divide(neigh.sum(axis=1), n_expr, out=np.zeros_like(mean), where=n_expr > 0)
    return mean, mean_expr
