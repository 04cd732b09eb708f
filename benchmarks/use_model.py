"""The judge of issue 27: is a trained model worth using, next to what scanpy gives in one line?

On the held-out **test** cells of PBMC3k (`celltype`) and Kang 2018 (`cell_type`), every cell of
each data set (train / valid / test split of the run), side by side in one run, for each model
(BioFormer in linear pair mode and scGPT families; arm `before` = the issue-27 options off, `after` =
the dropout-aware configuration: unexpressed genes in the sequences and the zero head, MVC off):

- embeddings: kNN (k = 15, fitted on `--knn-train-cells` training cells) cell-type accuracy and
  silhouette of the <cls> and mean embeddings, next to 50 PCs of the log-normalised run genes and
  an untrained model of the same configuration;
- imputation: hide 10% of each of `--impute-cells` test cells' non-zero counts; MSE / Pearson of
  the hidden values (value if detected for a zero-head model; its expected value too) against the
  per-gene mean and kNN smoothing (mean of the 15 nearest training cells in PCA space, also over
  the neighbours that express the gene), and the AUROC of hidden non-zero vs true zero
  (P(detected), else the predicted bin; floors: the kNN mean, the gene's detection rate);
- GRN: per-TF AUROC on the held-out prior edges of each model's best readout (chosen on the given
  edges, `inference/readout_choice.py`) vs |Pearson| co-expression;
- training time of each model (`summary.json`, contended).

Runs are trained first if missing (`bioformer train`, EPOCHS per data set, all cells):

    python benchmarks/use_model.py                 # writes benchmarks/results/use_model.json

Timings on a shared machine are contended: compare them within one run of this script only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABELS = {"pbmc3k": "celltype", "kang2018": "cell_type"}
EPOCHS = {"pbmc3k": 10, "kang2018": 3}  # Kang has 5x the cells: 3 epochs are ~1.5x PBMC3k's steps
FAMILIES = ("bioformer", "scgpt")
ARMS = {  # every arm names every issue-27 option, so a change of default cannot move an arm
    "before": ["--mvc-weight", "0", "--zero-gene-frac", "0", "--no-explicit-zero-prob"],
    "after": ["--mvc-weight", "0", "--zero-gene-frac", "0.25", "--explicit-zero-prob"],  # MVC: no effect shown
}
FAMILY_FLAGS = {"bioformer": ["--pair-mode", "linear"], "scgpt": []}  # linear: 1.25x faster, equal quality


def train_if_missing(runs: Path, arm: str, data: str, family: str, train: bool = True) -> Path | None:
    """The run directory of (arm, data, family), trained first if missing (None: missing and not `train`)."""
    out = runs / arm / f"{data}-{family}"
    if not (out / "summary.json").exists():
        if not train:
            print(f"missing (not trained: --no-train): {out}", flush=True)
            return None
        cmd = [sys.executable, "-m", "bioformer.cli", "-q", "train", "--data", data, "--model", family,
               "--epochs", str(EPOCHS[data]), "--num-threads", "1", "--no-progress", "--out", str(out), *ARMS[arm], *FAMILY_FLAGS[family]]
        print("training:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return out


def untrained_like(run):
    """The same Run with a freshly initialised model of its configuration (seeded)."""
    import copy

    import torch

    from bioformer.models import build_model, uses_prior

    fresh = copy.copy(run)
    torch.manual_seed(0)
    cfg = run.config
    fresh.model = build_model(cfg.model, len(run.vocab), run.vocab.pad_id, use_prior=uses_prior(cfg.model, cfg.data.prior)).eval()
    return fresh


def embeddings(models: dict, raw, labels, cells, tr, te, pcs) -> dict:
    """kNN accuracy and silhouette of every model's <cls> / mean embedding, 50 PCs, untrained models."""
    from bioformer.evaluation.use import embedding_scores

    sub = raw[cells].copy()
    out = {"pca50": embedding_scores(pcs[cells], labels[cells], tr, te)}
    for name, run in models.items():
        for pooling in ("cls", "mean"):
            t0 = time.perf_counter()
            emb = run.embed(sub, pooling=pooling)
            out[f"{name} {pooling}"] = {**embedding_scores(emb, labels[cells], tr, te), "cells_per_s": len(cells) / (time.perf_counter() - t0)}
            print(f"  embedding {name} {pooling}: {out[f'{name} {pooling}']}", flush=True)
    return out


def imputation(models: dict, raw, logn, gcols, train, test, pca, n_cells: int) -> dict:
    """Hidden-value and hidden-vs-zero scores of every model and the floors on `n_cells` test cells."""
    import anndata as ad

    from bioformer.evaluation.use import (
        hide_nonzeros,
        imputation_scores,
        knn_smoothing,
        lognorm,
        zero_positions,
    )

    imp = np.sort(np.random.default_rng(0).choice(test, min(n_cells, len(test)), replace=False))
    hidden, hr, hc = hide_nonzeros(raw.X[imp], 0.10, seed=0)
    j_of = {c: j for j, c in enumerate(gcols)}  # raw column -> position among the run genes
    keep = np.isin(hc, gcols)
    hr, hj = hr[keep], np.array([j_of[c] for c in hc[keep]])
    zr, zc = zero_positions(raw.X[imp], gcols)
    zj = np.array([j_of[c] for c in zc])
    truth = np.asarray(logn[imp][hr, gcols[hj]]).ravel()
    tr_logn = logn[train][:, gcols].toarray()
    expressing = (tr_logn > 0).sum(0)
    gene_mean = tr_logn.sum(0) / np.maximum(expressing, 1)
    hidden_logn = lognorm(hidden)[:, gcols].toarray()
    knn_mean, knn_expr = knn_smoothing(tr_logn, pca.transform(logn[train][:, gcols].toarray()), pca.transform(hidden_logn))
    detection = np.broadcast_to(expressing / len(train), knn_mean.shape)

    def floor(value, detect):
        return imputation_scores(value[hr, hj], truth, detect[hr, hj], detect[zr, zj])

    gm = np.broadcast_to(gene_mean, knn_mean.shape)
    out = {"n_cells": len(imp), "n_hidden": int(len(truth)), "n_true_zeros": int(len(zr)),
           "per-gene mean (detection rate for AUROC)": floor(gm, detection),
           "kNN-15 mean": floor(knn_mean, knn_mean),
           "kNN-15 mean of expressing neighbours": floor(np.where(knn_expr > 0, knn_expr, gm), knn_mean)}
    a = ad.AnnData(X=hidden, obs=raw.obs.iloc[imp].copy())
    a.var_names = raw.var_names
    for name, run in models.items():
        t0 = time.perf_counter()
        res = run.imputation(a)
        secs = time.perf_counter() - t0
        pos = np.array([run.genes.index(g) for g in raw.var_names[gcols]])  # run genes in gcols order
        value = (res.value_if_detected if res.value_if_detected is not None else res.expression)[:, pos]
        detect = (res.detected_prob if res.detected_prob is not None else res.bins)[:, pos]
        out[name] = {**floor(value, detect), "cells_per_s": len(imp) / secs}
        if res.value_if_detected is not None:
            out[name]["mse_expected_value"] = float(np.mean((res.expression[:, pos][hr, hj] - truth) ** 2))
        print(f"  imputation {name}: {out[name]}", flush=True)
    return out


def grn(run_dirs: dict) -> dict:
    """Per-TF AUROC (held-out prior edges) of each model's chosen readout and of co-expression."""
    from bioformer.inference.readout_choice import run_readout_table

    out = {}
    for name, run_dir in run_dirs.items():
        df = run_readout_table(run_dir, genie3=False)
        held = df[df["truth"] == "heldout prior edges"]
        if held.empty:
            continue
        best = held[held["chosen"] == True]  # noqa: E712 (a pandas column)
        co = held[held["predictor"] == "pearson co-expression"]
        pick = lambda r: {k: float(r[k]) for k in ("per_tf_auroc", "per_tf_auroc_low", "per_tf_auroc_high", "average_precision")}  # noqa: E731
        out[name] = {"readout": str(best.iloc[0]["predictor"]), **pick(best.iloc[0]),
                     "passes_control": bool(best.iloc[0]["passes_control"]), "coexpression": pick(co.iloc[0])}
        print(f"  GRN {name}: {out[name]}", flush=True)
    return out


def benchmark_data(data: str, runs: Path, knn_train_cells: int, impute_cells: int, with_grn: bool, train: bool = True,
                   embed_test_cells: int | None = None) -> dict:
    import pandas as pd
    import torch
    from sklearn.decomposition import PCA

    from bioformer import Run
    from bioformer.data.load import load_anndata
    from bioformer.evaluation.use import lognorm

    torch.set_num_threads(1)
    run_dirs = {f"{arm} {fam}": train_if_missing(runs, arm, data, fam, train) for arm in ARMS for fam in FAMILIES}
    run_dirs = {name: d for name, d in run_dirs.items() if d is not None}
    models = {name: Run.load(d, device="cpu") for name, d in run_dirs.items()}
    raw = load_anndata(data, quiet=True)  # every cell
    labels = raw.obs[LABELS[data]].astype(str).to_numpy()
    split = np.load(next(iter(run_dirs.values())) / "split.npz")
    for name, d in run_dirs.items():  # same data and seed: the same split for every model
        assert np.array_equal(np.load(d / "split.npz")["test"], split["test"]), name
    pos = {n: i for i, n in enumerate(raw.obs_names)}
    train = np.array([pos[n] for n in split["obs_names"][split["train"]]])
    test = np.array([pos[n] for n in split["obs_names"][split["test"]]])
    genes = next(iter(models.values())).genes
    gene_pos = {g: i for i, g in enumerate(raw.var_names)}
    gcols = np.array([gene_pos[g] for g in genes if g in gene_pos])
    logn = lognorm(raw.X)
    pca = PCA(n_components=50, random_state=0).fit(logn[train][:, gcols].toarray())
    pcs = pca.transform(logn[:, gcols].toarray())
    knn_train = np.sort(np.random.default_rng(0).choice(train, min(knn_train_cells, len(train)), replace=False))
    knn_test = np.sort(np.random.default_rng(1).choice(test, min(embed_test_cells or len(test), len(test)), replace=False))
    cells = np.r_[knn_train, knn_test]
    tr, te = np.arange(len(knn_train)), np.arange(len(knn_train), len(cells))
    result = {"data": data, "n_cells": int(raw.n_obs), "n_train_cells": int(len(train)), "n_test_cells": int(len(test)),
              "knn_train_cells": int(len(knn_train)), "embedding_test_cells": int(len(knn_test)), "n_run_genes": len(genes), "label": LABELS[data], "epochs": EPOCHS[data],
              # training time: the per-epoch seconds of metrics.csv (train + validation; a resumed run's
              # summary.json wall time counts only its last process)
              "train_seconds": {n: float(pd.read_csv(d / "metrics.csv")["seconds"].sum()) for n, d in run_dirs.items()},
              **{key: {n: json.loads((d / "summary.json").read_text()).get(field) for n, d in run_dirs.items()}
                 for key, field in (("epochs_trained", "epochs"), ("test_mse_vs_floor", "test_mse_vs_floor"))}}
    with_untrained = {**models, **{f"untrained {fam}": untrained_like(models[f"{arm} {fam}"]) for fam in FAMILIES
                                   for arm in [next((a for a in ARMS if f"{a} {fam}" in models), None)] if arm}}
    result["embedding"] = embeddings(with_untrained, raw, labels, cells, tr, te, pcs)
    result["imputation"] = imputation(models, raw, logn, gcols, train, test, pca, impute_cells)
    if with_grn:
        result["grn"] = grn(run_dirs)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=list(LABELS), choices=list(LABELS))
    p.add_argument("--runs", default=str(ROOT / "runs" / "use_model"), help="where the trained runs are (or go): RUNS/ARM/DATA-FAMILY")
    p.add_argument("--knn-train-cells", type=int, default=2000, help="training cells (seeded subsample) the kNN classifier is fitted on")
    p.add_argument("--embed-test-cells", type=int, default=None, help="test cells (seeded subsample) scored by the embeddings (default all)")
    p.add_argument("--impute-cells", type=int, default=100, help="test cells (seeded subsample) for the imputation benchmark")
    p.add_argument("--grn-data", nargs="*", default=list(LABELS), choices=list(LABELS), help="data sets that get the GRN readout table (none: skip it)")
    p.add_argument("--no-train", action="store_true", help="score only the runs that exist (no training)")
    p.add_argument("--out", default=str(RESULTS / "use_model.json"))
    args = p.parse_args()
    out_json = Path(args.out)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = {"note": "CPU, 1 thread, on a shared 2-core machine: timings are contended; compare them within one run only",
               "command": "python benchmarks/use_model.py " + " ".join(sys.argv[1:]), "arms": ARMS, "epochs": EPOCHS}
    for data in args.data:
        print(f"== {data}", flush=True)
        results[data] = benchmark_data(data, Path(args.runs), args.knn_train_cells, args.impute_cells, data in args.grn_data, not args.no_train, args.embed_test_cells)
        tmp = out_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out_json)
    print(format_table(results))
    print(f"wrote {out_json}", flush=True)


def format_table(results: dict) -> str:
    """The before / after table: one block per data set."""
    lines = []
    for data in (d for d in LABELS if d in results):
        r = results[data]
        lines.append(f"{data}: {r['embedding_test_cells']} of {r['n_test_cells']} test cells embedded, kNN fitted on {r['knn_train_cells']} training cells")
        e = r["embedding"]
        lines.append(f"  PCA-50: kNN {e['pca50']['knn_accuracy']:.3f}  silhouette {e['pca50']['silhouette']:.3f}")
        for name in (k.rsplit(" ", 1)[0] for k in e if k.endswith(" cls")):
            c, m = e[f"{name} cls"], e[f"{name} mean"]
            secs = r["train_seconds"].get(name)
            lines.append(f"  {name:<18} kNN cls {c['knn_accuracy']:.3f} mean {m['knn_accuracy']:.3f}  silhouette cls {c['silhouette']:.3f} mean {m['silhouette']:.3f}"
                         + (f"  trained in {secs / 60:.1f} min ({r['epochs_trained'][name]} epochs)" if secs else ""))
        for name, s in r["imputation"].items():
            if isinstance(s, dict):
                extra = f"  (expected value MSE {s['mse_expected_value']:.3f})" if "mse_expected_value" in s else ""
                lines.append(f"  impute {name:<40} MSE {s['mse']:.3f}  r {s['pearson']:.3f}  AUROC {s['auroc_hidden_vs_zero']:.3f}{extra}")
        for name, g in r.get("grn", {}).items():
            lines.append(f"  GRN {name:<18} {g['readout']}: per-TF AUROC {g['per_tf_auroc']:.3f} vs co-expression {g['coexpression']['per_tf_auroc']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
