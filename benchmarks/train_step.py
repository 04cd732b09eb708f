"""Every model family at equal parameter count, at its fastest correct setting and at the slow one:
seconds per training step (forward, backward, AdamW), cells/s, achieved GFLOP/s (matmul and
attention FLOPs counted by torch.utils.flop_counter, CPU's fused attention counted like the GPU
kernels) and its fraction of the machine's matmul roofline (a large fp32 matmul measured in the
same run), and every time as a ratio to the fast scGPT. Each step is timed twice: wall clock
and this process's CPU time (`time.process_time`); on a shared machine the wall clock also
counts waiting for a core, so the CPU-time ratios are the ones to compare under load.

Settings: `fast` = attention dropout 0 (fused attention kernels), residual/feed-forward dropout
0.1 (the defaults); `slow` = attention dropout 0.1 as well (CPU's SDPA math path, the old
default); `no-dropout` = both 0. Families: scgpt, bioformer (full pair mode), bioformer-linear
(pair_mode linear; its prior bias on the fused kernel, models/fused_bias.py). Every model gets
the same batch, whose prior codes sit on PRIOR_ROWS_FRAC of the rows (the TFs of a cell).
Targets: BioFormer-linear / fast scGPT <= 1.3 at r = 512 and <= 2 at r = 2048.

`--before SRC` also times another source tree (e.g. `git archive <commit> src | tar -x -C /tmp/old`,
then `--before /tmp/old/src`) at its defaults, alternated with the others in the same run: the
before/after table.

    python -m benchmarks.train_step [--device cuda] [--steps 4] [--rounds 2] [--n-genes 512]
        [--batch-size 8] [--families scgpt,bioformer-linear] [--settings fast] [--before /tmp/old/src]

The main job's shape (PBMC3k, `bioformer train` defaults): `--n-genes 128 --batch-size 32`.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import device_name, run_worker, table, write_results
from bioformer.config import ModelConfig
from bioformer.experiments.sizing import nearest_d_model
from bioformer.models import count_config_parameters

B, VOCAB = 8, 1027  # 512 HVGs + up to 512 prior genes + 3 special tokens
SCGPT = {"model": "scgpt", "d_model": 64, "nhead": 4, "nlayers": 2}
PRIOR_ROWS_FRAC = 0.05
SETTINGS = {"fast": {"dropout": 0.1, "attention_dropout": 0.0}, "slow": {"dropout": 0.1, "attention_dropout": 0.1},
            "no-dropout": {"dropout": 0.0, "attention_dropout": 0.0}}


def equal_param_bioformer(target: int, nhead: int = 4, pair_mode: str = "full") -> dict:
    """The BioFormer whose d_model gives the parameter count nearest `target` (the package's one
    equal-parameter search, `sizing.nearest_d_model`)."""
    cfg = {"model": "bioformer", "nhead": nhead, "nlayers": 2, "pair_mode": pair_mode}
    d_model, _ = nearest_d_model(ModelConfig.of(**cfg), target, VOCAB, use_prior=True, max_d_model=256)
    return {**cfg, "d_model": d_model}


def families() -> dict[str, dict]:
    """The model configs at equal parameter count (scGPT's)."""
    n_scgpt = count_config_parameters(ModelConfig.of(**SCGPT), VOCAB, use_prior=True)
    return {"scgpt": SCGPT, "bioformer": equal_param_bioformer(n_scgpt),
            "bioformer-linear": equal_param_bioformer(n_scgpt, pair_mode="linear")}


def measure(arms: dict[str, dict], args: argparse.Namespace, r: int) -> tuple[dict, dict, dict, list[float]]:
    """Alternate the arms `rounds` times (load from other processes hits all): wall and process
    CPU step times, last worker result per arm, and roofline runs."""
    roof = [run_worker({"task": "matmul", "device": args.device})["gflops"]]
    times: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    info: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, spec in arms.items():
            res = run_worker({"task": "model_step", "batch_size": args.batch_size, "n_genes": r, "vocab_size": VOCAB,
                              "device": args.device, "steps": args.steps, "count_flops": True, "amp": False,
                              "prior_rows_frac": PRIOR_ROWS_FRAC, **spec})
            if "error" in res:
                raise SystemExit(f"{name}: {res['error']}")
            times[name] += res["times"][1:]  # the first step warms up
            cpu[name] += res.get("cpu_times", res["times"])[1:]  # older trees (--before) report wall time only
            info[name] = res
        roof.append(run_worker({"task": "matmul", "device": args.device})["gflops"])
    return times, cpu, info, roof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the models this many times (noisy machines)")
    ap.add_argument("--n-genes", type=int, default=512, help="genes per cell r (default 512)")
    ap.add_argument("--batch-size", type=int, default=B, help=f"cells per step (default {B}; the main job: 32 at r = 128)")
    ap.add_argument("--families", default="scgpt,bioformer,bioformer-linear")
    ap.add_argument("--settings", default="fast,slow,no-dropout")
    ap.add_argument("--before", metavar="SRC", help="also time this source tree's bioformer at its defaults (dropout 0.1 everywhere)")
    args = ap.parse_args()
    r = args.n_genes
    fams = {k: v for k, v in families().items() if k in args.families.split(",")}
    arms: dict[str, dict] = {}
    for fam, cfg in fams.items():
        for setting in args.settings.split(","):
            arms[f"{fam} {setting}"] = {"model": {**cfg, **SETTINGS[setting]}}
        if args.before:
            arms[f"{fam} before"] = {"model": {**cfg, "dropout": 0.1}, "src": args.before}
    if "scgpt fast" not in arms:
        arms = {"scgpt fast": {"model": {**SCGPT, **SETTINGS["fast"]}}, **arms}
    times, cpu, info, roof = measure(arms, args, r)
    ref, ref_cpu = statistics.median(times["scgpt fast"]), statistics.median(cpu["scgpt fast"])
    rows = []
    for name in arms:
        s, c = statistics.median(times[name]), statistics.median(cpu[name])
        gflop = info[name]["flops"] / 1e9
        rows.append({"arm": name, "d_model": arms[name]["model"]["d_model"], "params": info[name]["n_params"], "s_per_step": s,
                     "cpu_s_per_step": c, "cells_per_s": args.batch_size / s, "gflop_per_step": gflop,
                     "achieved_gflops": gflop / s, "roofline_frac": gflop / s / max(roof), "vs_fast_scgpt": s / ref,
                     "cpu_vs_fast_scgpt": c / ref_cpu})
    name = device_name(args.device)
    print(f"\ntraining step, r={r}, B={args.batch_size}, vocab {VOCAB}, fp32, median of {len(times['scgpt fast'])} steps per arm ({name})")
    print(f"matmul roofline (2048^3 fp32): {max(roof):.1f} GFLOP/s (runs: {', '.join(f'{g:.1f}' for g in roof)})")
    cols = [("arm", "model, setting"), ("d_model", "d_model"), ("params", "params"), ("s_per_step", "s/step"),
            ("cells_per_s", "cells/s"), ("gflop_per_step", "GFLOP/step"), ("achieved_gflops", "GFLOP/s"),
            ("roofline_frac", "of roofline"), ("vs_fast_scgpt", "time / fast scGPT"), ("cpu_s_per_step", "CPU s/step"),
            ("cpu_vs_fast_scgpt", "CPU time / fast scGPT")]
    print(table(rows, cols))
    by = {row["arm"]: row["vs_fast_scgpt"] for row in rows}
    target = 1.3 if r <= 512 else 2.0
    if "bioformer-linear fast" in by:
        print(f"BioFormer-linear (fast) / scGPT (fast): {by['bioformer-linear fast']:.2f} (target <= {target})")
    tag = ("" if r == 512 else f"_r{r}") + ("" if args.batch_size == B else f"_B{args.batch_size}")
    path = write_results(f"train_step{tag}",
                         {"device": args.device, "device_name": name, "r": r, "batch_size": args.batch_size, "vocab_size": VOCAB,
                          "roofline_gflops": max(roof), "roofline_runs": roof, "rows": rows, "settings": SETTINGS,
                          "prior_rows_frac": PRIOR_ROWS_FRAC, "before_src": args.before, "step_times": times,
                          "cpu_step_times": cpu})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
