"""Does bf16 autocast train as well as fp32? Paired seeds: the same `bioformer train` recipe with
`--amp bf16` and `--amp off` (fp32) per seed and family, test MSE of each pair, and the mean of
bf16 - fp32 with its 95% t interval. With `benchmarks/amp.py` (where bf16 is faster) it decides
`--amp auto` on the CPU (`bioformer.training.runtime.CPU_BF16_MIN_D_MODEL`).

    python -m benchmarks.amp_quality --out /tmp/amp_quality [--families linear,scgpt:3] [--seeds 5]
        [--d-model 256] [--epochs 3] [--jobs 2]

A family's `:N` runs it on seeds 0..N-1 (default --seeds).

Runs that finished in --out are reused (the summary is read back), so an interrupted check
resumes. Each run uses one torch thread; --jobs runs that many at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import table, write_results
from bioformer.experiments.stats import paired_test

FAMILIES = {"linear": ["--pair-mode", "linear"], "full": ["--pair-mode", "full"], "scgpt": ["--model", "scgpt"]}
PRECISIONS = {"fp32": "off", "bf16": "bf16"}


def run_dir(out: Path, family: str, precision: str, seed: int) -> Path:
    return out / f"{family}-{PRECISIONS[precision]}-s{seed}"


def train(out: Path, family: str, precision: str, seed: int, args: argparse.Namespace) -> dict:
    """One run (or its finished summary): test MSE and seconds per epoch."""
    d = run_dir(out, family, precision, seed)
    if not (d / "summary.json").is_file():
        cmd = [sys.executable, "-m", "bioformer", "train", "--no-progress", "--num-threads", "1", "--data", args.data,
               "--d-model", str(args.d_model), "--epochs", str(args.epochs), "--seed", str(seed),
               "--amp", PRECISIONS[precision], *FAMILIES[family], "--out", str(d), "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    s = json.loads((d / "summary.json").read_text())
    return {"family": family, "precision": precision, "seed": seed, "test_mse": s["test"]["model"]["mse"],
            "s_per_epoch": s["seconds_per_epoch"], "autocast": s.get("autocast")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of the runs")
    ap.add_argument("--families", default="linear")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", default="pbmc3k")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    seeds = {f: int(n or args.seeds) for f, _, n in (x.partition(":") for x in args.families.split(","))}
    jobs = [(f, p, s) for f, n in seeds.items() for s in range(n) for p in PRECISIONS]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: train(out, *j, args), jobs))
    rows, pairs = [], []
    for fam, n in seeds.items():
        by = {(r["precision"], r["seed"]): r for r in runs if r["family"] == fam}
        fp32 = [by["fp32", s]["test_mse"] for s in range(n)]
        bf16 = [by["bf16", s]["test_mse"] for s in range(n)]
        for s in range(n):
            rows.append({"family": fam, "seed": s, "fp32": fp32[s], "bf16": bf16[s], "diff": bf16[s] - fp32[s],
                         "speed": by["fp32", s]["s_per_epoch"] / by["bf16", s]["s_per_epoch"]})
        t = paired_test(bf16, fp32)
        pairs.append({"family": fam, "d_model": args.d_model, "seeds": n, "mean_fp32": sum(fp32) / len(fp32),
                      "mean_bf16": sum(bf16) / len(bf16), **t})
    print(f"\ntest MSE, bf16 autocast vs fp32, d_model {args.d_model}, {args.epochs} epochs, {args.data}, paired seeds")
    print(table(rows, [("family", "family"), ("seed", "seed"), ("fp32", "fp32 MSE"), ("bf16", "bf16 MSE"),
                       ("diff", "bf16 - fp32"), ("speed", "s/epoch fp32 / bf16")]))
    print(table(pairs, [("family", "family"), ("seeds", "seeds"), ("mean_fp32", "fp32 mean"), ("mean_bf16", "bf16 mean"),
                        ("mean_diff", "bf16 - fp32"), ("ci_low", "95% CI low"), ("ci_high", "95% CI high"), ("t_p", "p (t)")]))
    path = write_results("amp_quality", {"argv": sys.argv[1:], "d_model": args.d_model, "epochs": args.epochs,
                                         "data": args.data, "runs": rows, "paired": pairs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
