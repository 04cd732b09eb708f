"""The main job's training step (full pair mode, PBMC3k recipe shape: B = 32, r = 128, d_model 64,
d_z = d_opm = 8) before and after a change of the pair path, in ONE process, arms alternated
step by step, so that load from other processes hits every arm alike. Times are process CPU
seconds (what this process computed; on a shared machine wall time also counts waiting for a
core) and wall seconds, median over steps.

Arms: `new` = this tree; `before` = the pair-path classes (`OuterProductMean.forward`,
`PairBiasAttention.forward` / `pair_bias`) of another source tree's `bioformer/models/pair.py`
(e.g. `git archive <commit> src | tar -x -C /tmp/old`, then `--before /tmp/old/src`) swapped
into the same model; `no-flash` = this tree with the full mode's dense-bias attention on SDPA's
math path instead of `norm_bias.dense_bias_attention`; `linear` and `scgpt` = the other
families at the same shape (their own parameters), `linear-noprior` = the linear mode with a
zero z (no prior bias). Same weights, batch and seeds per arm. BioFormer arms take
`--bioformer-d-model` (64, the main job; 60 gives train_step's equal-parameter models).

    python -m benchmarks.full_mode_ab --before /tmp/old/src [--steps 6] [--batch-size 32] [--n-genes 128]
    python -m benchmarks.full_mode_ab --before /tmp/old/src --exactness
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

import bioformer.models.pair as pair
from benchmarks._common import _random_batch, table, write_results
from bioformer.config import ModelConfig
from bioformer.models import build_model


def load_before(src: str):
    """The old pair.py as its own module, sharing this tree's CodedPair / PriorCodes classes."""
    spec = importlib.util.spec_from_file_location("_before_pair", Path(src) / "bioformer/models/pair.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    mod.CodedPair, mod.PriorCodes = pair.CodedPair, pair.PriorCodes
    return mod


@contextlib.contextmanager
def patched(arm: str, before):
    saved = (pair.OuterProductMean.forward, pair.PairBiasAttention.forward, pair.PairBiasAttention.pair_bias,
             pair.dense_bias_attention)
    if arm == "before":
        pair.OuterProductMean.forward = before.OuterProductMean.forward
        pair.PairBiasAttention.forward = before.PairBiasAttention.forward
        pair.PairBiasAttention.pair_bias = before.PairBiasAttention.pair_bias
    elif arm == "no-flash":
        pair.dense_bias_attention = lambda q, k, v, mask, p: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p)
    try:
        yield
    finally:
        (pair.OuterProductMean.forward, pair.PairBiasAttention.forward, pair.PairBiasAttention.pair_bias,
         pair.dense_bias_attention) = saved


def exactness(before) -> None:
    """Output and every gradient of one full-mode model (3 blocks, dropout 0, B = 8, r = 128,
    weights perturbed off their initial values) in fp32 before and after, each against the
    same model in float64 run the old way: max |a - b| / max |b| per tensor. Gradients that are
    zero in exact arithmetic (LayerNorm(z)'s beta, whose bias is constant over keys and cancels in
    the softmax, and the decoder's output bias under a zero-sum loss) are rounding noise, left out."""
    import copy

    g, v, pm, prior = _random_batch(8, 128, 1027, "cpu", prior_rows_frac=0.05)
    torch.manual_seed(0)
    model = build_model(ModelConfig.of(model="bioformer", dropout=0.0, nlayers=3, pair_mode="full"), 1027, use_prior=True).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))

    def run(m, arm: str, dt: torch.dtype) -> dict[str, torch.Tensor]:
        m.zero_grad()
        with patched(arm, before):
            out = m(g, v.to(dt), pm, prior=prior)["pred"]
            (out[~pm] * torch.linspace(-1, 1, int((~pm).sum()), dtype=dt)).sum().backward()
        return {"out": out.detach().double(), **{n: p.grad.double() for n, p in m.named_parameters() if p.grad is not None}}

    ref = run(copy.deepcopy(model).double(), "before", torch.float64)
    got = {arm: run(model, arm, torch.float32) for arm in ("before", "new")}
    names = [n for n in ref if "norm_z.bias" not in n and n != "decoder.value.4.bias"]
    err = {arm: {n: ((t[n] - ref[n]).abs().max() / ref[n].abs().max()).item() for n in names} for arm, t in got.items()}
    worst = sorted(names, key=lambda n: -max(err["before"][n], err["new"][n]))[:5]
    print(f"\nfp32 vs float64, max |a - b| / max |b| over the output and {len(names) - 1} gradients")
    print(table([{"tensor": n, "before": err["before"][n], "new": err["new"][n]} for n in worst] +
                [{"tensor": "worst of all", "before": max(err["before"].values()), "new": max(err["new"].values())}],
                [("tensor", "tensor"), ("before", "before (fp32)"), ("new", "new (fp32)")]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", metavar="SRC", help="source tree whose pair.py is the 'before' arm")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-genes", type=int, default=128)
    ap.add_argument("--arms", default="before,new,no-flash,linear,scgpt")
    ap.add_argument("--bioformer-d-model", type=int, default=64)
    ap.add_argument("--exactness", action="store_true", help="only compare before / new with a float64 evaluation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    before = load_before(args.before) if args.before else None
    if args.exactness:
        return exactness(before)
    arms = [a for a in args.arms.split(",") if a != "before" or before is not None]
    B, r, vocab = args.batch_size, args.n_genes, 1027
    batch = _random_batch(B, r, vocab, "cpu", prior_rows_frac=0.05)
    models, opts = {}, {}
    for arm in arms:
        torch.manual_seed(0)
        d = args.bioformer_d_model
        cfg = ModelConfig.of(model="scgpt") if arm == "scgpt" else ModelConfig.of(
            model="bioformer", d_model=d, pair_mode="linear" if arm.startswith("linear") else "full")
        models[arm] = build_model(cfg, vocab, use_prior=arm != "linear-noprior").train()
        opts[arm] = torch.optim.AdamW(models[arm].parameters(), lr=1e-4)
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    wall: dict[str, list[float]] = {a: [] for a in arms}
    g, v, pm, prior = batch
    for i in range(args.steps + 1):  # step 0 warms up
        for arm in arms:
            model = models[arm]
            with patched(arm, before):
                torch.manual_seed(i)
                t0, c0 = time.perf_counter(), time.process_time()
                out = model(g, v, pm, prior=prior if arm not in ("scgpt", "linear-noprior") else None)
                out["pred"][~pm].pow(2).mean().backward()
                opts[arm].step()
                opts[arm].zero_grad(set_to_none=True)
                c1, t1 = time.process_time(), time.perf_counter()
            if i:
                cpu[arm].append(c1 - c0)
                wall[arm].append(t1 - t0)
    ref = statistics.median(cpu["scgpt"]) if "scgpt" in cpu else None
    base = statistics.median(cpu["before"]) if "before" in cpu else None
    rows = [{"arm": a, "cpu_s": statistics.median(cpu[a]), "wall_s": statistics.median(wall[a]),
             "vs_before": statistics.median(cpu[a]) / base if base else None,
             "vs_scgpt": statistics.median(cpu[a]) / ref if ref else None} for a in arms]
    print(f"\ntraining step, B={B}, r={r}, d_model 64 (BioFormer {args.bioformer_d_model}), fp32, 1 thread, one process, arms alternated, median of {args.steps} steps")
    print(table(rows, [("arm", "arm"), ("cpu_s", "CPU s/step"), ("wall_s", "wall s/step"), ("vs_before", "CPU / before"),
                       ("vs_scgpt", "CPU / scGPT")]))
    path = write_results(f"full_mode_ab_B{B}_r{r}", {"batch_size": B, "r": r, "before_src": args.before, "rows": rows,
                                                   "cpu_times": cpu, "wall_times": wall, "argv": sys.argv[1:]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
