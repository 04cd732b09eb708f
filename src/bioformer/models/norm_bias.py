"""The full pair mode's pair bias `Linear(LayerNorm(z))` in one autograd node, on channel-first z.

BioFormer stores z channel-first, [B, c_z, r, r] (the module API still sees the logical shape
[B, r, r, c_z], a permuted view), so the bias comes out head-major, [B, H, r, r], as attention
wants it, with no permute copy. With the LayerNorm's statistics mu, rstd per pair and
`wg = w * gamma` ([H, c_z]),

    bias[h, p] = rstd_p * (sum_c wg[h, c] z[c, p] - mu_p * sum_c wg[h, c]) + (w beta)[h]

is one skinny matmul over z plus per-pair scalars: the normalised z is never written, and the
backward needs z, mu, rstd and `pre = bias - w beta` only (derivation in `_NormBias.backward`).
On CPU this replaces LayerNorm forward and backward over [B, r, r, c_z], a [B r r, H] Linear
with its strided-gradient backward, the permute and the padding `masked_fill` (fused in here
too: padded keys get the dtype's minimum, and their gradient is zeroed). It equals
`F.layer_norm` + `Linear` + `masked_fill` to float rounding (tests/models/test_norm_bias.py).

`dense_bias_attention` then runs the attention with that mask on CPU's fused kernel in
training, where `scaled_dot_product_attention` would take its math path (the mask needs a
gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _channel_stats(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1 / sqrt(biased variance + eps) over dim 1 of z [B, C, P]: [B, 1, P] each. A
    loop over the C contiguous planes (two passes, like LayerNorm): CPU's `var_mean` over a
    non-innermost dim of size 8 measured ~80x slower."""
    C = z.shape[1]
    mu = z[:, :1].clone()
    for c in range(1, C):
        mu.add_(z[:, c:c + 1])
    mu.div_(C)
    var, d = torch.zeros_like(mu), torch.empty_like(mu)
    for c in range(C):
        torch.sub(z[:, c:c + 1], mu, out=d)
        var.addcmul_(d, d)
    return mu, var.div_(C).add_(eps).rsqrt_()


class _NormBias(torch.autograd.Function):
    """(z [B, C, P], w [H, C], gamma [C], beta [C], keep [B, 1, P] float 1 = real key, eps)
    -> [B, H, P]: w . LN(z) per pair, the dtype's minimum where keep == 0. Written in place
    into one fresh [B, H, P] tensor (fresh large tensors cost page faults on CPU)."""

    @staticmethod
    def forward(ctx, z, w, gamma, beta, keep, eps: float):
        mu, rstd = _channel_stats(z, eps)  # [B, 1, P] each
        wg = w * gamma  # [H, C]
        wb = w @ beta  # [H]
        out = torch.matmul(wg, z)  # [B, H, P]
        out.addcmul_(mu, wg.sum(dim=1)[:, None], value=-1.0).mul_(rstd)  # wg . (z - mu) rstd
        out.add_(wb[:, None]).masked_fill_(keep == 0, torch.finfo(out.dtype).min)
        ctx.save_for_backward(z, w, gamma, beta, keep, mu, rstd, out)
        return out

    @staticmethod
    def backward(ctx, dout):
        """With g = dout at real keys (0 at padded), ds = g rstd, C channels, pre = out - w beta:
        dz = wg^T ds + mu Bs - (s . ds) / C - z Bs, Bs = rstd (ds . pre) / C (both summed over heads);
        d(wg)[h, c] = sum_p ds (z_c - mu); dw = d(wg) gamma + (sum_p g) beta;
        dgamma = sum_h d(wg) w; dbeta = w^T (sum_p g). (ds is 0 at padded keys, where out is the
        dtype's minimum: finite, so ds . out stays 0 there.)"""
        saved = ctx.saved_tensors  # unpacked once (checkpointing allows no second unpack)
        with torch.autocast(dout.device.type, enabled=False):
            return _norm_bias_backward(dout.to(saved[0].dtype), *saved)


def _norm_bias_backward(dout, z, w, gamma, beta, keep, mu, rstd, out) -> tuple:
    """The gradients of `_NormBias` (see its backward), in fp32."""
    C, H = z.shape[1], w.shape[0]
    wg = w * gamma
    s = wg.sum(dim=1)  # [H]
    ds = dout * (rstd * keep)  # [B, H, P]
    g_sum = torch.matmul(dout, keep.transpose(1, 2)).sum(dim=(0, 2))  # [H]
    bs = torch.matmul(w @ beta, ds).neg_().unsqueeze(1)  # [B, 1, P]: -(w beta) . ds, then + ds . out
    for h in range(H):  # a loop: no [B, H, P] temporary, and no reduction over a short middle dim
        bs.addcmul_(ds[:, h:h + 1], out[:, h:h + 1])
    bs.mul_(rstd).div_(C)
    dz = torch.matmul(wg.t(), ds)  # [B, C, P]
    dz.addcmul_(z, bs, value=-1.0)
    dz.add_(bs.mul_(mu).sub_(torch.matmul(s, ds).unsqueeze(1).div_(C)))
    dwg = torch.matmul(ds, z.transpose(1, 2)).sum(dim=0) - torch.matmul(ds, mu.transpose(1, 2)).sum(dim=0)  # [H, C]
    dw = dwg * gamma + g_sum[:, None] * beta
    return dz, dw, (dwg * w).sum(dim=0), w.t() @ g_sum, None, None


def norm_bias(
    z: torch.Tensor,  # [B, C, r, r] channel-first (contiguous)
    weight: torch.Tensor,  # [H, C] the bias projection
    norm: torch.nn.LayerNorm,  # over C
    padding_mask: torch.Tensor,  # [B, r] True = pad
) -> torch.Tensor:  # [B, H, r, r]
    """The attention mask `Linear(LN(z))` per head with the dtype's minimum on padded keys,
    in fp32 at least (also under autocast: z is fp32 and the statistics want it)."""
    B, C, r, _ = z.shape
    dt = torch.promote_types(z.dtype, torch.float32)
    keep = (~padding_mask).to(dt)[:, None, None, :].expand(B, 1, r, r).reshape(B, 1, r * r)  # [B, 1, P]
    with torch.autocast(z.device.type, enabled=False):
        out = _NormBias.apply(z.to(dt).reshape(B, C, r * r), weight.to(dt), norm.weight.to(dt),
                              norm.bias.to(dt), keep, norm.eps)  # [B, H, P]
    return out.view(B, -1, r, r)


class _FlashDenseBias(torch.autograd.Function):
    """softmax(q k^T scale + mask) v with a dense float mask [B, H, rq, r] that needs a gradient
    (the full pair mode's bias from z): forward on CPU's fused kernel (no [B, H, r, r] scores or
    probabilities kept), backward recomputes P = exp(s - lse) from the kernel's log-sum-exp and
    returns dS = P (dP - D) as the mask's gradient (D_i = dO_i . O_i), the math path's formulas
    in one pass each: no separate scale, add, softmax and padded-row checks."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float):
        out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)  # [B, H, rq, d], [B, H, rq]
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, mask, out, lse = ctx.saved_tensors
        scale = ctx.scale
        p = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(mask).sub_(lse.unsqueeze(-1)).exp_()  # [B, H, rq, r]
        dv = torch.matmul(p.transpose(-1, -2), d_out)  # [B, H, r, d]
        ds = torch.matmul(d_out, v.transpose(-1, -2))  # dP [B, H, rq, r]
        ds.sub_((d_out * out).sum(dim=-1, keepdim=True)).mul_(p)  # dS = P (dP - D)
        dq = torch.matmul(ds, k).mul_(scale)
        dk = torch.matmul(ds.transpose(-1, -2), q).mul_(scale)
        return dq, dk, dv, ds, None


def dense_bias_attention(
    q: torch.Tensor,  # [B, H, rq, d]
    k: torch.Tensor,  # [B, H, r, d]
    v: torch.Tensor,  # [B, H, r, d]
    mask: torch.Tensor,  # [B, H, rq, r] float: the pair bias with the dtype's minimum on padded keys
    dropout_p: float = 0.0,
    scale: float | None = None,  # default 1 / sqrt(d)
) -> torch.Tensor:  # [B, H, rq, d]
    """`scaled_dot_product_attention(q, k, v, attn_mask=mask)` for a float mask that needs a
    gradient: on CPU's fused kernel in fp32 training without attention dropout (`_FlashDenseBias`),
    else SDPA itself (the math path on CPU, the fused kernels on CUDA)."""
    if (q.device.type == "cpu" and dropout_p == 0 and _FLASH is not None and torch.is_grad_enabled()
            and mask.requires_grad and q.dtype == torch.float32 and mask.dtype == torch.float32
            and mask.shape == (*q.shape[:3], k.shape[2]) and v.shape[-1] == q.shape[-1]):
        return _FlashDenseBias.apply(q, k, v, mask, scale if scale is not None else q.shape[-1] ** -0.5)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
