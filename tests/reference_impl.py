"""Straightforward reference versions of the pair path, for tests and benchmarks only.

They are the mathematics written out literally (the naive OPM materialises the full
[B, r, r, c_opm, c_opm] outer product; the attention is an explicit softmax), so the efficient
modules in `bioformer.models.pair` can be checked against them. Never import these from src/.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_outer_product_mean(opm, m: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """update[b, i, j] = linear_out(flatten(a_i (x) b_j)) with the weights of `opm` (an
    OuterProductMean). Materialises [B, r, r, c_opm, c_opm]."""
    x = opm.norm(m)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, r, 1]
    a = opm.linear_a(x) * keep  # [B, r, c_opm]
    b = opm.linear_b(x) * keep  # [B, r, c_opm]
    outer = a[:, :, None, :, None] * b[:, None, :, None, :]  # [B, r, r, c_opm, c_opm]
    B, r = m.shape[:2]
    return opm.linear_out(outer.reshape(B, r, r, -1))  # [B, r, r, c_z]


def naive_pair_bias_attention(attn, m: torch.Tensor, z: torch.Tensor | None, padding_mask: torch.Tensor) -> torch.Tensor:
    """The module `attn` (a PairBiasAttention, eval mode) with an explicit softmax over keys."""
    B, r, c = m.shape
    H = attn.nhead
    x = attn.norm_m(m)
    q, k, v = attn.in_proj(x).view(B, r, 3, H, c // H).permute(2, 0, 3, 1, 4)  # [B, H, r, c/H]
    logits = q @ k.transpose(-1, -2) / (c // H) ** 0.5  # [B, H, r, r]
    if attn.bias_proj is not None and z is not None:
        logits = logits + attn.bias_proj(attn.normalise_z(z)).permute(0, 3, 1, 2)  # LN(z), or z * scale (linear)
    logits = logits.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    o = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(B, r, c)
    if attn.gate is not None:
        o = torch.sigmoid(attn.gate(x)) * o
    return attn.out_proj(o)


def naive_attention(q, k, v, bias, padding_mask):
    """softmax(q k^T / sqrt(d) + bias, keys masked) v; q/k/v [B, H, r, d], bias [B, H, r, r]."""
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
    logits = logits.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return F.softmax(logits, dim=-1) @ v


def legacy_pair_bias_mask(attn, z: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """The full pair mode's attention mask as it was computed before z was stored channel-first:
    `Linear(LayerNorm(z))` on [B, r, r, c_z], permuted head-major, the dtype's minimum on padded
    keys by an out-of-place masked_fill. [B, H, r, r]"""
    bias = attn.bias_proj(attn.norm_z(z)).permute(0, 3, 1, 2)  # [B, H, r, r]
    return bias.masked_fill(padding_mask[:, None, None, :], torch.finfo(bias.dtype).min)
