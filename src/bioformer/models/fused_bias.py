"""Attention with the prior's learned per-code bias on CPU's fused (flash) kernel, in training.

`scaled_dot_product_attention` leaves its fused CPU kernel for the math path whenever the float
mask needs a gradient, which the prior's per-code, per-head bias `delta` [K, H] does: the math
path materialises and keeps the [B, H, r, r] scores and probabilities. Here the forward calls
the fused kernel with the bias as a plain (detached) mask and keeps only its output and
log-sum-exp; the backward gets dq, dk, dv from the kernel's own backward and the bias gradient
from the log-sum-exp, only where the bias lives (the regulators' rows and columns, see
`PriorCodes`):

    dS_ij = P_ij (dO_i . v_j - D_i),   D_i = dO_i . O_i,   P_ij = exp(s_ij + mask_ij - lse_i)
    d delta[c, h] = sum of dS[b, h, i, j] over the pairs (i, j) with code c

That costs O(B H S r d) (S regulators per cell, a few % of r) instead of the math path's
O(B H r r) memory and passes. The result equals the math path's to float rounding
(tests/models/test_fused_bias.py). Anything else (dropout, other devices, no gradient) keeps
`scaled_dot_product_attention`, which is also the pure-PyTorch reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bioformer.models.pair import PriorCodes

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fused_available(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether `coded_bias_attention` takes the fused path for these queries: CPU, no attention
    dropout, the kernel present in this torch, and equal head dims of q, k, v (the caller pads v)."""
    return q.device.type == "cpu" and dropout_p == 0 and _FLASH is not None and _FLASH_BWD is not None


def _gathered_scores_grad(
    q: torch.Tensor,  # [B, H, n, d] queries of the pairs
    k: torch.Tensor,  # [B, H, m, d] keys of the pairs
    v: torch.Tensor,  # [B, H, m, d_v]
    grad_out: torch.Tensor,  # [B, H, n, d_v] dO of the queries
    delta_i: torch.Tensor,  # [B, H, n] D_i = dO_i . O_i
    lse: torch.Tensor,  # [B, H, n]
    mask: torch.Tensor,  # [B, H, n, m] the float mask at these pairs
    scale: float,
) -> torch.Tensor:  # [B, H, n, m]
    """dS = P (dO v^T - D) for the n x m pairs given (P recomputed from the log-sum-exp)."""
    p = torch.exp(torch.baddbmm(mask.flatten(0, 1), q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=scale)
                  .view_as(mask) - lse.unsqueeze(-1))  # [B, H, n, m]
    dp = grad_out @ v.transpose(-1, -2)  # [B, H, n, m]
    return p * (dp - delta_i.unsqueeze(-1))


def _per_code(ds: torch.Tensor, codes: torch.Tensor, n_codes: int) -> torch.Tensor:  # [K, H]
    """Sum of ds [B, H, n, m] per code, codes [B, n, m]."""
    H = ds.shape[1]
    return ds.new_zeros(n_codes, H).index_add_(0, codes.reshape(-1).long(), ds.permute(0, 2, 3, 1).reshape(-1, H))


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, w] at rows idx [B, S] (same rows for every head): [B, H, S, w]."""
    B, H, _, w = x.shape
    return x.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], w))


class _CodedBiasAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask(delta)) v on the fused kernel, with the gradient of delta."""

    @staticmethod
    def forward(ctx, q, k, v, delta, prior: PriorCodes, padding_mask, start: int, scale: float):
        mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r]
        out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)  # [B, H, rq, d_v], [B, H, rq]
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.prior, ctx.start, ctx.scale, ctx.n_codes = prior, start, scale, delta.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        prior, start, scale = ctx.prior, ctx.start, ctx.scale
        grad_out = grad_out.contiguous()
        dq, dk, dv = _FLASH_BWD(grad_out, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
        d_i = (grad_out * out).sum(-1)  # [B, H, rq]
        rq = q.shape[2]
        # the regulators' rows that fall in this chunk of query rows (other slots count nothing)
        local = prior.sources - start  # [B, S]
        inside = (local >= 0) & (local < rq)
        idx = local.clamp(0, rq - 1)
        ds = _gathered_scores_grad(_gather_rows(q, idx), k, v, _gather_rows(grad_out, idx), d_i.gather(2, idx[:, None].expand(-1, q.shape[1], -1)),
                                   lse.gather(2, idx[:, None].expand(-1, q.shape[1], -1)), _gather_rows(mask, idx), scale)  # [B, H, S, r]
        grad_delta = _per_code(ds, prior.row_codes * inside[:, :, None], ctx.n_codes)
        if prior.col_codes is not None:  # the regulators' columns of the other rows
            src = prior.sources  # [B, S]
            mask_cols = mask.gather(3, src[:, None, None, :].expand(*mask.shape[:3], src.shape[1]))  # [B, H, rq, S]
            ds = _gathered_scores_grad(q, _gather_rows(k, src), _gather_rows(v, src), grad_out, d_i, lse, mask_cols, scale)
            grad_delta += _per_code(ds, prior.col_codes[:, start:start + rq], ctx.n_codes)
        grad_delta[0] = 0  # code 0 ("no edge") adds nothing: delta is relative to it
        return dq, dk, dv, grad_delta, None, None, None, None


def coded_bias_attention(
    q: torch.Tensor,  # [B, H, rq, d] a chunk of query rows (start .. start + rq)
    k: torch.Tensor,  # [B, H, r, d]
    v: torch.Tensor,  # [B, H, r, d_v]; d_v == d where the fused path runs
    delta: torch.Tensor,  # [K, H] per-code bias relative to code 0 (delta[0] == 0)
    prior: PriorCodes,
    padding_mask: torch.Tensor,  # [B, r] True = pad
    start: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:  # [B, H, rq, d_v]
    """Attention of these query rows with the prior's per-code bias (and pads masked): the fused
    kernel where `fused_available` and a gradient is needed, else `scaled_dot_product_attention`
    with the same mask (the reference)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if fused_available(q, dropout_p) and v.shape[-1] == q.shape[-1] and torch.is_grad_enabled():
        return _CodedBiasAttention.apply(q, k, v, delta, prior, padding_mask, start, scale)
    mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
