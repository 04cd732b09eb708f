"""The largest r (powers of two and their midpoints) at which BioFormer (B=1, N=4, d_model 64,
d_z 32) trains one step (forward, backward, AdamW) within a memory budget (default 24 GB).
Each r runs in a fresh process; with and without activation checkpointing. An r whose
*predicted* peak exceeds the memory this machine has free is not run (it is marked so), to
avoid taking the machine down (`--max-gib` caps it further on a shared machine). Target: r = 2,048
on CPU (full pair mode); the linear pair mode (no z; attention in chunks of 512 query rows;
prior codes on 5% of the rows, a cell's TFs) targets r >= 16,384 with peak memory ~linear in r:
the exponent of a log-log fit of the peak over r = 1k..16k is reported (measured rows, and the
estimate's, which extrapolates where rows were not run).

    python -m benchmarks.max_genes [--device cuda] [--budget 24GB] [--pair-mode full linear] [--max-gib 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks._common import baseline_rss, device_name, mib, run_worker, table, write_results
from bioformer.config import ModelConfig
from bioformer.estimate import estimate_memory, max_genes_for_budget, parse_bytes

MODEL = {"model": "bioformer", "d_model": 64, "nhead": 4, "nlayers": 4, "d_z": 32, "d_opm": 32, "pair_mode": "full"}
R_VALUES = [1024, 1536, 2048, 3072, 4096, 6144]
LINEAR = {"pair_mode": "linear", "attention_chunk_size": 512}
R_VALUES_LINEAR = [1024, 2048, 4096, 8192, 16384, 20000]
PRIOR_ROWS_FRAC = 0.05


def memory_exponent(rows: list[dict], key: str, lo: int = 1024, hi: int = 16384) -> float | None:
    """Slope of log(peak) over log(r) for rows with lo <= r <= hi (None with fewer than 2)."""
    pts = [(r["r"], r[key]) for r in rows if lo <= r["r"] <= hi and r.get(key)]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="24GB")
    ap.add_argument("--r", type=int, nargs="+", default=None, help="sequence lengths (default per pair mode)")
    ap.add_argument("--pair-mode", nargs="+", default=["full", "linear"], choices=["full", "linear"])
    ap.add_argument("--max-gib", type=float, default=None, help="do not run an r predicted above this (shared machines)")
    args = ap.parse_args()
    budget = parse_bytes(args.budget)
    base = baseline_rss() if args.device == "cpu" else 0
    rows, best = [], {}
    series = [("full", False), ("full", True)] if "full" in args.pair_mode else []
    series += [("linear", False)] if "linear" in args.pair_mode else []
    for mode, ckpt in series:
        model = dict(MODEL, checkpoint_blocks=ckpt, **(LINEAR if mode == "linear" else {}))
        for r in args.r or (R_VALUES_LINEAR if mode == "linear" else R_VALUES):
            pred = estimate_memory(ModelConfig.of(**model), r, 1, training=True, device=args.device).total
            row = {"pair_mode": mode, "checkpoint_blocks": ckpt, "r": r, "predicted_gib": pred / 2**30}
            free = available_bytes() - 2e9 if args.device == "cpu" else float("inf")
            if args.max_gib is not None:
                free = min(free, args.max_gib * 2**30 / 1.25)
            if pred > min(budget, free) * 1.25:
                row["status"] = f"not run: predicted {pred / 1e9:.1f} GB > {'budget' if pred > budget * 1.25 else f'free {free / 1e9:.1f} GB'}"
                rows.append(row)
                print(row, flush=True)
                break
            spec = {"task": "model_step", "model": model, "batch_size": 1, "n_genes": r, "device": args.device}
            if mode == "linear":
                spec["prior_rows_frac"] = PRIOR_ROWS_FRAC
            res = run_worker(spec, timeout=3600)
            if "error" in res:
                row["status"] = res["error"]
            else:
                peak = res["peak_bytes"] - base
                row.update(measured_gib=peak / 2**30, s_per_step=res["times"][0], status="fits" if peak <= budget else "over budget")
                if peak <= budget:
                    best[(mode, ckpt)] = r
            rows.append(row)
            print(row, flush=True)
            if row["status"] != "fits":
                break
    name = device_name(args.device)
    print(f"\nlargest r for one training step within {args.budget}: BioFormer B=1, N=4, d_model 64, d_z 32, d_opm 32 ({name})")
    print(f"peak = VmHWM of a fresh process minus an idle one (baseline {mib(base):.0f} MiB)" if args.device == "cpu" else "peak = torch.cuda.max_memory_allocated")
    print(table(rows, [("pair_mode", "pair mode"), ("checkpoint_blocks", "checkpointing"), ("r", "r"), ("predicted_gib", "predicted GiB"),
                       ("measured_gib", "measured GiB"), ("s_per_step", "s/step"), ("status", "status")]))
    print(f"largest r that fits: {best.get(('full', False), 0)} (full), {best.get(('full', True), 0)} (full, checkpointing), "
          f"{best.get(('linear', False), 0)} (linear)")
    linear_rows = [r for r in rows if r["pair_mode"] == "linear"]
    lin_cfg = ModelConfig.of(**{**MODEL, **LINEAR})
    predicted_rows = [{"r": r, "predicted_gib": estimate_memory(lin_cfg, r, 1, device=args.device).total / 2**30} for r in (1024, 2048, 4096, 8192, 16384)]
    exponents = {"measured": memory_exponent(linear_rows, "measured_gib"), "predicted": memory_exponent(predicted_rows, "predicted_gib")}
    r_pred = max_genes_for_budget(lin_cfg, 1, budget, device=args.device) if "linear" in args.pair_mode else None
    print(f"linear mode: peak memory ~ r^k over r = 1k..16k, k = {exponents['measured']} (measured rows), {exponents['predicted']:.2f} (estimate); "
          f"largest r within {args.budget} by the estimate: {r_pred}")
    path = write_results("max_genes", {"device": args.device, "device_name": name, "budget": args.budget, "model": MODEL, "linear": LINEAR,
                                       "prior_rows_frac_linear": PRIOR_ROWS_FRAC, "rows": rows,
                                       "largest_r": best.get(("full", False), 0), "largest_r_checkpointing": best.get(("full", True), 0),
                                       "largest_r_linear": best.get(("linear", False), 0), "largest_r_linear_predicted": r_pred,
                                       "memory_exponent_linear": exponents})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
