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
    """The split path runs from r = 96 (SPLIT_MIN_GENES); here at test sizes."""
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


def fused(q, k, v, delta, prior, pm, chunk, first: tuple | None = None):
    """`coded_bias_attention` as the trunk runs it: on the sequence reordered regulators first
    (`first`: the reordered prior and padding mask, made here unless given), in chunks of
    `chunk` query rows, and back."""
    first, pmf = first if first is not None else reorder(prior, pm)
    order = first.order  # [B, r]

    def take(x, idx):
        return x.gather(2, idx[:, None, :, None].expand(x.shape))

    qf, kf, vf = take(q, order), take(k, order), take(v, order)
    out = torch.cat([coded_bias_attention(qf[:, :, s:s + chunk], kf, vf, delta, first, pmf, s)
                     for s in range(0, q.shape[2], chunk)], dim=2)
    return take(out, torch.argsort(order, dim=1))


def reorder(prior: PriorCodes, pm: torch.Tensor) -> tuple[PriorCodes, torch.Tensor]:
    """The prior and padding mask regulators first, as the trunk makes them once per forward."""
    first = fused_bias.regulators_first(prior)
    return first, pm.gather(1, first.order)


def run(q, k, v, per_code, prior, pm, chunk, fused_path: bool, first: tuple | None = None):
    """Output and gradients of q, k, v and the per-code table through the relative delta."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, per_code)]
    q_, k_, v_, pc = leaves
    delta = pc - pc[:1]
    r = q.shape[2]
    if fused_path:
        out = fused(q_, k_, v_, delta, prior, pm, chunk, first)
    else:  # the reference: SDPA with the same mask, which needs a gradient (math path)
        out = torch.cat([F.scaled_dot_product_attention(q_[:, :, s:s + chunk], k_, v_, attn_mask=prior.mask(delta, s, min(s + chunk, r), pm))
                         for s in range(0, r, chunk)], dim=2)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * w).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("direction", ["both", "outgoing"])
@pytest.mark.parametrize("chunk", [17, 5])
def test_fused_prior_attention_equals_the_math_path(direction, chunk):
    q, k, v, per_code, prior, pm = problem(direction)
    got = run(q, k, v, per_code, prior, pm, chunk, fused_path=True)
    want = run(q, k, v, per_code, prior, pm, chunk, fused_path=False)
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

    def grads(fused_path: bool):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, delta)]
        q_, k_, v_, d_ = leaves
        if fused_path:
            out = fused(q_, k_, v_, d_, prior, pm, q.shape[2])
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
    first = reorder(prior, pm)  # one batch: the trunk makes this once per forward
    for H in (2, 3, 2):  # H = 3: a third head; the second H = 2 call reuses the first one's indices
        g = torch.Generator().manual_seed(H)
        qh, kh, vh = (torch.randn(q.shape[0], H, *q.shape[2:], generator=g) for _ in range(3))
        pc = torch.randn(16, H, generator=g) * 2
        got = run(qh, kh, vh, pc, prior, pm, 17, fused_path=True, first=first)
        want = run(qh, kh, vh, pc, prior, pm, 17, fused_path=False)
        for name, a, b in zip(["out", "dq", "dk", "dv", "d per_code"], got, want, strict=True):
            assert rel(a, b) < 1e-5, (H, name, rel(a, b))
    (lay,) = [hit[1] for key, hit in first[0].cache.items() if key[0] == "split"]
    assert sorted(key[1] for key in lay.index) == [2, 2, 3, 3]  # per part ("col", "row") and head count


def test_outgoing_prior_keeps_every_key_on_the_fused_kernel():
    """With prior_direction "outgoing" only the regulators' rows carry a bias: no regulator-key
    part (B), the kernel sees every key (its mask the pads); with "both" it sees the keys past
    the S regulator slots only."""
    for direction, want_col in (("outgoing", False), ("both", True)):
        q, k, v, per_code, prior, pm = problem(direction)
        first = fused_bias.regulators_first(prior)
        pmf = pm.gather(1, first.order)
        S = first.sources.shape[1]
        lay = fused_bias._Layout.of(first, pmf, 0, q.shape[2], q.dtype, per_code.shape[0])
        masked = lay.key_mask[:, 0, 0].ne(0)  # [B, keys on the kernel]
        assert (lay.col is not None) == want_col, direction
        assert torch.equal(masked, pmf[:, S:] if want_col else pmf), direction
        assert lay.n_r == S and lay.row.shape[1] == S


@pytest.mark.parametrize("direction", ["both", "outgoing"])
def test_regulators_first_is_the_same_prior_reordered(direction):
    """Each cell's regulators sit at 0 .. n - 1 (ascending), the other genes after them in their
    order, and every pair keeps its code: the reordered mask is the batch's mask reordered."""
    q, k, v, per_code, prior, pm = problem(direction)
    first = fused_bias.regulators_first(prior)
    order = first.order
    is_source = prior.codes.remainder(4).ne(0).any(-1)  # an outgoing edge (the i -> j part of the code)
    for b in range(order.shape[0]):
        n = int(is_source[b].sum())
        assert torch.equal(order[b, :n], is_source[b].nonzero().squeeze(1))
        assert torch.equal(order[b, n:], (~is_source[b]).nonzero().squeeze(1))
    delta = per_code - per_code[:1]
    pmf = pm.gather(1, order)
    want = prior.mask(delta, 0, q.shape[2], pm)
    want = want.gather(2, order[:, None, :, None].expand(want.shape)).gather(3, order[:, None, None, :].expand(want.shape))
    torch.testing.assert_close(first.mask(delta, 0, q.shape[2], pmf), want, rtol=0, atol=0)


def test_fused_prior_attention_runs_the_flash_kernel():
    q, k, v, per_code, prior, pm = problem("both")
    ops = ops_run(lambda: run(q, k, v, per_code, prior, pm, 17, fused_path=True))
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
    linear mode's dense prior mask (short sequences: the split off) and the full pair mode.
    The linear mode's split (regulators first, `_SplitAttention`) runs exactly when it applies."""
    if model == "bioformer-linear-dense":
        monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 10**6)
    kw = dict(model="bioformer", pair_mode="linear") if model.startswith("bioformer-linear") else dict(model=model)
    kw |= dict(pair_mode="full") if model == "bioformer" else {}  # (linear is the default)
    for p_attn, fused in ((0.0, True), (0.1, False)):
        cfg = ModelConfig.of(d_model=16, nhead=2, nlayers=2, d_z=4, d_opm=4, dropout=0.1, attention_dropout=p_attn, **kw)
        ops = _train_step_ops(cfg, use_prior=True)
        # (the dense-bias path's backward is its own: recomputed probabilities, no flash backward op)
        assert (FLASH in ops and MATH not in ops) == fused, (p_attn, sorted(o for o in ops if "attention" in o))
        assert ("_SplitAttention" in ops) == (model == "bioformer-linear" and fused), (p_attn, model)
