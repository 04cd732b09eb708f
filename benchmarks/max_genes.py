"""The largest r (powers of two and their midpoints) at which BioFormer (B=1, N=4, d_model 64,
d_z 32) trains one step (forward, backward, AdamW) within a memory budget (default 24 GB).
Each r runs in a fresh process; with and without activation checkpointing. An r whose
*predicted* peak exceeds the memory this machine has free is not run (it is marked so), to
avoid taking the machine down. Target: r = 2,048 on CPU.

    python benchmarks/max_genes.py [--device cuda] [--budget 24GB]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import baseline_rss, device_name, mib, run_worker, table, write_results

from bioformer.config import ModelConfig
from bioformer.estimate import estimate_memory, parse_bytes

MODEL = {"model": "bioformer", "d_model": 64, "nhead": 4, "nlayers": 4, "d_z": 32, "d_opm": 32}
R_VALUES = [1024, 1536, 2048, 3072, 4096, 6144]


def available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="24GB")
    ap.add_argument("--r", type=int, nargs="+", default=R_VALUES)
    args = ap.parse_args()
    budget = parse_bytes(args.budget)
    base = baseline_rss() if args.device == "cpu" else 0
    rows, best = [], {}
    for ckpt in (False, True):
        model = dict(MODEL, checkpoint_blocks=ckpt)
        for r in args.r:
            pred = estimate_memory(ModelConfig(**model), r, 1, training=True, device=args.device).total
            row = {"checkpoint_blocks": ckpt, "r": r, "predicted_gib": pred / 2**30}
            free = available_bytes() - 2e9 if args.device == "cpu" else float("inf")
            if pred > min(budget, free) * 1.25:
                row["status"] = f"not run: predicted {pred / 1e9:.1f} GB > {'budget' if pred > budget * 1.25 else f'free {free / 1e9:.1f} GB'}"
                rows.append(row)
                print(row, flush=True)
                break
            res = run_worker({"task": "model_step", "model": model, "batch_size": 1, "n_genes": r, "device": args.device}, timeout=1200)
            if "error" in res:
                row["status"] = res["error"]
            else:
                peak = res["peak_bytes"] - base
                row.update(measured_gib=peak / 2**30, s_per_step=res["times"][0], status="fits" if peak <= budget else "over budget")
                if peak <= budget:
                    best[ckpt] = r
            rows.append(row)
            print(row, flush=True)
            if row["status"] != "fits":
                break
    name = device_name(args.device)
    print(f"\nlargest r for one training step within {args.budget}: BioFormer B=1, N=4, d_model 64, d_z 32, d_opm 32 ({name})")
    print(f"peak = VmHWM of a fresh process minus an idle one (baseline {mib(base):.0f} MiB)" if args.device == "cpu" else "peak = torch.cuda.max_memory_allocated")
    print(table(rows, [("checkpoint_blocks", "checkpointing"), ("r", "r"), ("predicted_gib", "predicted GiB"), ("measured_gib", "measured GiB"), ("s_per_step", "s/step"), ("status", "status")]))
    print(f"largest r that fits: {best.get(False, 0)} (no checkpointing), {best.get(True, 0)} (checkpointing)")
    path = write_results("max_genes", {"device": args.device, "device_name": name, "budget": args.budget, "model": MODEL, "rows": rows,
                                       "largest_r": best.get(False, 0), "largest_r_checkpointing": best.get(True, 0)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
