"""fp32 vs bf16 autocast, per model family and width: seconds per training step (forward,
backward, AdamW) at r genes and batch B, both precisions alternated in the same run. It decides
where `--amp auto` may turn bf16 on for the CPU (`bioformer.training.loop.autocast_dtype`): only
where bf16 measured faster here.

    python -m benchmarks.amp [--widths 64,256,512] [--n-genes 256] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks._common import device_name, run_worker, table, write_results

FAMILIES = {
    "scgpt": {"model": "scgpt"},
    "bioformer": {"model": "bioformer", "pair_mode": "full"},
    "bioformer-linear": {"model": "bioformer", "pair_mode": "linear"},
}
B = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--widths", default="64,256,512")
    ap.add_argument("--n-genes", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    arms = {}
    for fam in args.families.split(","):
        for w in map(int, args.widths.split(",")):
            for amp in (False, True):
                arms[(fam, w, amp)] = {**FAMILIES[fam], "d_model": w, "nhead": max(4, w // 64)}
    times: dict = {k: [] for k in arms}
    cpu: dict = {k: [] for k in arms}  # process CPU time: immune to waiting for a core on a shared machine
    for _ in range(args.rounds):  # alternated: load from other processes hits both precisions
        for key, model in arms.items():
            res = run_worker({"task": "model_step", "model": model, "batch_size": B, "n_genes": args.n_genes,
                              "device": args.device, "steps": args.steps, "amp": key[2], "prior_rows_frac": 0.05})
            if "error" in res:
                raise SystemExit(f"{key}: {res['error']}")
            times[key] += res["times"][1:]
            cpu[key] += res["cpu_times"][1:]
    rows = []
    for fam in args.families.split(","):
        for w in map(int, args.widths.split(",")):
            fp32, bf16 = statistics.median(times[(fam, w, False)]), statistics.median(times[(fam, w, True)])
            fp32_cpu, bf16_cpu = statistics.median(cpu[(fam, w, False)]), statistics.median(cpu[(fam, w, True)])
            rows.append({"family": fam, "d_model": w, "fp32_s": fp32, "bf16_s": bf16, "bf16_speedup": fp32 / bf16,
                         "fp32_cpu_s": fp32_cpu, "bf16_cpu_s": bf16_cpu, "bf16_cpu_speedup": fp32_cpu / bf16_cpu})
    print(f"\ntraining step, r={args.n_genes}, B={B}, median of {len(next(iter(times.values())))} steps ({device_name(args.device)})")
    print(table(rows, [("family", "family"), ("d_model", "d_model"), ("fp32_s", "fp32 s/step"), ("bf16_s", "bf16 s/step"),
                       ("bf16_speedup", "fp32 / bf16"), ("fp32_cpu_s", "fp32 CPU s"), ("bf16_cpu_s", "bf16 CPU s"),
                       ("bf16_cpu_speedup", "fp32 / bf16 (CPU time)")]))
    path = write_results("amp", {"device": args.device, "device_name": device_name(args.device), "r": args.n_genes,
                                 "batch_size": B, "rows": rows, "step_times": {f"{k[0]} {k[1]} {'bf16' if k[2] else 'fp32'}": v for k, v in times.items()},
                                 "cpu_step_times": {f"{k[0]} {k[1]} {'bf16' if k[2] else 'fp32'}": v for k, v in cpu.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
