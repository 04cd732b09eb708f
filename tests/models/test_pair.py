"""The pair path equals its literal reference: OPM (naive outer product) and pair-bias attention
(explicit softmax), forward and backward, with padding and r not a multiple of 8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioformer.data.prior import pair_codes
from bioformer.models.pair import (
    CodedPair,
    OuterProductMean,
    PairBiasAttention,
    PriorCodes,
    attention_mask,
)
from tests.reference_impl import (
    naive_attention,
    naive_outer_product_mean,
    naive_pair_bias_attention,
)

B, R, C, H, CZ, COPM = 2, 13, 16, 4, 6, 5  # r = 13: not a multiple of 8



def regulator_codes(seed: int = 0) -> torch.Tensor:
    """[B, R, R] pair codes (both directions) of a few regulators per cell, with different counts."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 4, (B, R, R), generator=g, dtype=torch.int8)
    raw *= (torch.rand(B, R, 1, generator=g) < 0.3).to(torch.int8)
    return pair_codes(raw, "both")

def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def grads_close(g: torch.Tensor, ref: torch.Tensor) -> bool:
    """rel. error < 1e-5; gradients that are zero in exact arithmetic (e.g. norm_z.bias: a bias
    constant over keys cancels in the softmax) are only rounding noise, checked absolutely."""
    return rel_err(g, ref) < 1e-5 or (g - ref).abs().max().item() < 1e-6


def padding(r: int = R) -> torch.Tensor:
    pm = torch.zeros(B, r, dtype=torch.bool)
    pm[1, r - 4:] = True  # second cell has 4 pad positions
    return pm


def grads(module: torch.nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None] + [t.grad.clone() for t in tensors]


def zero_grads(module: torch.nn.Module, *tensors: torch.Tensor) -> None:
    module.zero_grad()
    for t in tensors:
        t.grad = None


def test_opm_matches_naive_forward_and_backward():
    torch.manual_seed(0)
    opm = OuterProductMean(C, COPM, CZ)
    m = torch.randn(B, R, C, requires_grad=True)
    pm = padding()
    w = torch.randn(B, R, R, CZ)  # random cotangent
    ref = naive_outer_product_mean(opm, m, pm)
    (ref * w).sum().backward()
    ref_grads = grads(opm, m)
    zero_grads(opm, m)
    out = opm(m, pm)
    (out * w).sum().backward()
    assert rel_err(out, ref) < 1e-5
    for g, g_ref in zip(grads(opm, m), ref_grads, strict=True):
        assert grads_close(g, g_ref)


def test_opm_adds_into_z_and_coded_z():
    torch.manual_seed(1)
    opm = OuterProductMean(C, COPM, CZ)
    m, pm = torch.randn(B, R, C), padding()
    z = torch.randn(B, R, R, CZ)
    torch.testing.assert_close(opm(m, pm, z), z + naive_outer_product_mean(opm, m, pm), rtol=1e-5, atol=1e-6)
    codes = regulator_codes()
    table = torch.randn(16, CZ, requires_grad=True)
    coded = CodedPair(PriorCodes.of(codes, table), table)
    out = opm(m, pm, coded)
    ref = table[codes.long()] + naive_outer_product_mean(opm, m, pm)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    g = table.grad.clone()
    table.grad = None
    (ref * w).sum().backward()
    torch.testing.assert_close(g, table.grad, rtol=1e-5, atol=1e-5)
    const = CodedPair(None, torch.randn(1, CZ))
    torch.testing.assert_close(opm(m, pm, const), const.table[0] + naive_outer_product_mean(opm, m, pm), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 100])
def test_chunked_opm_equals_unchunked(chunk):
    torch.manual_seed(2)
    opm = OuterProductMean(C, COPM, CZ)
    m, pm, z = torch.randn(B, R, C), padding(), torch.randn(B, R, R, CZ)
    full = opm(m, pm, z)
    opm.chunk_size = chunk
    torch.testing.assert_close(opm(m, pm, z), full, rtol=1e-6, atol=1e-6)


def test_opm_padded_pairs_get_only_the_bias():
    torch.manual_seed(3)
    opm = OuterProductMean(C, COPM, CZ)
    pm = padding()
    out = opm(torch.randn(B, R, C), pm)
    torch.testing.assert_close(out[1, -1, :], opm.linear_out.bias.expand(R, CZ))
    torch.testing.assert_close(out[1, :, -1], opm.linear_out.bias.expand(R, CZ))


@pytest.mark.parametrize("aligned", [False, True])
def test_sdpa_with_bias_mask_matches_explicit_softmax_incl_grad_into_bias(aligned):
    torch.manual_seed(4)
    q, k, v = (torch.randn(B, H, R, 8, requires_grad=True) for _ in range(3))
    bias = torch.randn(B, H, R, R, requires_grad=True)
    pm = padding()
    w = torch.randn(B, H, R, 8)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(bias, pm, aligned=aligned))
    (out * w).sum().backward()
    g = [t.grad.clone() for t in (q, k, v, bias)]
    for t in (q, k, v, bias):
        t.grad = None
    ref = naive_attention(q, k, v, bias, pm)
    (ref * w).sum().backward()
    assert rel_err(out, ref) < 1e-5
    for a, b in zip(g, (q.grad, k.grad, v.grad, bias.grad), strict=True):
        assert rel_err(a, b) < 1e-5


def test_attention_mask_is_aligned_and_masks_keys():
    bias = torch.randn(B, H, R, R)
    mask = attention_mask(bias, padding(), aligned=True)
    assert mask.shape == (B, H, R, R) and mask.stride(-2) % 16 == 0
    assert (mask[1, :, :, -4:] == torch.finfo(torch.float32).min).all()
    torch.testing.assert_close(mask[0], bias[0])
    torch.testing.assert_close(attention_mask(bias, padding(), aligned=False), mask)  # the CPU default: same values


@pytest.mark.parametrize("aligned", [False, True])
def test_attention_mask_of_a_constant_bias_broadcasts(aligned):
    bias = torch.randn(1, H, 1, 1)
    mask = attention_mask(bias, padding(), aligned=aligned)
    assert mask.shape == (B, H, 1, R)
    torch.testing.assert_close(mask[0], bias[0].expand(H, 1, R))
    assert (mask[1, :, :, -4:] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("gating", [True, False])
def test_pair_bias_attention_matches_reference_forward_and_backward(gating):
    torch.manual_seed(5)
    attn = PairBiasAttention(C, H, CZ, pair_bias=True, gating=gating, dropout=0.0).eval()
    if gating:  # the default gate is constant at init; make it depend on m
        torch.nn.init.normal_(attn.gate.weight)
    m = torch.randn(B, R, C, requires_grad=True)
    z = torch.randn(B, R, R, CZ, requires_grad=True)
    pm = padding()
    w = torch.randn(B, R, C)
    w[pm] = 0  # outputs at pad positions are not compared
    ref = naive_pair_bias_attention(attn, m, z, pm)
    (ref * w).sum().backward()
    ref_grads = grads(attn, m, z)
    zero_grads(attn, m, z)
    out = attn(m, z, pm)
    (out * w).sum().backward()
    keep = ~pm
    assert rel_err(out[keep], ref[keep]) < 1e-5
    assert z.grad.abs().sum() > 0  # gradients flow into z
    for g, g_ref in zip(grads(attn, m, z), ref_grads, strict=True):
        assert grads_close(g, g_ref)


def test_coded_pair_bias_equals_materialised_z():
    torch.manual_seed(6)
    attn = PairBiasAttention(C, H, CZ, dropout=0.0).eval()
    codes = regulator_codes()
    table = torch.randn(16, CZ)
    m, pm = torch.randn(B, R, C), padding()
    coded = CodedPair(PriorCodes.of(codes, table), table)
    torch.testing.assert_close(attn(m, coded, pm), attn(m, table[codes.long()], pm), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.pair_bias(coded), attn.pair_bias(table[codes.long()]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coded.materialise(B, R), table[codes.long()])
    zero = CodedPair(None, torch.zeros(1, CZ))
    torch.testing.assert_close(attn(m, zero, pm), attn(m, torch.zeros(B, R, R, CZ), pm), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["both", "outgoing"])
@pytest.mark.parametrize("r", [R, 16])  # 16: the edges read 8 per int64 word
def test_prior_codes_from_edges_equal_those_from_pair_codes(direction, r):
    """`PriorCodes.of_edges` (the model's path: no pair codes over r^2) gives exactly the slots
    and codes of `of(pair_codes(...))`, with cells of different regulator counts (padding
    slots), a cell without edges, and a regulator that is also another's target."""
    g = torch.Generator().manual_seed(2)
    raw = torch.randint(0, 4, (3, r, r), generator=g, dtype=torch.int8)
    raw *= (torch.rand(3, r, 1, generator=g) < torch.tensor([0.3, 0.1, 0.0]).view(3, 1, 1)).to(torch.int8)
    raw[1, 2, 7] = 3
    raw[1, 7, 2] = 1  # 2 and 7 regulate each other
    raw[0, 5, -1] = 1  # an edge in the last column only (the last byte of a word)
    table = torch.randn(16, CZ, generator=g)
    want = PriorCodes.of(pair_codes(raw, direction), table)
    got = PriorCodes.of_edges(raw, direction, table)
    assert (want.col_codes is None) == (direction == "outgoing")
    for name in ("sources", "valid", "row_codes", "col_codes"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), name
    assert int(want.row_codes.max()) > (4 if direction == "both" else 0)  # the reverse direction is in the codes


def test_attention_with_a_head_dim_not_a_multiple_of_8_matches_reference():
    """d_head 15 (d_model 60, 4 heads, the equal-parameter benchmark's BioFormer) runs the fused
    kernel zero-padded to 16 (`aligned_attention`): output and gradients equal the explicit
    softmax at 1 / sqrt(15) (not 1 / sqrt(16)), and the kernel sees head dim 16."""
    torch.manual_seed(3)
    attn = PairBiasAttention(60, 4, CZ, pair_bias=False, dropout=0.0).eval()
    m = torch.randn(B, R, 60, requires_grad=True)
    pm = padding()
    w = torch.randn(B, R, 60) * (~pm)[..., None]
    ref = naive_pair_bias_attention(attn, m, None, pm)
    (ref * w).sum().backward()
    ref_grads = grads(attn, m)
    zero_grads(attn, m)
    with torch.profiler.profile(record_shapes=True) as prof:
        out = attn(m, None, pm)
        (out * w).sum().backward()
    assert rel_err(out[~pm], ref[~pm]) < 1e-5
    for g, g_ref in zip(grads(attn, m), ref_grads, strict=True):
        assert grads_close(g, g_ref)
    shapes = [e.input_shapes[0] for e in prof.key_averages(group_by_input_shape=True)
              if e.key == "aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert shapes and all(s[-1] == 16 for s in shapes)
