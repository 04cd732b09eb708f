"""In-process A/B of the BioFormer-linear training step in two source trees: the other tree's
`bioformer` is copied under another package name and imported beside this one; arms (fast
scGPT, BioFormer-linear from this tree, the same from the other tree with this tree's weights)
alternate step by step on one batch. First checks that both trees compute the same loss and
gradients (eval mode: no dropout; the OPM's `linear_b.bias` has a true gradient of 0 in the linear
mode, so its relative difference is round-off), then prints the median step time and the ratio
to scGPT.

    git archive <commit> src | tar -x -C /tmp/old
    python scripts/step_ab.py /tmp/old/src [--threads 1] [--rounds 20] [--family bioformer-linear]
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, ".")
from benchmarks._common import _random_batch  # noqa: E402
from benchmarks.train_step import PRIOR_ROWS_FRAC, SETTINGS, VOCAB, Arm, families  # noqa: E402


def import_tree(src: Path, name: str = "bioformer_other"):
    """The package `bioformer` of another source tree, importable as `name`."""
    root = Path(tempfile.mkdtemp())
    shutil.copytree(src / "bioformer", root / name)
    for py in (root / name).rglob("*.py"):
        py.write_text(re.sub(r"\b(from|import) bioformer([. ])", rf"\1 {name}\2", py.read_text()))
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{name}.models"), importlib.import_module(f"{name}.config")


def grads(arm: Arm) -> tuple[float, dict[str, torch.Tensor]]:
    arm.model.eval()
    loss = arm.loss()
    loss.backward()
    out = {n: p.grad.clone() for n, p in arm.model.named_parameters() if p.grad is not None}
    arm.opt.zero_grad(set_to_none=True)
    arm.model.train()
    return loss.item(), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other_src", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--family", default="bioformer-linear")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models, config = import_tree(args.other_src)
    fams, batch = families(), _random_batch(8, 512, VOCAB, "cpu", prior_rows_frac=PRIOR_ROWS_FRAC)
    spec = {**fams[args.family], **SETTINGS["fast"]}
    arms = {"scgpt": Arm({**fams["scgpt"], **SETTINGS["fast"]}, batch, "cpu"), "this tree": Arm(spec, batch, "cpu")}
    other = arms["other tree"] = Arm(spec, batch, "cpu")  # then rebuilt from the other tree with these weights
    other.model = models.build_model(config.ModelConfig.of(**spec), VOCAB, use_prior=True).train()
    other.model.load_state_dict(arms["this tree"].model.state_dict())
    other.opt = torch.optim.AdamW(other.model.parameters(), lr=1e-4)
    (l1, g1), (l2, g2) = grads(arms["this tree"]), grads(other)
    errs = {n: float((g1[n] - g2[n]).abs().max() / g1[n].abs().max().clamp_min(1e-30)) for n in g1.keys() & g2.keys()}
    worst = sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    print(f"loss {l1:.7f} vs {l2:.7f}; largest relative gradient differences {worst}; only in one: {set(g1) ^ set(g2)}")
    times: dict[str, list[float]] = {k: [] for k in arms}
    for i in range(args.rounds + 2):  # the first two rounds warm up
        for name, arm in arms.items():
            t = time.perf_counter()
            arm.step()
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["scgpt"])
    for name, ts in times.items():
        print(f"{name:12s} {statistics.median(ts) * 1e3:7.1f} ms/step, / fast scGPT {statistics.median(ts) / ref:.3f}")


if __name__ == "__main__":
    main()
