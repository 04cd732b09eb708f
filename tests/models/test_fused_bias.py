"""The prior's per-code bias on CPU's fused kernel: forward and backward equal the math-path
reference (relative error < 1e-5 in fp32), whole and in chunks of query rows, with padding, both
prior directions; the fused kernel really runs; and scGPT's training step runs on the fused
kernel when attention dropout is 0 (and not when it is on)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import bioformer.models.fused_bias as fused_bias
from bioformer.config import ModelConfig
from bioformer.data.prior import pair_codes
from bioformer.models import build_model
from bioformer.models.fused_bias import coded_bias_attention
from bioformer.models.pair import PriorCodes


@pytest.fixture(autouse=True)
def split_at_any_length(monkeypatch):
    """The split path runs from r = 256 with few regulators; here at test sizes."""
    monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 1)
    monkeypatch.setattr(fused_bias, "SPLIT_MAX_SHARE", 1.0)


FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
FLASH_BWD = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"
MATH = "aten::_scaled_dot_product_attention_math"


def ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def problem(direction: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, H, r, d = 3, 2, 17, 8
    raw = torch.randint(0, 4, (B, r, r), generator=g, dtype=torch.int8)
    raw *= (torch.rand(B, r, 1, generator=g) < torch.tensor([0.2, 0.4, 0.1]).view(B, 1, 1)).to(torch.int8)
    raw[0, 3, 5] = 2  # at least one regulator per cell
    raw[2, 16, 0] = 1
    prior = PriorCodes.of(pair_codes(raw, direction), torch.randn(16, 4, generator=g))
    pm = torch.zeros(B, r, dtype=torch.bool)
    pm[1, -4:] = True
    q, k, v = (torch.randn(B, H, r, d, generator=g, dtype=torch.float32) for _ in range(3))
    per_code = torch.randn(16, H, generator=g) * 2
    return q, k, v, per_code, prior, pm


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def run(q, k, v, per_code, prior, pm, chunk, fused: bool):
    """Output and gradients of q, k, v and the per-code table through the relative delta."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, per_code)]
    q_, k_, v_, pc = leaves
    delta = pc - pc[:1]
    r = q.shape[2]
    outs = []
    for start in range(0, r, chunk):
        qc = q_[:, :, start:start + chunk]
        if fused:
            outs.append(coded_bias_attention(qc, k_, v_, delta, prior, pm, start))
        else:  # the reference: SDPA with the same mask, which needs a gradient (math path)
            mask = prior.mask(delta, start, start + qc.shape[2], pm)
            outs.append(F.scaled_dot_product_attention(qc, k_, v_, attn_mask=mask))
    out = torch.cat(outs, dim=2)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * w).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("direction", ["both", "outgoing"])
@pytest.mark.parametrize("chunk", [17, 5])
def test_fused_prior_attention_equals_the_math_path(direction, chunk):
    q, k, v, per_code, prior, pm = problem(direction)
    got = run(q, k, v, per_code, prior, pm, chunk, fused=True)
    want = run(q, k, v, per_code, prior, pm, chunk, fused=False)
    names = ["out", "dq", "dk", "dv", "d per_code"]
    for name, a, b in zip(names, got, want, strict=True):
        assert rel(a, b) < 1e-5, (name, rel(a, b))
    assert want[-1].abs().max() > 0.1  # the bias gradient is real, not a zero matched by a zero


@pytest.mark.parametrize("bias_scale", [1.0, 60.0])  # 60: probabilities below exp's floor (EXP_FLOOR)
def test_fused_prior_gradient_of_every_code_equals_the_dense_all_pairs_reference(bias_scale):
    """delta itself as the leaf: its gradient, code 0's included, is that of softmax(q k^T s +
    delta[code(i, j)] over ALL pairs): code 0's from the other codes' (each row's dS sums to 0).
    A large bias puts some probabilities far below the exp floor: still exact to rounding."""
    q, k, v, per_code, prior, pm = problem("both", seed=3)
    delta = (per_code - per_code[:1]) * bias_scale
    pair = prior.codes  # the pair codes it was built from
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))

    def grads(fused: bool):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, delta)]
        q_, k_, v_, d_ = leaves
        if fused:
            out = coded_bias_attention(q_, k_, v_, d_, prior, pm)
        else:
            mask = d_[pair.long()].permute(0, 3, 1, 2).masked_fill(pm[:, None, None, :], torch.finfo(q.dtype).min)
            out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)
        (out * w).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    got, want = grads(True), grads(False)
    for name, a, b in zip(["out", "dq", "dk", "dv", "d delta"], got, want, strict=True):
        assert rel(a, b) < 1e-5, (name, rel(a, b))
    assert want[-1][0].abs().max() > 0.1  # code 0's gradient is real


def test_index_forms_are_made_once_per_batch_and_kept_apart_by_head_count():
    """Every block reuses the layout's lookup and gradient indices (made on first use), yet a
    block with another head count gets its own: each call stays exact to the math path."""
    q, k, v, per_code, prior, pm = problem("both", seed=4)
    for H in (2, 3, 2):  # H = 3: a third head; the second H = 2 call reuses the first one's indices
        g = torch.Generator().manual_seed(H)
        qh, kh, vh = (torch.randn(q.shape[0], H, *q.shape[2:], generator=g) for _ in range(3))
        pc = torch.randn(16, H, generator=g) * 2
        got = run(qh, kh, vh, pc, prior, pm, 17, fused=True)
        want = run(qh, kh, vh, pc, prior, pm, 17, fused=False)
        for name, a, b in zip(["out", "dq", "dk", "dv", "d per_code"], got, want, strict=True):
            assert rel(a, b) < 1e-5, (H, name, rel(a, b))
    (lay,) = [hit[1] for key, hit in prior.cache.items() if key[0] == "split"]
    assert sorted(key[1] for key in lay.index) == [2, 2, 3, 3]  # per part ("col", "row") and head count


def test_outgoing_prior_keeps_every_key_on_the_fused_kernel():
    """With prior_direction "outgoing" only the regulators' rows carry a bias: no regulator-key
    part (B), the kernel masks the pads alone; with "both" it masks the regulator keys too."""
    for direction, want_col in (("outgoing", False), ("both", True)):
        q, k, v, per_code, prior, pm = problem(direction)
        lay = fused_bias._Layout.of(prior, pm, 0, q.shape[2], q.dtype, per_code.shape[0])
        masked = lay.key_mask[:, 0, 0].ne(0)  # [B, r]
        assert (lay.col is not None) == want_col, direction
        assert torch.equal(masked, pm) != want_col, direction  # "both": regulator keys masked as well


def test_fused_prior_attention_runs_the_flash_kernel():
    q, k, v, per_code, prior, pm = problem("both")
    ops = ops_run(lambda: run(q, k, v, per_code, prior, pm, 17, fused=True))
    assert FLASH in ops and FLASH_BWD in ops and MATH not in ops


def _train_step_ops(model_cfg: ModelConfig, use_prior: bool) -> set[str]:
    torch.manual_seed(0)
    model = build_model(model_cfg, 20, use_prior=use_prior).train()
    B, r = 2, 9
    gene_ids = torch.randint(3, 20, (B, r))
    values = torch.rand(B, r)
    pm = torch.zeros(B, r, dtype=torch.bool)
    pm[0, -2:] = True
    prior = torch.zeros(B, r, r, dtype=torch.int8)
    prior[:, 2, 3:6] = 1
    return ops_run(lambda: model(gene_ids, values, pm, prior=prior)["pred"].sum().backward())


@pytest.mark.parametrize("model", ["scgpt", "bioformer-linear", "bioformer-linear-dense", "bioformer"])
def test_training_step_is_fused_without_attention_dropout(model, monkeypatch):
    """The whole training step (residual dropout on): no math-path attention at all with
    attention_dropout 0, and the math path (which dropout needs on CPU) with 0.1. Also for the
    linear mode's dense prior mask (short sequences: the split off) and the full pair mode."""
    if model == "bioformer-linear-dense":
        monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 10**6)
    kw = dict(model="bioformer", pair_mode="linear") if model.startswith("bioformer-linear") else dict(model=model)
    for p_attn, fused in ((0.0, True), (0.1, False)):
        cfg = ModelConfig.of(d_model=16, nhead=2, nlayers=2, d_z=4, d_opm=4, dropout=0.1, attention_dropout=p_attn, **kw)
        ops = _train_step_ops(cfg, use_prior=True)
        # (the dense-bias path's backward is its own: recomputed probabilities, no flash backward op)
        assert (FLASH in ops and MATH not in ops) == fused, (p_attn, sorted(o for o in ops if "attention" in o))
