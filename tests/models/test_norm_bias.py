"""The full pair mode's fused `LayerNorm(z) -> pair bias -> key padding` (models/norm_bias.py) on
channel-first z equals the old formulation (LayerNorm + Linear on [B, r, r, c_z], permute,
masked_fill), forward and every gradient, and the OPM writes z channel-first."""

from __future__ import annotations

import torch

from bioformer.models.norm_bias import norm_bias
from bioformer.models.pair import OuterProductMean, PairBiasAttention
from tests.reference_impl import legacy_pair_bias_mask

B, R, C, H, CZ = 3, 11, 16, 4, 6


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).abs().max() / ref.abs().max()).item()


def setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attn = PairBiasAttention(C, H, CZ, dropout=0.0)
    with torch.no_grad():  # non-default LayerNorm affine, so gamma and beta matter
        attn.norm_z.weight.copy_(1 + 0.5 * torch.randn(CZ, generator=g))
        attn.norm_z.bias.copy_(torch.randn(CZ, generator=g))
    # per-pair offsets and scales unlike N(0, 1): the statistics have work to do
    z = torch.randn(B, R, R, CZ, generator=g) * (0.2 + torch.rand(B, R, R, 1, generator=g)) + 3 * torch.randn(B, R, R, 1, generator=g)
    pm = torch.zeros(B, R, dtype=torch.bool)
    pm[1, R - 4:] = True
    pm[2, R - 1:] = True
    return attn, z, pm, torch.randn(B, H, R, R, generator=g)  # cotangent, non-zero at padded keys too


def run(fn, attn, z, pm, cot):
    z = z.clone().requires_grad_(True)
    attn.zero_grad()
    out = fn(attn, z, pm)
    (out * cot).sum().backward()
    return out.detach(), [z.grad] + [p.grad.clone() for p in (attn.norm_z.weight, attn.norm_z.bias, attn.bias_proj.weight)]


def fused(attn, z, pm):
    return norm_bias(z.permute(0, 3, 1, 2).contiguous(), attn.bias_proj.weight, attn.norm_z, pm)


def test_norm_bias_equals_layer_norm_linear_masked_fill_forward_and_backward():
    attn, z, pm, cot = setup()
    out, grads = run(fused, attn, z, pm, cot)
    ref, ref_grads = run(legacy_pair_bias_mask, attn, z, pm, cot)
    pads = pm[:, None, None, :].expand_as(out)
    assert (out[pads] == torch.finfo(torch.float32).min).all()
    assert rel_err(out[~pads], ref[~pads]) < 1e-5
    assert grads[0][pm[:, None, :, None].expand_as(grads[0])].abs().max() == 0  # padded keys get no gradient
    for name, g, g_ref in zip(("z", "gamma", "beta", "weight"), grads, ref_grads, strict=True):
        assert rel_err(g, g_ref) < 1e-5, name


def test_module_reads_channel_first_and_last_z_alike():
    attn, z, pm, _ = setup(1)
    m = torch.randn(B, R, C)
    z_cf = z.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # same values, channel-first storage
    torch.testing.assert_close(attn(m, z_cf, pm), attn(m, z, pm), rtol=0, atol=0)
    torch.testing.assert_close(attn.pair_bias(z_cf), attn.pair_bias(z), rtol=0, atol=0)
    no_pads = torch.zeros(B, R, dtype=torch.bool)
    assert rel_err(attn.pair_bias(z_cf).detach(), legacy_pair_bias_mask(attn, z, no_pads).detach()) < 1e-5


def test_opm_writes_z_channel_first():
    torch.manual_seed(2)
    opm = OuterProductMean(C, 5, CZ)
    m, pm = torch.randn(B, R, C), torch.zeros(B, R, dtype=torch.bool)
    for z in (None, torch.randn(B, R, R, CZ).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)):
        out = opm(m, pm, z)
        assert out.shape == (B, R, R, CZ) and out.permute(0, 3, 1, 2).is_contiguous()


def test_dense_bias_attention_on_the_fused_kernel_equals_sdpa_math_path():
    from torch.profiler import ProfilerActivity, profile

    from bioformer.models.norm_bias import dense_bias_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, R, 8, generator=g) for _ in range(3))
    pm = torch.zeros(B, R, dtype=torch.bool)
    pm[1, R - 4:] = True
    mask = (2 * torch.randn(B, H, R, R, generator=g)).masked_fill(pm[:, None, None, :], torch.finfo(torch.float32).min)
    cot = torch.randn(B, H, R, 8, generator=g)

    def run_attn(fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, mask)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn(*leaves)
            (out * cot).sum().backward()
        return [out.detach()] + [t.grad for t in leaves], {e.key for e in prof.key_averages()}

    got, ops = run_attn(lambda q, k, v, m: dense_bias_attention(q, k, v, m))
    ref, _ = run_attn(lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops  # the fused kernel really ran
    for name, a, b in zip(("out", "dq", "dk", "dv", "dmask"), got, ref, strict=True):
        assert rel_err(a, b) < 1e-5, name
