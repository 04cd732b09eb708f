"""Use a trained model: embeddings, imputation and speed, each against a straightforward floor.

For each data set (PBMC3k `celltype`, Kang 2018 `cell_type`) and each model (BioFormer, scGPT),
on the run's own **test** cells (never seen in training or model selection):

- embeddings: kNN (k = 15, fitted on the training cells) cell-type accuracy of `Run.embed`, next
  to 50 PCs of the log-normalised run genes (the HVGs + prior genes) of the same cells;
- imputation: hide 10% of the observed non-zero counts of each test cell (a seeded subsample of
  `--impute-cells` test cells, 100 by default: imputation asks every run gene), `Run.impute`, and
  score the hidden entries (Pearson r, MSE on log-normalised values) against the per-gene mean
  (training cells where the gene is expressed) and a kNN-smoothing floor (the mean of the 15
  nearest training cells in PCA space; also its mean over the neighbours that express the gene);
- inference speed (cells/s of embed, impute, pair scores) on the CPU;
- peak memory (max RSS) of a process that reads all 13,576 Kang cells and embeds them;
- a UMAP of the embedding coloured by cell type (PNG).

Runs are trained first if missing (`bioformer train ... --epochs 10 --num-threads 1`), e.g.

    python benchmarks/use_model.py                 # both data sets, writes benchmarks/results/use_model.json
    python benchmarks/use_model.py --data pbmc3k   # one data set (merged into the same JSON)

Timings on a shared machine are contended: compare them within one run of this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABELS = {"pbmc3k": "celltype", "kang2018": "cell_type"}
MAX_CELLS = {"pbmc3k": None, "kang2018": 3000}
MODELS = ("bioformer", "scgpt")


def train_if_missing(data: str, model: str, runs: Path, epochs: int) -> Path:
    out = runs / f"{data}-{model}"
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "bioformer.cli", "-q", "train", "--data", data, "--model", model,
               "--epochs", str(epochs), "--num-threads", "1", "--no-progress", "--out", str(out)]
        if MAX_CELLS[data]:
            cmd += ["--max-cells", str(MAX_CELLS[data])]
        print("training:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return out


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 15) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def lognorm(counts):
    """normalize_total(1e4) + log1p, as training does (scanpy)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a.X.tocsr()


def hide_nonzeros(counts, frac: float, seed: int):
    """Counts with `frac` of each cell's non-zero entries set to 0, and the (row, col) hidden."""
    import scipy.sparse as sp

    X = sp.csr_matrix(counts, copy=True)
    X.sort_indices()
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        n = hi - lo
        k = int(round(frac * n))
        if k == 0:
            continue
        pick = lo + rng.choice(n, size=k, replace=False)
        rows.append(np.full(k, i))
        cols.append(X.indices[pick])
        X.data[pick] = 0
    X.eliminate_zeros()
    return X, np.concatenate(rows), np.concatenate(cols)


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"pearson": float(np.corrcoef(pred, truth)[0, 1]), "mse": float(np.mean((pred - truth) ** 2))}


def benchmark_data(data: str, runs: Path, epochs: int, batch_size: int, out_png: Path, impute_cells: int = 100) -> dict:
    import anndata as ad
    import scanpy as sc
    import torch
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from bioformer import Run
    from bioformer.data.load import load_anndata

    torch.set_num_threads(1)
    run_dirs = {m: train_if_missing(data, m, runs, epochs) for m in MODELS}
    loaded = {m: Run.load(d, device="cpu") for m, d in run_dirs.items()}
    first = loaded["bioformer"]
    raw = load_anndata(data, max_cells=MAX_CELLS[data], seed=first.config.train.seed, quiet=True)
    labels = raw.obs[LABELS[data]].astype(str).to_numpy()
    split = np.load(run_dirs["bioformer"] / "split.npz")
    names = split["obs_names"]
    train_names, test_names = names[split["train"]], names[split["test"]]
    pos = {n: i for i, n in enumerate(raw.obs_names)}
    train_idx = np.array([pos[n] for n in train_names])
    test_idx = np.array([pos[n] for n in test_names])
    for m in loaded:  # every model was trained on the same split (same seed and data)
        s = np.load(run_dirs[m] / "split.npz")
        assert np.array_equal(s["obs_names"][s["test"]], test_names), m
    genes = first.genes
    gene_pos = {g: i for i, g in enumerate(raw.var_names)}
    gcols = np.array([gene_pos[g] for g in genes if g in gene_pos])
    logn = lognorm(raw.X)  # cells x all genes
    logn_run = logn[:, gcols].toarray()  # cells x run genes (dense: 2.7k x 768)
    pca = PCA(n_components=50, random_state=0).fit(logn_run[train_idx])
    pcs = pca.transform(logn_run)
    y_train, y_test = labels[train_idx], labels[test_idx]
    result: dict = {"data": data, "n_train_cells": int(len(train_idx)), "n_test_cells": int(len(test_idx)),
                    "n_run_genes": len(genes), "label": LABELS[data],
                    "knn_accuracy": {"pca50": knn_accuracy(pcs[train_idx], y_train, pcs[test_idx], y_test)}}

    print(f"{data}: PCA kNN accuracy {result['knn_accuracy']['pca50']:.3f}", flush=True)
    # imputation: hide 10% of each test cell's non-zero counts (on a seeded subsample of test cells)
    imp_idx = test_idx if impute_cells >= len(test_idx) else np.sort(np.random.default_rng(0).choice(test_idx, impute_cells, replace=False))
    test_counts = raw.X[imp_idx]
    hidden_counts, hr, hc = hide_nonzeros(test_counts, 0.10, seed=0)
    run_col = {g: i for i, g in enumerate(genes)}
    col_name = np.asarray(raw.var_names)
    in_run = np.array([c in run_col for c in col_name[hc]])
    hr, hc = hr[in_run], hc[in_run]
    truth = np.asarray(logn[imp_idx][hr, hc]).ravel()
    hidden = ad.AnnData(X=hidden_counts, obs=raw.obs.iloc[imp_idx].copy())
    hidden.var_names = raw.var_names
    run_cols = np.array([run_col[g] for g in col_name[hc]])
    # floors: per-gene mean over training cells that express the gene; kNN smoothing in PCA space
    tr = logn[train_idx][:, gcols].tocsc()
    n_expr = np.diff(tr.indptr)
    gene_mean = np.asarray(tr.sum(axis=0)).ravel() / np.maximum(n_expr, 1)
    gcol_of_run = {g: j for j, g in enumerate(g for g in genes if g in gene_pos)}
    jj = np.array([gcol_of_run[g] for g in col_name[hc]])
    hidden_logn_run = lognorm(hidden_counts)[:, gcols].toarray()
    nn = NearestNeighbors(n_neighbors=15).fit(pcs[train_idx])
    _, nbr = nn.kneighbors(pca.transform(hidden_logn_run))
    neigh = logn_run[train_idx][nbr]  # [test, 15, genes]
    knn_mean = neigh.mean(axis=1)
    knn_expr = np.divide(neigh.sum(axis=1), (neigh > 0).sum(axis=1), out=np.zeros_like(knn_mean), where=(neigh > 0).sum(axis=1) > 0)
    imput = {
        "n_cells": int(len(imp_idx)),
        "n_hidden": int(len(truth)),
        "per_gene_mean": scores(gene_mean[jj], truth),
        "knn15_mean": scores(knn_mean[hr, jj], truth),
        "knn15_mean_of_expressing": scores(np.where(knn_expr[hr, jj] > 0, knn_expr[hr, jj], gene_mean[jj]), truth),
    }
    speed: dict = {}
    emb_all = {}
    print(f"{data}: floors {imput}", flush=True)
    for m, run in loaded.items():
        t0 = time.perf_counter()
        emb = run.embed(raw, batch_size=batch_size)
        speed[f"{m}_embed_cells_per_s"] = raw.n_obs / (time.perf_counter() - t0)
        emb_all[m] = emb
        result["knn_accuracy"][m] = knn_accuracy(emb[train_idx], y_train, emb[test_idx], y_test)
        print(f"{data} {m}: embed {speed[f'{m}_embed_cells_per_s']:.1f} cells/s, kNN accuracy {result['knn_accuracy'][m]:.3f}", flush=True)
        t0 = time.perf_counter()
        pred = run.impute(hidden, batch_size=batch_size)
        speed[f"{m}_impute_cells_per_s"] = hidden.n_obs / (time.perf_counter() - t0)
        imput[m] = scores(pred[hr, run_cols], truth)
        print(f"{data} {m}: impute {speed[f'{m}_impute_cells_per_s']:.2f} cells/s, {imput[m]}", flush=True)
        if m == "bioformer" and not run.model.uses_z:
            continue
        sub = raw[test_idx].copy()
        t0 = time.perf_counter()
        run.pair_scores(sub, batch_size=batch_size)
        speed[f"{m}_pair_scores_cells_per_s"] = sub.n_obs / (time.perf_counter() - t0)
    result["imputation"] = imput
    result["speed_cpu_1_thread_contended"] = speed
    result["test_mse_vs_floor"] = {m: json.loads((run_dirs[m] / "summary.json").read_text())["test_mse_vs_floor"] for m in MODELS}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, (name, rep) in zip(axes, [("BioFormer <cls>", emb_all["bioformer"]), ("scGPT <cls>", emb_all["scgpt"]), ("50 PCs", pcs)], strict=True):
        a = ad.AnnData(X=np.zeros((raw.n_obs, 1), dtype=np.float32), obs={"cell type": labels})
        a.obsm["rep"] = rep
        sc.pp.neighbors(a, use_rep="rep", random_state=0)
        sc.tl.umap(a, random_state=0)
        sc.pl.umap(a, color="cell type", ax=ax, show=False, title=f"{data}: {name}", legend_loc="right margin" if ax is axes[-1] else None)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    result["umap_png"] = str(out_png.relative_to(ROOT))
    return result


def knn_by_pooling(data: str, runs: Path, epochs: int, batch_size: int) -> dict:
    """kNN (k = 15) test accuracy of both poolings (<cls>, mean over gene tokens) of both models."""
    import torch

    from bioformer import Run
    from bioformer.data.load import load_anndata

    torch.set_num_threads(1)
    out = {}
    for m in MODELS:
        run_dir = train_if_missing(data, m, runs, epochs)
        run = Run.load(run_dir, device="cpu")
        raw = load_anndata(data, max_cells=MAX_CELLS[data], seed=run.config.train.seed, quiet=True)
        labels = raw.obs[LABELS[data]].astype(str).to_numpy()
        split = np.load(run_dir / "split.npz")
        pos = {n: i for i, n in enumerate(raw.obs_names)}
        tr = np.array([pos[n] for n in split["obs_names"][split["train"]]])
        te = np.array([pos[n] for n in split["obs_names"][split["test"]]])
        for pooling in ("cls", "mean"):
            emb = run.embed(raw, pooling=pooling, batch_size=batch_size)
            out[f"{m}_{pooling}"] = knn_accuracy(emb[tr], labels[tr], emb[te], labels[te])
            print(f"{data} {m} {pooling}: kNN accuracy {out[f'{m}_{pooling}']:.3f}", flush=True)
    return out


def embed_memory(run_dir: Path, batch_size: int) -> dict:
    """Max RSS of a fresh process that reads all Kang cells (sparse) and embeds them."""
    sparse = Path("/tmp") / f"kang_sparse_{os.getpid()}.h5ad"
    prep = ("from bioformer.data.load import load_anndata; a = load_anndata('kang2018', quiet=True); "
            f"a.obs = a.obs[['cell_type']]; a.write_h5ad({str(sparse)!r})")
    subprocess.run([sys.executable, "-c", prep], check=True)
    code = f"""
import resource, time, json, anndata as ad, torch
torch.set_num_threads(1)
from bioformer import Run
run = Run.load({str(run_dir)!r}, device="cpu")
a = ad.read_h5ad({str(sparse)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
emb = run.embed(a, batch_size={batch_size})
sec = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"n_cells": a.n_obs, "shape": list(emb.shape), "max_rss_before_embed_mib": before / 1024, "max_rss_after_embed_mib": after / 1024, "seconds": sec}}))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    finally:
        sparse.unlink(missing_ok=True)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=list(LABELS), choices=list(LABELS))
    p.add_argument("--runs", default=str(ROOT / "runs" / "use_model"), help="where the trained runs are (or go)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--impute-cells", type=int, default=100, help="test cells (seeded subsample) for the imputation benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the Kang embed peak-memory process")
    p.add_argument("--memory-only", action="store_true", help="only the Kang embed peak-memory process")
    p.add_argument("--pooling-only", action="store_true", help="only kNN accuracy of <cls> vs mean pooling (key DATA_knn_by_pooling)")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "use_model.json"

    def save(key: str, value) -> None:  # re-read first: a parallel --memory-only run writes its own key
        results = json.loads(out_json.read_text()) if out_json.exists() else {}
        results["note"] = "CPU, 1 thread, on a shared 2-core machine: timings are contended; compare them within one run only"
        results[key] = value
        out_json.write_text(json.dumps(results, indent=2) + "\n")

    runs = Path(args.runs)
    if args.pooling_only:
        for data in args.data:
            save(f"{data}_knn_by_pooling", knn_by_pooling(data, runs, args.epochs, args.batch_size))
        return
    for data in [] if args.memory_only else args.data:
        r = benchmark_data(data, runs, args.epochs, args.batch_size, RESULTS / f"use_model_umap_{data}.png", args.impute_cells)
        r["max_rss_mib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r, indent=2), flush=True)
        save(data, r)
    if not args.no_memory:
        kang_run = train_if_missing("kang2018", "bioformer", runs, args.epochs)
        mem = {"run": "kang2018-bioformer", "batch_size": args.batch_size, **embed_memory(kang_run, args.batch_size)}
        print(json.dumps(mem, indent=2), flush=True)
        save("kang_embed_memory", mem)
    print(f"wrote {out_json}", flush=True)

if __name__ == "__main__":
    main()
