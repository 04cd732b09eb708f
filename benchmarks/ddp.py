"""Training throughput on 1 and N processes (DDP via torchrun): cells/s and efficiency.

    python -m benchmarks.ddp                        # CPU: 1 and 2 processes, 1 thread each
    python -m benchmarks.ddp --device cuda          # GPU: 1 .. all visible cards, one row each

Each row is `bioformer train --nproc K` (torchrun) of the same BioFormer on kang2018 for
--max-steps optimiser steps with per-process batch --batch-size (weak scaling: K processes
train K times the cells per step). cells/s = steps x batch x K / training seconds (metrics.csv's
train_seconds: the training steps only, not data preparation or validation);
speed-up = cells/s(K) / cells/s(1); efficiency = speed-up / K.
Results go to benchmarks/results/ddp[_cuda].json.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import device_name, table, write_results


def run(k: int, args: argparse.Namespace) -> dict:
    out = args.out / f"nproc{k}"
    cmd = [
        sys.executable, "-m", "bioformer", "-q", "train", "--nproc", str(k),
        "--data", args.data, "--max-cells", str(args.max_cells), "--epochs", "1", "--max-steps", str(args.max_steps),
        "--batch-size", str(args.batch_size), "--device", args.device, "--num-threads", str(args.threads),
        "--d-model", str(args.d_model), "--no-progress", "--out", str(out),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"processes": k, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    row = next(csv.DictReader(open(out / "metrics.csv")))
    seconds = float(row["train_seconds"])
    cells = args.max_steps * args.batch_size * k
    return {"processes": k, "steps": args.max_steps, "cells": cells, "train_s": seconds, "cells_per_s": cells / seconds, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--procs", help="process counts, comma-separated (default: 1,2 on CPU; 1..#GPUs on cuda)")
    p.add_argument("--data", default="kang2018")
    p.add_argument("--max-cells", type=int, default=4000)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=Path("/tmp/bioformer_ddp_bench"))
    args = p.parse_args()
    if args.procs:
        procs = [int(x) for x in args.procs.split(",")]
    elif args.device == "cuda":
        import torch

        procs = list(range(1, torch.cuda.device_count() + 1))
    else:
        procs = [1, 2]
    rows = [run(k, args) for k in procs]
    base = next((r["cells_per_s"] for r in rows if r["processes"] == 1 and "cells_per_s" in r), None)
    for r in rows:
        if base and "cells_per_s" in r:
            r["speedup"] = r["cells_per_s"] / base
            r["efficiency"] = r["speedup"] / r["processes"]
        print(r, flush=True)
    import torch

    torch.set_num_threads(args.threads)
    payload = {"device": args.device, "hardware": device_name(args.device), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    path = write_results("ddp", payload)
    print(table(rows, [("processes", "processes"), ("cells_per_s", "cells/s"), ("speedup", "speed-up"), ("efficiency", "efficiency"),
                       ("train_s", "train s"), ("error", "error")]))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
