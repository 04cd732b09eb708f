"""Impute with isolated queries (the default) vs the older shared passes: quality and speed,
paired on the same cells of each run's own test split.

Each run's test cells get 10% of their non-zero counts hidden (`evaluation.use.hide_nonzeros`,
the use benchmark's protocol); both paths impute the same cells in one process (alternated,
one torch thread), and the hidden values are scored by MSE and Pearson r (log-normalised), and
hidden non-zero vs true zero by AUROC (`evaluation.use.imputation_scores`). The differences
(isolated - shared) get a 95% bootstrap interval over cells: the quality check that the fast path
may be the default. A hidden non-zero becomes one of the cell's unexpressed genes, so it is
predicted by exactly the part of `Run.imputation` that changed.

    python -m benchmarks.impute_isolation RUN_DIR [RUN_DIR ...] [--cells 200] [--seed 0] [--name impute_isolation]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import table, write_results


def score_cells(run, raw, cells: np.ndarray, isolated: bool, seed: int = 0) -> tuple[dict, np.ndarray, float]:
    """(scores, per-cell squared errors of the hidden values [n_hidden] with their cell, seconds)."""
    import anndata as ad

    from bioformer.evaluation.use import hide_nonzeros, imputation_scores, lognorm, zero_positions

    genes = {g: j for j, g in enumerate(run.genes)}
    gcols = np.array([i for i, g in enumerate(raw.var_names) if g in genes])  # raw columns of run genes
    j_of = np.array([genes[g] for g in raw.var_names[gcols]])
    hidden, hr, hc = hide_nonzeros(raw.X[cells], 0.10, seed=seed)
    pos = {c: k for k, c in enumerate(gcols)}
    keep = np.isin(hc, gcols)
    hr, hk = hr[keep], np.array([pos[c] for c in hc[keep]])
    zr, zc = zero_positions(raw.X[cells], gcols)
    zk = np.array([pos[c] for c in zc])
    truth = np.asarray(lognorm(raw.X[cells])[hr, gcols[hk]]).ravel()
    a = ad.AnnData(X=hidden, obs=raw.obs.iloc[cells].copy())
    a.var_names = raw.var_names
    t0 = time.perf_counter()
    res = run.imputation(a, isolated=isolated)
    secs = time.perf_counter() - t0
    value = (res.value_if_detected if res.value_if_detected is not None else res.expression)[:, j_of]
    detect = (res.detected_prob if res.detected_prob is not None else res.bins)[:, j_of]
    scores = imputation_scores(value[hr, hk], truth, detect[hr, hk], detect[zr, zk])
    return scores, np.c_[hr, (value[hr, hk] - truth) ** 2, value[hr, hk], truth], secs


def paired_interval(a: np.ndarray, b: np.ndarray, n_cells: int, seed: int = 0, n_boot: int = 1000) -> dict:
    """ΔMSE and ΔPearson (a - b) of hidden values with a 95% bootstrap interval over cells
    (a, b: rows of `score_cells`' per-entry array, same entries in the same order)."""
    rng = np.random.default_rng(seed)
    rows = a[:, 0].astype(int)
    by_cell = [np.flatnonzero(rows == c) for c in range(n_cells)]

    def deltas(idx: np.ndarray) -> tuple[float, float]:
        pa, pb = a[idx], b[idx]
        return pa[:, 1].mean() - pb[:, 1].mean(), np.corrcoef(pa[:, 2], pa[:, 3])[0, 1] - np.corrcoef(pb[:, 2], pb[:, 3])[0, 1]

    boot = np.array([deltas(np.concatenate([by_cell[c] for c in rng.integers(0, n_cells, n_cells)])) for _ in range(n_boot)])
    d_mse, d_r = deltas(np.arange(len(a)))
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {"d_mse": d_mse, "d_mse_ci": [lo[0], hi[0]], "d_pearson": d_r, "d_pearson_ci": [lo[1], hi[1]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cells", type=int, default=200, help="test cells per run (seeded subsample of its test split)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cell subsample and of the hidden entries")
    ap.add_argument("--name", default="impute_isolation")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from bioformer import Run
    from bioformer.data.load import load_anndata

    rows = []
    for run_dir in args.runs:
        run = Run.load(run_dir, device="cpu")
        raw = load_anndata(run.config.data.data, quiet=True)
        split = np.load(Path(run_dir) / "split.npz")
        pos = {n: i for i, n in enumerate(raw.obs_names)}
        test = np.array([pos[n] for n in split["obs_names"][split["test"]]])
        cells = np.sort(np.random.default_rng(args.seed).choice(test, min(args.cells, len(test)), replace=False))
        res = {}
        for isolated in (False, True, False, True):  # alternated: the second of each is timed again
            s, per, secs = score_cells(run, raw, cells, isolated, args.seed)
            res.setdefault(isolated, []).append((s, per, secs))
        row = {"run": Path(run_dir).name, "model": run.config.model.model, "pair_mode": run.config.model.bioformer.pair_mode,
               "cells": len(cells), "n_hidden": len(res[True][0][1])}
        for isolated, name in ((False, "shared"), (True, "isolated")):
            s = res[isolated][0][0]
            row.update({f"{name}_mse": s["mse"], f"{name}_pearson": s["pearson"], f"{name}_auroc": s["auroc_hidden_vs_zero"],
                        f"{name}_cells_per_s": len(cells) / min(r[2] for r in res[isolated])})
        row.update(paired_interval(res[True][0][1], res[False][0][1], len(cells)))
        row["d_auroc"] = row["isolated_auroc"] - row["shared_auroc"]
        row["speedup"] = row["isolated_cells_per_s"] / row["shared_cells_per_s"]
        assert np.array_equal(res[True][0][1], res[True][1][1]), "isolated imputation is not deterministic"
        rows.append(row)
        print(row, flush=True)
    cols = [("run", "run"), ("model", "model"), ("pair_mode", "pair mode"), ("cells", "cells"), ("n_hidden", "hidden"),
            ("shared_mse", "MSE shared"), ("isolated_mse", "MSE isolated"), ("d_mse", "ΔMSE"), ("shared_pearson", "r shared"),
            ("isolated_pearson", "r isolated"), ("d_pearson", "Δr"), ("shared_auroc", "AUROC shared"), ("isolated_auroc", "AUROC isolated"),
            ("shared_cells_per_s", "cells/s shared"), ("isolated_cells_per_s", "cells/s isolated"), ("speedup", "speed-up")]
    print(table(rows, cols))
    for r in rows:
        print(f"{r['run']}: ΔMSE {r['d_mse']:+.4f} [{r['d_mse_ci'][0]:+.4f}, {r['d_mse_ci'][1]:+.4f}], "
              f"Δr {r['d_pearson']:+.4f} [{r['d_pearson_ci'][0]:+.4f}, {r['d_pearson_ci'][1]:+.4f}], ΔAUROC {r['d_auroc']:+.4f}")
    print(f"wrote {write_results(args.name, {'cells': args.cells, 'seed': args.seed, 'threads': 1, 'rows': rows})}")


if __name__ == "__main__":
    main()
