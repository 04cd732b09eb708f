"""In-process A/B of two versions of the fused prior path (models/fused_bias.py) in the
BioFormer-linear training step: another tree's module is loaded beside this one's and swapped
into `linear_pair` before each step; arms (fast scGPT; linear with prior "both" and "outgoing",
each new and old) alternated step by step on one batch. Prints CPU time / fast scGPT.

    python scripts/fused_bias_ab.py OLD/bioformer/models/fused_bias.py [r 512] [B 8] [steps 10]
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time

import torch

sys.path.insert(0, ".")
import bioformer.models.fused_bias as new  # noqa: E402
import bioformer.models.linear_pair as lp  # noqa: E402
from benchmarks._common import _random_batch  # noqa: E402
from benchmarks.train_step import PRIOR_ROWS_FRAC, SCGPT, SETTINGS, VOCAB, Arm, families  # noqa: E402


def main() -> None:
    spec = importlib.util.spec_from_file_location("old_fused_bias", sys.argv[1])
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    torch.set_num_threads(1)
    r, B, steps = (int(a) for a in (sys.argv[2:5] + ["512", "8", "10"][len(sys.argv[2:5]):]))
    batch = _random_batch(B, r, VOCAB, "cpu", prior_rows_frac=PRIOR_ROWS_FRAC)
    fams = families()
    arms = {"scgpt fast": (Arm({**SCGPT, **SETTINGS["fast"]}, batch, "cpu"), new)}
    for fam in ("bioformer-linear", "bioformer-linear-outgoing"):
        for tag, mod in (("new", new), ("old", old)):
            arms[f"{fam} {tag}"] = (Arm({**fams[fam], **SETTINGS["fast"]}, batch, "cpu"), mod)
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    for i in range(steps + 1):  # the first round warms up
        for name, (arm, mod) in arms.items():
            lp.coded_bias_attention, lp.split_applies = mod.coded_bias_attention, mod.split_applies
            c = time.process_time()
            arm.step()
            if i:
                cpu[name].append(time.process_time() - c)
    ref = statistics.median(cpu["scgpt fast"])
    for name, times in cpu.items():
        print(f"{name:32s} CPU {statistics.median(times):.3f} s/step, / fast scGPT {statistics.median(times) / ref:.3f}")


if __name__ == "__main__":
    main()
