"""BioFormer vs scGPT at equal parameter count: seconds per training step (forward, backward,
AdamW) and cells/s at r = 512, B = 8; the machine's matmul roofline (GFLOP/s of a large fp32
matmul) measured in the same run, and each model's achieved GFLOP/s (matmul + attention FLOPs
counted by torch.utils.flop_counter). Target: BioFormer/scGPT time ratio <= 2.0. The
BioFormer-linear row (pair_mode linear, equal parameters too) has target ratio <= 1.3; every
model gets the same batch, whose prior codes sit on PRIOR_ROWS_FRAC of the rows (the TFs of a
cell; full mode's cost does not depend on it, linear mode's prior slots do).

    python benchmarks/train_step.py [--device cuda] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics

from _common import device_name, run_worker, table, write_results

from bioformer.config import ModelConfig
from bioformer.estimate import count_parameters

R, B, VOCAB = 512, 8, 1027  # 512 HVGs + up to 512 prior genes + 3 special tokens
SCGPT = {"model": "scgpt", "d_model": 64, "nhead": 4, "nlayers": 2}
PRIOR_ROWS_FRAC = 0.05


def equal_param_bioformer(target: int, nhead: int = 4, pair_mode: str = "full") -> dict:
    """The BioFormer whose d_model gives the parameter count nearest `target`."""
    best = None
    for d in range(nhead * 4, 257, nhead):
        cfg = {"model": "bioformer", "d_model": d, "nhead": nhead, "nlayers": 2, "pair_mode": pair_mode}
        n = count_parameters(ModelConfig(**cfg), VOCAB)
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, cfg)
    return best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the models this many times (noisy machines)")
    args = ap.parse_args()
    n_scgpt = count_parameters(ModelConfig(**SCGPT), VOCAB)
    models = {"scgpt": SCGPT, "bioformer": equal_param_bioformer(n_scgpt),
              "bioformer-linear": equal_param_bioformer(n_scgpt, pair_mode="linear")}
    roof = [run_worker({"task": "matmul", "device": args.device})["gflops"]]
    times = {k: [] for k in models}
    info = {}
    for _ in range(args.rounds):  # interleaved so that load from other processes hits both
        for name, cfg in models.items():
            res = run_worker({"task": "model_step", "model": cfg, "batch_size": B, "n_genes": R, "vocab_size": VOCAB,
                              "device": args.device, "steps": args.steps, "count_flops": True, "amp": False,
                              "prior_rows_frac": PRIOR_ROWS_FRAC})
            if "error" in res:
                raise SystemExit(f"{name}: {res['error']}")
            times[name] += res["times"][1:]  # the first step warms up
            info[name] = res
        roof.append(run_worker({"task": "matmul", "device": args.device})["gflops"])
    rows = []
    for name, cfg in models.items():
        s = statistics.median(times[name])
        rows.append({"model": name, "d_model": cfg["d_model"], "params": info[name]["n_params"], "s_per_step": s,
                     "cells_per_s": B / s, "gflop_per_step": info[name]["flops"] / 1e9,
                     "achieved_gflops": info[name]["flops"] / 1e9 / s, "roofline_frac": info[name]["flops"] / 1e9 / s / max(roof)})
    ratio = rows[1]["s_per_step"] / rows[0]["s_per_step"]
    ratio_linear = rows[2]["s_per_step"] / rows[0]["s_per_step"]
    for row in rows:
        row["vs_scgpt"] = row["s_per_step"] / rows[0]["s_per_step"]
    name = device_name(args.device)
    print(f"\ntraining step, r={R}, B={B}, vocab {VOCAB}, fp32, median of {len(times['scgpt'])} steps per model ({name})")
    print(f"matmul roofline (2048^3 fp32): {max(roof):.1f} GFLOP/s (runs: {', '.join(f'{g:.1f}' for g in roof)})")
    cols = [("model", "model"), ("d_model", "d_model"), ("params", "params"), ("s_per_step", "s/step"), ("cells_per_s", "cells/s"),
            ("gflop_per_step", "GFLOP/step"), ("achieved_gflops", "achieved GFLOP/s"), ("roofline_frac", "of roofline"),
            ("vs_scgpt", "time / scGPT")]
    print(table(rows, cols))
    print(f"BioFormer / scGPT time per step: {ratio:.2f} (target <= 2.0)")
    print(f"BioFormer-linear / scGPT: {ratio_linear:.2f} (target <= 1.3); BioFormer-linear / BioFormer: {ratio_linear / ratio:.2f}")
    path = write_results("train_step", {"device": args.device, "device_name": name, "r": R, "batch_size": B, "vocab_size": VOCAB,
                                        "roofline_gflops": max(roof), "roofline_runs": roof, "rows": rows, "ratio": ratio,
                                        "ratio_linear": ratio_linear, "prior_rows_frac": PRIOR_ROWS_FRAC, "step_times": times})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
