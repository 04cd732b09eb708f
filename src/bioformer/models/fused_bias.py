"""Attention with the prior's learned per-code bias on CPU's fused (flash) kernel, in training.

`scaled_dot_product_attention` leaves its fused CPU kernel for the math path whenever the float
mask needs a gradient, which the prior's per-code, per-head bias `delta` [K, H] does; and even
a detached [B, H, r, r] mask costs a full write and two reads. But the bias lives only on the
rows and columns of the cell's regulators (S of them, a few % of r; see `PriorCodes`), so split:

* regulator query rows (S): their whole row carries bias: small dense attention [B, H, S, r];
* every other query row: its keys split into the S regulator keys (bias `delta[col_code]`:
  small dense scores [B, H, rq, S]) and all other keys (no bias: the fused kernel, its mask only
  the padded and regulator keys, [B, 1, 1, r] broadcast). The two parts merge exactly by their
  log-sum-exps: lse = logaddexp(lse_A, lse_B), out = e^(lse_A - lse) out_A + e^(lse_B - lse) out_B.

The merge needs the gradient of the fused part's log-sum-exp, which the kernel's backward does
not take: with dS_ij = P_ij (dO_i . v_j - D_i), D_i = dO_i . O_i, a gradient g_i on lse_i adds
P_ij g_i, i.e. replaces D_i by D_i - g_i. `_FlashLse` gets that from the unchanged kernel by a
spare value channel that is zero in v (so dO . v is unchanged) and set to 1 in O and to -g in dO
for the backward (so D_i drops by g_i). Everything else is plain autograd over O(B H S r) terms.

The result equals the math path's to float rounding (tests/models/test_fused_bias.py). Anything
else (short sequences, many regulators, attention dropout, other devices, no gradient) takes the
dense mask through `norm_bias.dense_bias_attention`: CPU's fused kernel with the mask's gradient
from the log-sum-exp in fp32 training without attention dropout, else
`scaled_dot_product_attention` (the pure-PyTorch reference).
"""

from __future__ import annotations

import torch

from bioformer.models.norm_bias import dense_bias_attention
from bioformer.models.pair import PriorCodes, code_lookup

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


SPLIT_MIN_GENES = 256  # below this r the dense mask is cheap and the split's extra passes cost more
SPLIT_MAX_SHARE = 0.25  # regulator slots S up to this share of r (measured: a win at r = 512 up to S/r ~ 0.18)


def split_applies(q: torch.Tensor, dropout_p: float, prior: PriorCodes | None, r: int) -> bool:
    """Whether `coded_bias_attention` takes the split, fused path: CPU, no attention dropout, the
    kernel present in this torch, and few regulators in long enough sequences (see the limits)."""
    return (q.device.type == "cpu" and dropout_p == 0 and _FLASH is not None and _FLASH_BWD is not None
            and prior is not None and r >= SPLIT_MIN_GENES and prior.sources.shape[1] <= SPLIT_MAX_SHARE * r)


class _FlashLse(torch.autograd.Function):
    """(out [B, H, rq, d], lse [B, H, rq]) of CPU's fused kernel, differentiable in both.
    v's last channel must be a zero pad whose output is never read: it is the spare channel that
    carries lse's gradient (its own gradient is returned as 0)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float):
        out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale = mask, scale
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.clone()
        if grad_lse is not None:  # D_i - g_i through the spare channel (zero in v)
            out = out.clone()
            out[..., -1] = 1.0
            grad_out[..., -1] = -grad_lse
        dq, dk, dv = _FLASH_BWD(grad_out.contiguous(), q, k, v, out, lse, 0.0, False, attn_mask=ctx.mask, scale=ctx.scale)
        if grad_lse is not None:
            dv[..., -1] = 0.0  # the spare channel is a constant pad: its output is never read
        return dq, dk, dv, None, None


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, w] at rows idx [B, S] (the same rows for every head): [B, H, S, w]."""
    B, H, _, w = x.shape
    return x.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], w))


def _heads_first(bias: torch.Tensor) -> torch.Tensor:
    return bias.permute(0, 3, 1, 2)  # [B, n, m, H] -> [B, H, n, m]


def _split_attention(q, k, v, delta, prior: PriorCodes, padding_mask, start: int, scale: float) -> torch.Tensor:
    """The split computation of the module docstring for query rows [start, start + rq)."""
    B, H, rq, _ = q.shape
    r = k.shape[2]
    neg = torch.finfo(q.dtype).min
    src = prior.sources  # [B, S]
    valid = prior.valid if prior.valid is not None else prior.row_codes.ne(0).any(-1)  # [B, S]
    # A: every key but the regulators, on the fused kernel
    is_src_key = torch.zeros(B, r, dtype=torch.int32, device=q.device).scatter_add_(1, src, valid.int()) > 0  # [B, r]
    key_mask = torch.zeros(B, 1, 1, r, dtype=q.dtype, device=q.device).masked_fill_((padding_mask | is_src_key)[:, None, None, :], neg)
    out_a, lse_a = _FlashLse.apply(q, k, v, key_mask.expand(B, H, rq, r), scale)  # [B, H, rq, d], [B, H, rq]
    # B: the regulator keys with their column codes
    col = prior.col_codes[:, start:start + rq] if prior.col_codes is not None else src.new_zeros(B, rq, src.shape[1])
    s_b = (q @ _gather_rows(k, src).transpose(-1, -2)) * scale + _heads_first(code_lookup(delta, col))  # [B, H, rq, S]
    s_b = s_b.masked_fill(~(valid & ~padding_mask.gather(1, src))[:, None, None, :], neg)
    lse_b = torch.logsumexp(s_b, dim=-1)  # [B, H, rq]
    out_b = torch.softmax(s_b, dim=-1) @ _gather_rows(v, src)  # [B, H, rq, d]
    lse = torch.logaddexp(lse_a, lse_b)
    out = (torch.exp(lse_a - lse).unsqueeze(-1) * out_a + torch.exp(lse_b - lse).unsqueeze(-1) * out_b).to(out_a.dtype)  # [B, H, rq, d]
    # the regulators' own query rows in this chunk: their whole row is biased
    local = src - start
    inside = valid & (local >= 0) & (local < rq)  # [B, S]
    keep = inside.any(dim=0).nonzero().squeeze(1)  # [S'] the slots in this chunk in any cell
    if not keep.numel():
        return out
    inside, idx, row_codes = inside[:, keep], local[:, keep].clamp(0, rq - 1), prior.row_codes[:, keep]
    s_r = (_gather_rows(q, idx) @ k.transpose(-1, -2)) * scale + _heads_first(code_lookup(delta, row_codes))  # [B, H, S', r]
    s_r = s_r.masked_fill(padding_mask[:, None, None, :], neg)
    out_r = ((torch.softmax(s_r, dim=-1) @ v) * inside[:, None, :, None]).to(out.dtype)  # [B, H, S', d]
    placed = torch.zeros_like(out).scatter_add(2, idx[:, None, :, None].expand_as(out_r), out_r)  # [B, H, rq, d]
    is_row = torch.zeros(B, rq, device=q.device).scatter_add_(1, idx, inside.float()) > 0  # [B, rq]
    return torch.where(is_row[:, None, :, None], placed, out)


def coded_bias_attention(
    q: torch.Tensor,  # [B, H, rq, d] a chunk of query rows (start .. start + rq)
    k: torch.Tensor,  # [B, H, r, d]
    v: torch.Tensor,  # [B, H, r, d_v]; d_v == d with v[..., -1] == 0 where the fused path runs
    delta: torch.Tensor,  # [K, H] per-code bias relative to code 0 (delta[0] == 0)
    prior: PriorCodes,
    padding_mask: torch.Tensor,  # [B, r] True = pad
    start: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:  # [B, H, rq, d_v]
    """Attention of these query rows with the prior's per-code bias (and pads masked): split and
    fused where `split_applies` and v is as wide as q (for a gradient the caller gives v a zero
    last channel), else the dense mask through `dense_bias_attention`."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if split_applies(q, dropout_p, prior, k.shape[2]) and v.shape[-1] == q.shape[-1]:
        return _split_attention(q, k, v, delta, prior, padding_mask, start, scale)
    mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r]
    return dense_bias_attention(q, k, v, mask, dropout_p, scale)  # fused on CPU in fp32 training too

