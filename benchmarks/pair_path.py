"""Naive vs efficient pair path, forward + backward: OPM (naive = materialised
[B, r, r, c_opm, c_opm] outer product) and pair-bias attention (naive = explicit softmax).
Peak memory per run in a fresh process (CPU: VmHWM minus that of the same op at r = 8, so
only what grows with r counts), and time (best of the repeats after a warm-up).
Targets at r = 256: >= 30x less peak memory and >= 20x faster OPM.

    python -m benchmarks.pair_path [--device cuda] [--r 128 256 512]
"""

from __future__ import annotations

import argparse

from benchmarks._common import device_name, mib, run_worker, table, write_results

B, C, CZ, COPM, H = 2, 64, 32, 32, 4
NAIVE_OPM_LIMIT = 6e9  # bytes: skip the naive OPM where its outer product (x4 with backward) won't fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--r", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--steps", type=int, default=8, help="repeats per run; the best after the first counts (noisy machines)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    args = ap.parse_args()
    base: dict[tuple[str, str], int] = {}
    rows = []
    for op in ("opm", "attention"):
        for r in args.r:
            row = {"op": op, "r": r}
            for impl in ("naive", "efficient"):
                naive_bytes = 4 * B * r * r * COPM * COPM * 4
                if op == "opm" and impl == "naive" and naive_bytes > NAIVE_OPM_LIMIT:
                    row["naive_note"] = f"skipped: needs ~{naive_bytes / 1e9:.0f} GB"
                    continue
                spec = {"task": "pair_op", "op": op, "impl": impl, "B": B, "r": r, "d_model": C, "d_z": CZ, "d_opm": COPM, "nhead": H, "device": args.device, "steps": args.steps, "threads": args.threads}
                res = run_worker(spec)
                if "error" in res:
                    row[f"{impl}_note"] = res["error"]
                    continue
                if args.device == "cpu":  # baseline: the same op in a fresh process at r = 8
                    key = (op, impl)
                    if key not in base:
                        base[key] = run_worker(dict(spec, r=8))["peak_bytes"]
                    row[f"{impl}_mib"] = mib(res["peak_bytes"] - base[key])
                else:
                    row[f"{impl}_mib"] = mib(res["peak_bytes"])
                row[f"{impl}_s"] = min(res["times"][1:] or res["times"])
            if "naive_mib" in row and "efficient_mib" in row:
                row["mem_ratio"] = row["naive_mib"] / row["efficient_mib"]
                row["speedup"] = row["naive_s"] / row["efficient_s"]
            rows.append(row)
            print(row, flush=True)
    cols = [("op", "op"), ("r", "r"), ("naive_mib", "naive peak MiB"), ("efficient_mib", "efficient peak MiB"), ("mem_ratio", "memory ratio"),
            ("naive_s", "naive s"), ("efficient_s", "efficient s"), ("speedup", "speed-up")]
    name = device_name(args.device)
    print(f"\npair path, forward + backward, B={B}, d_model={C}, c_z={CZ}, c_opm={COPM}, H={H} ({name}; torch threads per run: {args.threads or 'default'})")
    print("peak = VmHWM of a fresh process minus that of the same op at r=8 in a fresh process" if args.device == "cpu" else "peak = torch.cuda.max_memory_allocated")
    print(table(rows, cols))
    for r in rows:
        if "naive_note" in r:
            print(f"naive {r['op']} at r={r['r']}: {r['naive_note']}")
    path = write_results("pair_path", {"device": args.device, "device_name": name, "B": B, "d_model": C, "d_z": CZ, "d_opm": COPM, "nhead": H, "baseline_mib": {f"{k[0]}-{k[1]}": mib(v) for k, v in base.items()}, "threads": args.threads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
