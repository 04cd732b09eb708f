"""The pair path: pair-biased attention over genes and the outer product mean that updates z.

Both are written at their memory floor: the OPM never forms the [B, r, r, c_opm, c_opm] outer
product, and the attention goes through `scaled_dot_product_attention` with the pair bias as a
float mask, so fused kernels run where PyTorch has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(
    bias: torch.Tensor | None,  # [B, r, r, H] pair bias (query i, key j, head h), or None
    padding_mask: torch.Tensor,  # [B, r] True = pad
) -> torch.Tensor:
    """Float mask for SDPA: the pair bias per head plus -inf on padded keys.

    Returns [B, H, r, r] (or [B, 1, 1, r] without bias). The bias is written once into a buffer
    whose last dimension is padded to a multiple of 8 and then sliced: fused kernels want an
    aligned row stride, and this costs one copy for all heads together (none per head).
    """
    B, r = padding_mask.shape
    neg_inf = torch.finfo(bias.dtype if bias is not None else torch.float32).min
    if bias is None:
        m = torch.zeros(B, 1, 1, r, device=padding_mask.device)
        return m.masked_fill(padding_mask[:, None, None, :], neg_inf)
    H = bias.shape[-1]
    r_pad = (r + 7) // 8 * 8
    buf = bias.new_empty(B, H, r, r_pad)[..., :r]  # [B, H, r, r] view with aligned rows
    buf.copy_(bias.permute(0, 3, 1, 2))
    return buf.masked_fill(padding_mask[:, None, None, :], neg_inf)


class PairBiasAttention(nn.Module):
    """m -> Attention(LN(m)) with per-head logits biased by Linear(LN(z)), optional sigmoid gate.

    Parameter layout follows nn.MultiheadAttention (in_proj 3c x c, out_proj) so that, without
    bias and gate, it is exactly the attention of a pre-LN nn.TransformerEncoderLayer.
    """

    def __init__(self, d_model: int, nhead: int, d_z: int, pair_bias: bool = True, gating: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.nhead = nhead
        self.norm_m = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, d_model) if gating else None
        if self.gate is not None:  # start open (sigmoid(1) ~ 0.73), AlphaFold-style
            nn.init.zeros_(self.gate.weight)
            nn.init.ones_(self.gate.bias)
        self.norm_z = nn.LayerNorm(d_z) if pair_bias else None
        self.bias_proj = nn.Linear(d_z, nhead, bias=False) if pair_bias else None
        self.dropout = dropout
        self.dropout_out = nn.Dropout(dropout)

    def forward(
        self,
        m: torch.Tensor,  # [B, r, c]
        z: torch.Tensor | None,  # [B, r, r, c_z]
        padding_mask: torch.Tensor,  # [B, r]
    ) -> torch.Tensor:
        B, r, c = m.shape
        x = self.norm_m(m)
        q, k, v = self.in_proj(x).view(B, r, 3, self.nhead, c // self.nhead).permute(2, 0, 3, 1, 4)  # [B, H, r, c/H] each
        bias = self.bias_proj(self.norm_z(z)) if (self.bias_proj is not None and z is not None) else None  # [B, r, r, H]
        mask = attention_mask(bias, padding_mask).to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        o = o.transpose(1, 2).reshape(B, r, c)  # [B, r, c]
        if self.gate is not None:
            o = torch.sigmoid(self.gate(x)) * o
        return self.dropout_out(self.out_proj(o))


class OuterProductMean(nn.Module):
    """z update from m: update[b, i, j] = W . flatten(a_i (x) b_j) + bias, a/b = Linear(LN(m)).

    With W viewed as [c_z, c_opm, c_opm], contract a with W first (t = [B, r, c_z, c_opm]), then
    t with b: memory scales with the output z, not c_opm^2 times it. Padded positions get
    a = b = 0, so they never contribute to z. `chunk_size` computes rows of z in chunks
    (inference / very long r).
    """

    def __init__(self, d_model: int, d_opm: int, d_z: int, chunk_size: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear_a = nn.Linear(d_model, d_opm)
        self.linear_b = nn.Linear(d_model, d_opm)
        self.linear_out = nn.Linear(d_opm * d_opm, d_z)
        self.d_opm, self.d_z = d_opm, d_z
        self.chunk_size = chunk_size

    def forward(
        self,
        m: torch.Tensor,  # [B, r, c]
        padding_mask: torch.Tensor,  # [B, r] True = pad
    ) -> torch.Tensor:  # [B, r, r, c_z]
        B, r, _ = m.shape
        x = self.norm(m)
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, r, 1]
        a = self.linear_a(x) * keep  # [B, r, c_opm]
        b = self.linear_b(x) * keep  # [B, r, c_opm]
        W = self.linear_out.weight.view(self.d_z, self.d_opm, self.d_opm)  # [c_z, c_opm(a), c_opm(b)]
        t = torch.einsum("bic,zcd->bizd", a, W)  # [B, r, c_z, c_opm]
        chunk = self.chunk_size or r
        outs = []
        for start in range(0, r, chunk):
            t_c = t[:, start:start + chunk]  # [B, ri, c_z, c_opm]
            ri = t_c.shape[1]
            # [B, r_j, c_opm] @ [B, c_opm, ri*c_z] -> [B, r_j, ri, c_z] -> [B, ri, r_j, c_z]
            u = torch.matmul(b, t_c.reshape(B, ri * self.d_z, self.d_opm).transpose(1, 2))
            outs.append(u.view(B, r, ri, self.d_z).transpose(1, 2))
        update = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return update + self.linear_out.bias  # [B, r, r, c_z]
