"""The study recipes' and the main job's BioFormer training step in the full vs the linear pair
mode (the default since the switch), in ONE process, modes alternated step by step, so that load
from other processes hits both alike. Times are process CPU seconds, median over steps.

Recipes (model and shapes from `bioformer.experiments.profiles` and the config defaults):
`main-job` = `bioformer train` defaults (B = 32, r = max_len 128); `standard` = the standard
profile's BioFormer (B = 16, r = max_len 64); `standard-N8` = its depth arm with 8 blocks.
Batches are random tokens at full length with prior codes on `--prior-rows` of the rows (a
cell's regulators), one training step = forward, backward, AdamW.

    python -m benchmarks.study_step [--steps 10] [--recipes main-job,standard,standard-N8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks._common import _random_batch, table, write_results
from bioformer.config import DataConfig, ModelConfig, TrainConfig
from bioformer.experiments.profiles import PROFILES
from bioformer.models import build_model

MODES = ("full", "linear")


def recipes() -> dict[str, tuple[dict, int, int]]:
    """name -> (model fields, batch size B, sequence length r)."""
    std = PROFILES["standard"]
    std_model = {k: v for k, v in std.model.items() if k != "pair_mode"}
    return {
        "main-job": ({}, TrainConfig().batch_size, DataConfig().max_len),
        "standard": (std_model, std.train["batch_size"], std.data["max_len"]),
        "standard-N8": ({**std_model, "nlayers": 8}, std.train["batch_size"], std.data["max_len"]),
    }


def time_recipe(fields: dict, B: int, r: int, steps: int, prior_rows: float) -> dict[str, list[float]]:
    """CPU seconds per training step of each pair mode, alternated (step 0 warms up)."""
    vocab = 1027
    g, v, pm, prior = _random_batch(B, r, vocab, "cpu", prior_rows_frac=prior_rows)
    models, opts = {}, {}
    for mode in MODES:
        torch.manual_seed(0)
        models[mode] = build_model(ModelConfig.of(model="bioformer", **fields, pair_mode=mode), vocab, use_prior=True).train()
        opts[mode] = torch.optim.AdamW(models[mode].parameters(), lr=1e-4)
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(steps + 1):
        for mode in MODES:
            torch.manual_seed(i)
            c0 = time.process_time()
            out = models[mode](g, v, pm, prior=prior)
            out["pred"][~pm].pow(2).mean().backward()
            opts[mode].step()
            opts[mode].zero_grad(set_to_none=True)
            if i:
                cpu[mode].append(time.process_time() - c0)
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--recipes", default=",".join(recipes()))
    ap.add_argument("--prior-rows", type=float, default=0.1, help="share of rows carrying prior codes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, times = [], {}
    for name in args.recipes.split(","):
        fields, B, r = recipes()[name]
        cpu = times[name] = time_recipe(fields, B, r, args.steps, args.prior_rows)
        full, lin = statistics.median(cpu["full"]), statistics.median(cpu["linear"])
        per_step = [f / li for f, li in zip(cpu["full"], cpu["linear"], strict=True)]
        rows.append({"recipe": name, "B": B, "r": r, "full": full, "linear": lin, "ratio": full / lin,
                     "ratio_lo": min(per_step), "ratio_hi": max(per_step)})
    print(f"\nBioFormer training step, full vs linear pair mode, 1 thread, one process, alternated, median CPU s of {args.steps} steps")
    print(table(rows, [("recipe", "recipe"), ("B", "B"), ("r", "r"), ("full", "full CPU s/step"), ("linear", "linear CPU s/step"),
                       ("ratio", "full / linear"), ("ratio_lo", "min per step"), ("ratio_hi", "max per step")]))
    path = write_results("study_step", {"argv": sys.argv[1:], "prior_rows": args.prior_rows, "rows": rows, "cpu_times": times})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
