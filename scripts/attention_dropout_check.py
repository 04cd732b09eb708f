"""Paired check of attention dropout 0 vs 0.1 (residual/feed-forward dropout 0.1 in both arms):
the same seeds train both arms (`bioformer train`, everything else at its defaults), and the
test MSE difference (0 minus 0.1) per seed gets a mean and a t 95% CI. Finished runs are reused.

    python scripts/attention_dropout_check.py --seeds 5 --max-cells 1000 --epochs 10 --jobs 2 \\
        --out results/attention-dropout

Writes OUT/results.csv (one row per run) and prints the paired table (docs/attention-dropout.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

from bioformer.experiments.power import paired_power

ARMS = {"attn0": 0.0, "attn0.1": 0.1}


def train(out: Path, seed: int, p_attn: float, args: argparse.Namespace) -> dict | None:
    run = out / f"seed{seed}-attn{p_attn}"
    if not (run / "summary.json").exists():
        if args.report_only:
            return None
        cmd = [sys.executable, "-m", "bioformer.cli", "-q", "train", "--no-progress", "--num-threads", "1",
               "--seed", str(seed), "--attention-dropout", str(p_attn), "--dropout", "0.1",
               "--epochs", str(args.epochs), "--out", str(run), "--overwrite", *args.extra]
        if args.max_cells:
            cmd += ["--max-cells", str(args.max_cells)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads((run / "summary.json").read_text())
    return {"seed": seed, "attention_dropout": p_attn, "test_mse": s["test_mse"], "floor_cell_mse": s["floor_cell_mse"],
            "seconds_per_epoch": s["seconds_per_epoch"], "best_epoch": s["best_epoch"], "run": str(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-cells", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="results/attention-dropout")
    ap.add_argument("--csv", help="write the per-run table here (default OUT/results.csv)")
    ap.add_argument("--report-only", action="store_true", help="only read the finished runs (pairs with both arms)")
    ap.add_argument("extra", nargs="*", help="more `bioformer train` flags after --, e.g. -- --pair-mode linear")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, p) for s in range(args.seeds) for p in ARMS.values()]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for r in pool.map(lambda j: train(out, j[0], j[1], args), jobs) if r is not None]
    by = {(r["seed"], r["attention_dropout"]): r for r in rows}
    seeds = [s for s in range(args.seeds) if (s, 0.0) in by and (s, 0.1) in by]
    rows = [r for r in rows if r["seed"] in seeds]
    with (Path(args.csv) if args.csv else out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    diffs = [by[(s, 0.0)]["test_mse"] - by[(s, 0.1)]["test_mse"] for s in seeds]
    print("| seed | test MSE, attention dropout 0 | 0.1 | difference | s/epoch 0 | s/epoch 0.1 |")
    print("|---|---|---|---|---|---|")
    for s, d in zip(seeds, diffs, strict=True):
        a, b = by[(s, 0.0)], by[(s, 0.1)]
        print(f"| {s} | {a['test_mse']:.3f} | {b['test_mse']:.3f} | {d:+.3f} | {a['seconds_per_epoch']:.1f} | {b['seconds_per_epoch']:.1f} |")
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    print(f"\nmean difference (0 - 0.1) {mean:+.3f}, 95% CI [{mean - half:+.3f}, {mean + half:+.3f}] over {n} seeds; "
          f"smallest |difference| these seeds would detect 4 times in 5: {paired_power(diffs)['mde']:.2f}")


if __name__ == "__main__":
    main()
