"""Data larger than memory: peak RSS of one (step-capped) training epoch in memory vs backed, and
the data pipeline's cells/s.

    python -m benchmarks.scale_data                      # 1,000,000 cells x 20,000 genes
    python -m benchmarks.scale_data --n-cells 100000     # what fits a 4 GiB budget in memory

The synthetic .h5ad (not committed; default benchmarks/data/) is generated from the real Kang
2018 PBMCs (13,576 cells x 14,053 genes): each synthetic cell draws Poisson(--umis) UMIs
(multinomial) from the gene distribution of a random Kang cell; the genes are Kang's 14,053 plus copies of the first ones up
to --n-genes (each UMI of such a gene moves to its copy with probability 0.3). It is written in
chunks straight into the h5ad layout (CSR X), so generating it never holds the matrix either.

Each mode runs in a fresh process (`--child MODE`) that prepares the data, trains one epoch of
a small BioFormer capped at --max-steps steps (validation and test on --eval-frac of the cells
each, so that evaluating does not dominate), and reports its own peak RSS (VmHWM), the time to
prepare, and the cells/s of the training DataLoader alone (read, bin, tokenise, mask, collate;
no model). Results go to benchmarks/results/scale_data.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT, table, vm_hwm, write_results

DATA = ROOT / "benchmarks" / "data"


def kang_counts():
    """Kang 2018 counts as CSR (cells x genes) and gene names."""
    import anndata as ad
    import scipy.sparse as sp

    from bioformer.data.datasets import fetch

    a = ad.read_h5ad(fetch("kang2018"), backed="r")  # X is dense on disk: convert 2,000 cells at a time
    parts = [sp.csr_matrix(np.asarray(a.X[lo:lo + 2000]), dtype=np.float64) for lo in range(0, a.n_obs, 2000)]
    X = sp.vstack(parts).tocsr()
    X.eliminate_zeros()
    return X, np.asarray(a.var_names, dtype=str)


def generate(path: Path, n_cells: int, n_genes: int, umis: int, seed: int = 0, chunk: int = 20_000) -> None:
    """Write the synthetic h5ad chunk by chunk (see the module docstring)."""
    import anndata as ad
    import h5py
    import pandas as pd

    src, names = kang_counts()
    n_src, g_src = src.shape
    if n_genes < g_src:
        raise SystemExit(f"--n-genes must be >= Kang's {g_src} genes")
    n_copy = n_genes - g_src
    gene_names = np.concatenate([names, [f"{names[i]}-copy" for i in range(n_copy)]])
    probs = src.multiply(1.0 / np.asarray(src.sum(axis=1))).tocsr()  # each Kang cell's gene distribution
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.h5ad")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        obs = pd.DataFrame(index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]))
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=pd.Index(gene_names)))
        for k in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(f, k, {})
        X = f.create_group("X")
        X.attrs["encoding-type"], X.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        X.attrs["shape"] = (n_cells, n_genes)
        data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 14,))
        indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 14,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        nnz = 0
        for lo in range(0, n_cells, chunk):
            hi = min(lo + chunk, n_cells)
            m = hi - lo
            cells = rng.integers(0, n_src, m)
            total = np.maximum(rng.poisson(umis, m), 1)
            rows_idx, rows_val = [], []
            for c, t in zip(cells, total, strict=True):
                lo_, hi_ = probs.indptr[c], probs.indptr[c + 1]
                counts = rng.multinomial(t, probs.data[lo_:hi_])  # t UMIs over the Kang cell's genes
                genes = probs.indices[lo_:hi_]
                moved = np.where(genes < n_copy, rng.binomial(counts, 0.3), 0)  # to the gene's copy
                stay = counts - moved
                idx = np.concatenate([genes[stay > 0], genes[moved > 0] + g_src])  # ascending: copies come last
                rows_idx.append(idx)
                rows_val.append(np.concatenate([stay[stay > 0], moved[moved > 0]]))
            sizes = np.array([len(r) for r in rows_idx])
            indptr[lo + 1:hi + 1] = nnz + np.cumsum(sizes)
            new = int(sizes.sum())
            data.resize((nnz + new,))
            indices.resize((nnz + new,))
            data[nnz:] = np.concatenate(rows_val).astype(np.float32)
            indices[nnz:] = np.concatenate(rows_idx).astype(np.int32)
            nnz += new
            print(f"\rgenerated {hi:,}/{n_cells:,} cells ({nnz / hi:.0f} genes/cell)", end="", file=sys.stderr, flush=True)
        X.create_dataset("indptr", data=indptr)
    print(file=sys.stderr)
    tmp.replace(path)


def child(mode: str, args: argparse.Namespace) -> dict:
    """One mode in this (fresh) process; returns its measurements."""
    import logging

    import torch
    from torch.utils.data import DataLoader

    from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from bioformer.data.pipeline import prepare_data
    from bioformer.data.tokenize import collate, length_grouped_batches
    from bioformer.training.run import run_training

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = RunConfig(
        data=DataConfig(data=str(args.file), n_hvg=512, genes="hvg", prior="none", max_len=128,
                        valid_frac=args.eval_frac, test_frac=args.eval_frac, backed=(mode == "backed")),
        model=ModelConfig.of(d_model=32, nhead=4, nlayers=2, d_z=8, d_opm=8),
        train=TrainConfig(epochs=1, batch_size=args.batch_size, max_steps=args.max_steps, progress=False,
                          num_threads=args.threads, warmup_steps=10),
        out=str(args.out / mode),
    )
    t0 = time.perf_counter()
    data = prepare_data(cfg.data, seed=0, need_prior=False, quiet=True)
    prep_s = time.perf_counter() - t0
    rss_prepared = vm_hwm()
    train_set = data.dataset("train")
    train_set.set_epoch(1)
    batches = length_grouped_batches(train_set.lengths(), args.batch_size, 1, True)[: args.pipeline_batches]
    t0 = time.perf_counter()
    n = 0
    for batch in DataLoader(train_set, batch_sampler=batches, collate_fn=collate, num_workers=0):
        n += batch["gene_ids"].shape[0]
    pipe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, summary = run_training(cfg, data=data, quiet=True)
    return {
        "mode": mode,
        "cells": int(data.adata.n_obs),
        "genes_selected": int(data.adata.n_vars),
        "prepare_s": prep_s,
        "prepare_cells_per_s": data.adata.n_obs / prep_s,
        "pipeline_cells_per_s": n / pipe_s,
        "pipeline_cells": n,
        "train_steps": args.max_steps,
        "train_eval_s": time.perf_counter() - t0,
        "test_mse": summary["test_mse"],
        "floor_gene_mean_mse": summary["floor_gene_mean_mse"],
        "peak_rss_after_prepare_gib": rss_prepared / 2**30,
        "peak_rss_gib": vm_hwm() / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-cells", type=int, default=1_000_000)
    p.add_argument("--n-genes", type=int, default=20_000)
    p.add_argument("--umis", type=int, default=1000, help="mean UMIs per synthetic cell (Poisson)")
    p.add_argument("--file", type=Path, help="the synthetic h5ad (default benchmarks/data/synthetic_CELLSxGENES.h5ad)")
    p.add_argument("--modes", default="memory,backed", help="which to measure, comma-separated")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pipeline-batches", type=int, default=100, help="batches read to time the data pipeline alone")
    p.add_argument("--eval-frac", type=float, default=0.002, help="valid and test share of the cells each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/bioformer_scale_data"))
    p.add_argument("--child", choices=["memory", "backed"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.file = args.file or DATA / f"synthetic_{args.n_cells}x{args.n_genes}.h5ad"
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    if not args.file.exists():
        t0 = time.perf_counter()
        generate(args.file, args.n_cells, args.n_genes, args.umis)
        print(f"wrote {args.file} ({args.file.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, "-m", "benchmarks.scale_data", "--child", mode, *sys.argv[1:]]
        if "--file" not in sys.argv:
            cmd += ["--file", str(args.file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"killed (rc {proc.returncode})"]
            rows.append({"mode": mode, "error": f"rc {proc.returncode}: {tail[0][:200]}"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    payload = {
        "file": str(args.file), "n_cells": args.n_cells, "n_genes": args.n_genes, "umis": args.umis,
        "file_gib": args.file.stat().st_size / 2**30, "max_steps": args.max_steps, "batch_size": args.batch_size,
        "threads": args.threads, "eval_frac": args.eval_frac, "rows": rows,
    }
    path = write_results(f"scale_data_{args.n_cells}", payload)
    print(table(rows, [("mode", "mode"), ("cells", "cells"), ("peak_rss_gib", "peak RSS (GiB)"),
                       ("peak_rss_after_prepare_gib", "after prepare (GiB)"), ("prepare_s", "prepare (s)"),
                       ("prepare_cells_per_s", "prepare cells/s"), ("pipeline_cells_per_s", "pipeline cells/s"),
                       ("train_eval_s", "train+eval (s)"), ("error", "error")]))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
