"""Does `bioformer estimate` predict the measured peak? One training step per configuration in
a fresh process; prediction vs measured peak (CPU: VmHWM minus an idle torch process; CUDA:
max_memory_allocated). Target: within +-25%.

    python -m benchmarks.estimate_check [--device cuda]
"""

from __future__ import annotations

import argparse

from benchmarks._common import baseline_rss, device_name, mib, run_worker, table, write_results
from bioformer.config import ModelConfig
from bioformer.estimate import estimate_memory

CONFIGS = [  # (label, model overrides, batch size, r)
    ("bioformer full", {"pair_mode": "full"}, 8, 512),  # the default until the linear switch: "bioformer default" in older tables
    ("bioformer N=4 d_z=32 d_opm=32", {"nlayers": 4, "d_z": 32, "d_opm": 32, "pair_mode": "full"}, 2, 768),
    ("bioformer N=4 ckpt", {"nlayers": 4, "d_z": 32, "checkpoint_blocks": True, "pair_mode": "full"}, 2, 768),
    ("bioformer no dropout", {"dropout": 0.0, "nlayers": 3, "pair_mode": "full"}, 4, 640),
    ("scgpt", {"model": "scgpt"}, 8, 512),
    ("bioformer linear", {"pair_mode": "linear"}, 8, 512),
    ("bioformer linear N=4 d_z=32 d_opm=32", {"nlayers": 4, "d_z": 32, "d_opm": 32, "pair_mode": "linear"}, 1, 2048),
    ("bioformer linear N=4 chunk 512", {"nlayers": 4, "d_z": 32, "d_opm": 32, "pair_mode": "linear", "attention_chunk_size": 512}, 1, 4096),
]
PRIOR_ROWS_FRAC = 0.05  # linear rows: prior codes on this share of rows (a cell's TFs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    base = baseline_rss() if args.device == "cpu" else 0
    rows = []
    for label, over, B, r in CONFIGS:
        cfg = ModelConfig.of(**over)
        est = estimate_memory(cfg, r, B, training=True, device=args.device, amp=args.device == "cuda")
        frac = PRIOR_ROWS_FRAC if over.get("pair_mode") == "linear" else None
        res = run_worker({"task": "model_step", "model": over, "batch_size": B, "n_genes": r, "device": args.device,
                          "amp": args.device == "cuda", "prior_rows_frac": frac})
        measured = res["peak_bytes"] - base if "peak_bytes" in res else None
        rows.append({
            "config": label, "B": B, "r": r, "predicted_mib": mib(est.total), "measured_mib": mib(measured),
            "error_pct": None if measured is None else 100 * (est.total - measured) / measured,
            "parts_mib": {k: mib(v) for k, v in est.parts.items()}, "error": res.get("error"),
        })
        print(rows[-1]["config"], rows[-1]["predicted_mib"], rows[-1]["measured_mib"], flush=True)
    cols = [("config", "config"), ("B", "B"), ("r", "r"), ("predicted_mib", "predicted MiB"), ("measured_mib", "measured MiB"), ("error_pct", "error %")]
    print(f"\nestimate vs measured peak, one training step ({device_name(args.device)}; CPU peak = VmHWM - idle baseline {mib(base):.0f} MiB)")
    print(table(rows, cols))
    ok = all(r["error_pct"] is not None and abs(r["error_pct"]) <= 25 for r in rows)
    print(f"all within +-25%: {ok}")
    path = write_results("estimate_check", {"device": args.device, "device_name": device_name(args.device), "baseline_mib": mib(base), "rows": rows, "all_within_25pct": ok})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
