"""Where the split prior attention pays: one BioFormer-linear training step with the prior's
attention split (`models/fused_bias.py`, regulators first) against the same model with the dense
prior mask, and a fast scGPT beside them; arms alternated step by step in one process on one
batch, over sequence lengths r and regulator shares (the rows with edges, PRIOR_ROWS_FRAC of
`train_step.py` elsewhere). Sets `SPLIT_MIN_GENES` and `SPLIT_MAX_SHARE`.

    python -m benchmarks.split_threshold [--threads 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bioformer.models.fused_bias as fused_bias
from benchmarks._common import _random_batch, device_name, table, write_results
from benchmarks.train_step import SETTINGS, VOCAB, Arm, families
from bioformer.models.pair import PriorCodes

CASES = [(32, 32, 0.2), (64, 32, 0.2), (64, 32, 0.5), (96, 32, 0.2), (128, 32, 0.15), (128, 32, 0.3), (128, 32, 0.8),
         (512, 8, 0.05), (512, 8, 0.3), (512, 8, 0.6)]  # (r, B, share of rows with edges)


def case(r: int, B: int, share: float, steps: int) -> dict:
    """Median step times of scGPT, the split and the dense prior path, in one alternation."""
    fams = families()
    batch = _random_batch(B, r, VOCAB, "cpu", prior_rows_frac=share)
    linear, scgpt = Arm({**fams["bioformer-linear"], **SETTINGS["fast"]}, batch, "cpu"), Arm({**fams["scgpt"], **SETTINGS["fast"]}, batch, "cpu")
    times: dict[str, list[float]] = {"scgpt": [], "split": [], "dense": []}
    limits = (fused_bias.SPLIT_MIN_GENES, fused_bias.SPLIT_MAX_SHARE)
    try:
        for i in range(steps + 2):  # two warm-up rounds
            for arm in times:
                fused_bias.SPLIT_MIN_GENES, fused_bias.SPLIT_MAX_SHARE = (0, 1.0) if arm == "split" else (10**9, 0.0)
                t = time.perf_counter()
                (scgpt if arm == "scgpt" else linear).step()
                if i >= 2:
                    times[arm].append(time.perf_counter() - t)
    finally:
        fused_bias.SPLIT_MIN_GENES, fused_bias.SPLIT_MAX_SHARE = limits
    med = {k: statistics.median(v) for k, v in times.items()}
    S = PriorCodes.of_edges(batch[3], "both", torch.zeros(16, 1)).sources.shape[1]
    return {"r": r, "B": B, "S": S, "S_over_r": S / r, "scgpt_s": med["scgpt"], "split_s": med["split"], "dense_s": med["dense"],
            "split_vs_scgpt": med["split"] / med["scgpt"], "dense_vs_scgpt": med["dense"] / med["scgpt"],
            "split_over_dense": med["split"] / med["dense"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per arm (after two warm-up rounds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [case(r, B, share, args.steps) for r, B, share in CASES]
    print(f"\nsplit vs dense prior attention, BioFormer-linear training step ({device_name('cpu')})")
    print(table(rows, [("r", "r"), ("B", "B"), ("S", "S"), ("S_over_r", "S / r"), ("split_vs_scgpt", "split / scGPT"),
                       ("dense_vs_scgpt", "dense / scGPT"), ("split_over_dense", "split / dense")]))
    print(f"wrote {write_results('split_threshold', {'device': 'cpu', 'threads': args.threads, 'steps': args.steps, 'rows': rows})}")


if __name__ == "__main__":
    main()
