"""Every model family at equal parameter count, at its fastest correct setting and at the slow one:
seconds per training step (forward, backward, AdamW), cells/s, achieved GFLOP/s (matmul and
attention FLOPs counted by torch.utils.flop_counter, CPU's fused attention counted like the GPU
kernels) and its fraction of the machine's matmul roofline (a large fp32 matmul measured in the
same run), and every time as a ratio to the fast scGPT.

All arms of this tree are built in ONE process and alternated step by step (same batch, same
seeds), so load from other processes hits every arm alike: on a shared machine the ratios are
what to read. Each step is timed twice: wall clock and this process's CPU time
(`time.process_time`, which does not count waiting for a core). Medians over steps.

Settings: `fast` = attention dropout 0 (fused attention kernels), residual/feed-forward dropout
0.1 (the defaults); `slow` = attention dropout 0.1 as well (CPU's SDPA math path, the old
default); `no-dropout` = both 0. Families: scgpt, bioformer (full pair mode), bioformer-linear
(pair_mode linear; its prior bias on the fused kernel, models/fused_bias.py), and
bioformer-linear-zero-z (the same model without a prior: what the prior costs), and (only when
asked for in --families) bioformer-linear-outgoing (prior_direction "outgoing": the regulators'
rows only, no regulator-column part; 4 codes instead of 16, so ~0.1% fewer parameters). Every model gets
the same batch, whose prior codes sit on PRIOR_ROWS_FRAC of the rows (the TFs of a cell).
Targets: BioFormer-linear / fast scGPT <= 1.3 at r = 512 and <= 2 at r = 2048.

`--before SRC` also times another source tree (e.g. `git archive <commit> src | tar -x -C /tmp/old`,
then `--before /tmp/old/src`) at its defaults, in fresh processes between the rounds (another
tree cannot share the process): the before/after table, less tightly paired.

    python -m benchmarks.train_step [--device cuda] [--steps 6] [--rounds 1] [--n-genes 512]
        [--batch-size 8] [--families scgpt,bioformer-linear] [--settings fast] [--before /tmp/old/src]

The main job's shape (PBMC3k, `bioformer train` defaults): `--n-genes 128 --batch-size 32`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._common import (
    _random_batch,
    _register_cpu_attention_flops,
    _sync,
    device_name,
    run_worker,
    table,
    write_results,
)
from bioformer.config import ModelConfig
from bioformer.experiments.sizing import nearest_d_model
from bioformer.models import build_model, count_config_parameters, count_parameters

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
    """The model configs at equal parameter count (scGPT's); `use_prior` False for the zero-z arm."""
    n_scgpt = count_config_parameters(ModelConfig.of(**SCGPT), VOCAB, use_prior=True)
    linear = equal_param_bioformer(n_scgpt, pair_mode="linear")
    return {"scgpt": SCGPT, "bioformer": equal_param_bioformer(n_scgpt), "bioformer-linear": linear,
            "bioformer-linear-zero-z": {**linear, "use_prior": False},
            "bioformer-linear-outgoing": {**linear, "prior_direction": "outgoing"}}


class Arm:
    """One model, its optimiser and the batch, stepped by `step` (forward, backward, AdamW)."""

    def __init__(self, spec: dict, batch: tuple, device: str) -> None:
        spec = dict(spec)
        use_prior = spec.pop("use_prior", True)
        torch.manual_seed(0)
        self.model = build_model(ModelConfig.of(**spec), VOCAB, use_prior=use_prior).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        g, v, pm, prior = batch
        self.inputs = (g, v, pm, prior if self.model.needs_prior else None)
        self.pm = pm

    def loss(self) -> torch.Tensor:
        g, v, pm, prior = self.inputs
        return self.model(g, v, pm, prior=prior)["pred"][~self.pm].pow(2).mean()

    def step(self) -> None:
        self.loss().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def flops(self) -> int:
        """Matmul and attention FLOPs of one forward + backward (not timed)."""
        from torch.utils.flop_counter import FlopCounterMode

        _register_cpu_attention_flops()
        with FlopCounterMode(display=False) as counter:
            self.loss().backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def alternate(specs: dict[str, dict], args: argparse.Namespace, r: int) -> tuple[dict, dict, dict]:
    """Every arm in this process, one step each in turn, `steps + 1` times (the first warms up):
    wall and CPU step times per arm, and per arm its parameter count and FLOPs."""
    batch = _random_batch(args.batch_size, r, VOCAB, args.device, prior_rows_frac=PRIOR_ROWS_FRAC)
    arms = {name: Arm(spec, batch, args.device) for name, spec in specs.items()}
    wall: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    for i in range(args.steps + 1):
        for name, arm in arms.items():
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            arm.step()
            _sync(args.device)
            if i:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    info = {name: {"n_params": count_parameters(arm.model), "flops": arm.flops()} for name, arm in arms.items()}
    return wall, cpu, info


def measure(specs: dict[str, dict], before: dict[str, dict], args: argparse.Namespace, r: int):
    """`rounds` rounds of the alternated arms (and the --before arms in fresh processes) with a
    matmul roofline run before and after each: wall and CPU times, per-arm info, roofline runs."""
    roof = [run_worker({"task": "matmul", "device": args.device, "threads": args.threads})["gflops"]]
    wall: dict[str, list[float]] = {k: [] for k in [*specs, *before]}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    info: dict[str, dict] = {}
    for _ in range(args.rounds):
        w, c, info = alternate(specs, args, r)
        for name in specs:
            wall[name] += w[name]
            cpu[name] += c[name]
        for name, spec in before.items():
            res = run_worker({"task": "model_step", "batch_size": args.batch_size, "n_genes": r, "vocab_size": VOCAB,
                              "device": args.device, "steps": args.steps + 1, "count_flops": True, "amp": False,
                              "prior_rows_frac": PRIOR_ROWS_FRAC, "threads": args.threads, **spec})
            if "error" in res:
                raise SystemExit(f"{name}: {res['error']}")
            wall[name] += res["times"][1:]  # the first step warms up
            cpu[name] += res.get("cpu_times", res["times"])[1:]  # older trees report wall time only
            info[name] = {"n_params": res["n_params"], "flops": res["flops"]}
        roof.append(run_worker({"task": "matmul", "device": args.device, "threads": args.threads})["gflops"])
    return wall, cpu, info, roof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm and round (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=1, help="build the arms afresh and alternate them this many times")
    ap.add_argument("--n-genes", type=int, default=512, help="genes per cell r (default 512)")
    ap.add_argument("--batch-size", type=int, default=B, help=f"cells per step (default {B}; the main job: 32 at r = 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--families", default="scgpt,bioformer,bioformer-linear,bioformer-linear-zero-z")
    ap.add_argument("--settings", default="fast,slow,no-dropout")
    ap.add_argument("--before", metavar="SRC", help="also time this source tree's bioformer at its defaults (dropout 0.1 everywhere)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = args.n_genes
    fams = {k: v for k, v in families().items() if k in args.families.split(",")}
    specs: dict[str, dict] = {"scgpt fast": {**SCGPT, **SETTINGS["fast"]}}
    before: dict[str, dict] = {}
    for fam, cfg in fams.items():
        for setting in args.settings.split(","):
            specs[f"{fam} {setting}"] = {**cfg, **SETTINGS[setting]}
        if args.before and "use_prior" not in cfg and "prior_direction" not in cfg:
            before[f"{fam} before"] = {"model": {**cfg, "dropout": 0.1}, "src": args.before}
    wall, cpu, info, roof = measure(specs, before, args, r)
    ref, ref_cpu = statistics.median(wall["scgpt fast"]), statistics.median(cpu["scgpt fast"])
    rows = []
    for name in wall:
        s, c = statistics.median(wall[name]), statistics.median(cpu[name])
        gflop = info[name]["flops"] / 1e9
        d_model = (specs.get(name) or before[name]["model"])["d_model"]
        rows.append({"arm": name, "d_model": d_model, "params": info[name]["n_params"], "s_per_step": s,
                     "cpu_s_per_step": c, "cells_per_s": args.batch_size / s, "gflop_per_step": gflop,
                     "achieved_gflops": gflop / s, "roofline_frac": gflop / s / max(roof), "vs_fast_scgpt": s / ref,
                     "cpu_vs_fast_scgpt": c / ref_cpu})
    name = device_name(args.device)
    print(f"\ntraining step, r={r}, B={args.batch_size}, vocab {VOCAB}, fp32, {args.threads} thread(s), arms alternated in one "
          f"process, median of {len(wall['scgpt fast'])} steps per arm ({name})")
    print(f"matmul roofline (2048^3 fp32): {max(roof):.1f} GFLOP/s (runs: {', '.join(f'{g:.1f}' for g in roof)})")
    cols = [("arm", "model, setting"), ("d_model", "d_model"), ("params", "params"), ("s_per_step", "s/step"),
            ("cells_per_s", "cells/s"), ("gflop_per_step", "GFLOP/step"), ("achieved_gflops", "GFLOP/s"),
            ("roofline_frac", "of roofline"), ("vs_fast_scgpt", "time / fast scGPT"), ("cpu_s_per_step", "CPU s/step"),
            ("cpu_vs_fast_scgpt", "CPU time / fast scGPT")]
    print(table(rows, cols))
    by = {row["arm"]: row for row in rows}
    target = 1.3 if r <= 512 else 2.0
    if "bioformer-linear fast" in by:
        lin = by["bioformer-linear fast"]
        print(f"BioFormer-linear (fast) / scGPT (fast): {lin['vs_fast_scgpt']:.2f} wall, {lin['cpu_vs_fast_scgpt']:.2f} CPU time "
              f"(target <= {target})")
    tag = ("" if r == 512 else f"_r{r}") + ("" if args.batch_size == B else f"_B{args.batch_size}")
    path = write_results(f"train_step{tag}",
                         {"device": args.device, "device_name": name, "r": r, "batch_size": args.batch_size, "vocab_size": VOCAB,
                          "threads": args.threads, "roofline_gflops": max(roof), "roofline_runs": roof, "rows": rows,
                          "settings": SETTINGS, "prior_rows_frac": PRIOR_ROWS_FRAC, "before_src": args.before,
                          "step_times": wall, "cpu_step_times": cpu, "in_process": True})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
