"""Linear pair mode: BioFormer's pair bias computed without ever forming z [B, r, r, c_z].

Without the LayerNorm on z before the bias (block l's bias is `w_l . z_l`, w_l [H, c_z] with a
per-channel scale folded in), z_l = z_0 + sum_{k<l} (W_k (a_k x b_k) + beta_k) makes the bias

    bias_l[h, i, j] = (w_l E)[code(i, j), h] + sum_{k<l} a_k(i) M_{k,l,h} b_k(j) + const_l[h]
    M_{k,l,h} = sum_c w_l[h, c] W_k[c]        ([c_opm, c_opm] per head)

Terms constant over the key j cancel in the softmax (beta_k, the "no edge" code's value), so:

* each earlier block's OPM becomes c_opm more query/key channels per head: q' = [q, s a_k M],
  k' = [k, b_k], with s = sqrt(d_head) so that SDPA's 1/sqrt(d_head) leaves the term exact;
* the prior's code is "no edge" except on the rows and columns of the cell's regulators (genes
  with an outgoing edge, S of them): their codes are gathered once (int8, O(B S r)). On CPU
  without attention dropout, in sequences long enough that the split pays (`split_applies`),
  the trunk puts each cell's regulators first and the attention slices off those rows and
  columns and runs the rest on the fused kernel (`bioformer.models.fused_bias`: no
  [B, H, r, r] tensor at all, training included). Elsewhere (the reference) each chunk of query rows looks up and scatters them into
  its float mask (one dense mask while B * H * r * r is small, else chunks of
  BIAS_CHUNK_ELEMENTS / (B H r) rows unless given); its backward is a gather and a lookup
  backward over O(B S r) pairs, never over all r * r.

Values are zero-padded to the query/key width where CPU's fused kernel runs (it wants equal head
dims). With
`chunk_size`, attention runs over chunks of query rows, each recomputed in backward, so even the
math path (CPU with dropout) holds O(B H chunk r) at a time. See docs/memory-and-speed.md ("Linear pair mode").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bioformer.models.fused_bias import coded_bias_attention, split_applies
from bioformer.models.norm_bias import dense_bias_attention
from bioformer.models.pair import OuterProductMean, PairBiasAttention, PriorCodes

BIAS_CHUNK_ELEMENTS = 2**24  # without chunk_size: query rows per chunk so that a chunk's prior bias has at most this many elements


@dataclass
class OPMTerm:
    """One block's OPM in factored form: its z update is W (a x b) + bias, never formed."""

    a: torch.Tensor  # [B, r, c_opm], zero at pads
    b: torch.Tensor  # [B, r, c_opm], zero at pads
    weight: torch.Tensor  # [c_z, c_opm(a), c_opm(b)]
    bias: torch.Tensor | None  # [c_z] or None (constant over pairs: only the pair-bias readout needs it)

    @classmethod
    def of(cls, opm: OuterProductMean, m: torch.Tensor, padding_mask: torch.Tensor) -> OPMTerm:
        a, b = opm.factors(m, padding_mask)
        return cls(a, b, opm.weight(), opm.linear_out.bias)


def code_bias(prior: PriorCodes, w: torch.Tensor, relative: bool = True) -> torch.Tensor:
    """[K, H] per-code pair bias E w^T; `relative` subtracts code 0's (it cancels in the softmax)."""
    per_code = prior.table @ w.t()  # [K, H]
    return per_code - per_code[:1] if relative else per_code


def _attend_rows(
    q: torch.Tensor,  # [B, H, rq, d'] a chunk of query rows
    k: torch.Tensor,  # [B, H, r, d']
    v: torch.Tensor,  # [B, H, r, d' or d_h]
    delta: torch.Tensor | None,  # [K, H] relative per-code bias, or None (no prior)
    padding_mask: torch.Tensor,  # [B, r] True = pad
    prior: PriorCodes | None,
    start: int,
    scale: float,
    dropout_p: float,
    attend: torch.Tensor | None = None,  # [B, 1, r, r] True = may attend (isolated queries), or None
) -> torch.Tensor:  # [B, H, rq, width of v]
    rows = None if attend is None else attend[:, :, start:start + q.shape[2]]  # [B, 1, rq, r]
    if prior is None:
        mask = ~padding_mask[:, None, None, :]  # [B, 1, 1, r] True = attend
        mask = mask if rows is None else mask & rows
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if rows is not None:  # isolated queries (inference): the dense mask, keys restricted per query row
        mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r], a fresh tensor
        return dense_bias_attention(q, k, v, mask.masked_fill_(~rows, torch.finfo(mask.dtype).min), dropout_p, scale)
    return coded_bias_attention(q, k, v, delta, prior, padding_mask, start, scale, dropout_p)


def linear_pair_attention(
    attn: PairBiasAttention,
    m: torch.Tensor,  # [B, r, c]
    terms: list[OPMTerm],  # OPMs of the earlier blocks
    prior: PriorCodes | None,  # None: z_0 is zero (constant)
    padding_mask: torch.Tensor,  # [B, r] True = pad
    chunk_size: int | None = None,
    attend: torch.Tensor | None = None,  # [B, 1, r, r] True = may attend (isolated queries), or None
) -> torch.Tensor:  # [B, r, c]
    """`attn(m, z, padding_mask, attend)` for the z these terms and prior define (attn without LN on z)."""
    x, q, k, v = attn.qkv(m)  # q, k, v [B, H, r, d_h]
    B, H, r, dh = q.shape
    s = dh**0.5
    w = attn.bias_weight().to(q.dtype)  # [H, c_z]
    q_parts, k_parts = [q], [k]
    for t in terms:
        M = torch.einsum("hz,zde->hde", w, t.weight.to(q.dtype))  # [H, c_opm, c_opm]
        q_parts.append(torch.einsum("bid,hde->bhie", t.a.to(q.dtype), M) * s)  # [B, H, r, c_opm]
        k_parts.append(t.b.to(q.dtype).unsqueeze(1).expand(B, H, r, -1))  # [B, H, r, c_opm]
    delta = code_bias(prior, w.to(prior.table.dtype)).to(q.dtype) if prior is not None else None  # [K, H]
    d = sum(p.shape[-1] for p in q_parts)
    dropout_p = attn.attention_dropout()
    # CPU's fused kernel (no attention dropout) wants v as wide as q and k; the math path (CPU
    # training with attention dropout) and CUDA's kernels do not, and there zero channels of v
    # would only cost time
    fused_cpu = q.device.type == "cpu" and dropout_p == 0
    split = prior is not None and prior.order is not None and split_applies(q.device, dropout_p, prior, r) and attend is None
    d_pad = (d + 7) // 8 * 8  # aligned head dims (CPU's kernel: 16 and 24 measured faster than 15 and 23)
    if d_pad > d:
        q_parts.append(q.new_zeros(B, H, r, d_pad - d))
        k_parts.append(k.new_zeros(B, H, r, d_pad - d))
    q2 = torch.cat(q_parts, dim=-1) if len(q_parts) > 1 else q  # [B, H, r, d']
    k2 = torch.cat(k_parts, dim=-1) if len(k_parts) > 1 else k  # [B, H, r, d']
    v2 = F.pad(v, (0, d_pad - dh)) if fused_cpu else v  # [B, H, r, d' or d_h]
    attend_rows = partial(_attend_rows, padding_mask=padding_mask, prior=prior, scale=1 / s, dropout_p=dropout_p, attend=attend)
    if chunk_size is None and prior is not None and not split:  # a dense bias while it is small, else chunks of rows
        chunk_size = max(1, BIAS_CHUNK_ELEMENTS // (B * H * r))
    chunk = min(chunk_size or r, r)
    if chunk >= r:
        o = attend_rows(q2, k2, v2, delta, start=0)
    else:  # each chunk is recomputed in backward: O(B H chunk r) alive at a time
        recompute = torch.is_grad_enabled()
        outs = []
        for start in range(0, r, chunk):
            fn = partial(attend_rows, start=start)
            args = (q2[:, :, start:start + chunk], k2, v2, delta)
            outs.append(checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args))
        o = torch.cat(outs, dim=2)
    return attn.output(x, o[..., :dh])


def linear_pair_bias(
    attn: PairBiasAttention,
    terms: list[OPMTerm],
    prior: PriorCodes | None,
    r: int,
    chunk_size: int | None = None,
) -> torch.Tensor:  # [B, H, r, r]
    """The full pair bias w . z (constants included, so it equals the materialised one), built
    in chunks of query rows so that no [.., r, r, c_z] tensor is formed."""
    w = attn.bias_weight()  # [H, c_z]
    const = sum((w @ t.bias.to(w.dtype) for t in terms if t.bias is not None),
                torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))  # [H]
    per_code = code_bias(prior, w, relative=False) if prior is not None else None  # [K, H]
    Ms = [torch.einsum("hz,zde->hde", w, t.weight) for t in terms]  # [H, c_opm, c_opm] each
    chunk = min(chunk_size or r, r)
    outs = []
    for start in range(0, r, chunk):
        stop = min(start + chunk, r)
        part = const.view(1, -1, 1, 1)
        if per_code is not None:  # "no edge" everywhere, then the regulators' rows and columns
            B = prior.codes.shape[0]
            part = (part + per_code[0].view(1, -1, 1, 1)).expand(B, -1, stop - start, r).contiguous()
            part = prior.add_(part, per_code - per_code[:1], start)  # [B, H, rq, r]
        for t, M in zip(terms, Ms, strict=True):
            part = part + torch.einsum("bid,hde,bje->bhij", t.a[:, start:stop], M, t.b)  # [B, H, rq, r]
        outs.append(part.expand(-1, -1, stop - start, r))
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
