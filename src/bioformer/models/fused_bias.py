"""Attention with the prior's learned per-code bias on CPU's fused (flash) kernel, in training.

`scaled_dot_product_attention` leaves its fused CPU kernel for the math path whenever the float
mask needs a gradient, which the prior's per-code, per-head bias `delta` [K, H] does; and even
a detached [B, H, r, r] mask costs a full write and two reads. But the bias lives only on the
rows and columns of the cell's regulators (S slots, a few % of r; see `PriorCodes`). The trunk
puts them first (`regulators_first`: positions 0 .. S-1 hold each cell's regulators,
then, in cells with fewer than S, other genes as fillers), so the attention splits by slicing:

* R, the first S query rows: their whole row carries bias: small dense attention [B, H, S, r];
* every other query row: keys 0 .. S-1 (B: bias `delta[col_code]`, small dense scores
  [B, H, r - S, S]) and keys S .. r-1 (A: no bias, the fused kernel over (r - S) x (r - S),
  its mask only the pads, [B, 1, 1, r - S] broadcast). A and B merge exactly by their
  log-sum-exps: lse = logaddexp(lse_A, lse_B), out = e^(lse_A - lse) out_A + e^(lse_B - lse) out_B.

So the kernel never computes a pair that R or B computes (in the batch's own order it did: at
r = 512 with S ~ 34 that was 13% of its work). A filler row is a gene without edges of its own:
its codes sit at the regulator keys (its column codes), and R computes it like the others.
With prior_direction "outgoing" no row but the regulators' carries a bias: every other row
attends to all keys on the fused kernel and B is skipped.

One autograd node (`_SplitAttention`) with its own backward. With P the whole row's softmax,
dS_ij = P_ij (dO_i . v_j - D_i), D_i = dO_i . O_i: the fused kernel's backward recomputes
P_ij = exp(s_ij - lse_i) and D_i = dO_i . out_i from the lse and out it is given, so given the
merged lse and output it returns exactly A's share of dq, dk, dv (no gradient of lse_A
needed). B's and R's dS come from their saved probabilities, and the per-code gradient is dS
summed by code (code 0's from the others': each row's dS sums to 0).

The result equals the math path's to float rounding (tests/models/test_fused_bias.py). Anything
else (short sequences, many regulators, attention dropout, other devices, a prior in the
batch's own order) takes the dense mask through `norm_bias.dense_bias_attention`: CPU's fused
kernel with the mask's gradient from the log-sum-exp in fp32 training without attention
dropout, else `scaled_dot_product_attention` (the pure-PyTorch reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bioformer.models.norm_bias import dense_bias_attention
from bioformer.models.pair import PriorCodes

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


# regulators first, the split is even with the dense mask at r = 96 and wins from r = 128 at every
# regulator share (training step / fast scGPT, 2 threads, `python -m benchmarks.split_threshold`:
# r = 64, B = 32, S = 20: 1.32 vs 1.27, S = 40: 1.25 vs 1.34; r = 96, S = 25: 1.27 vs 1.27;
# r = 128, S = 26: 1.20 vs 1.40, S = 111: 1.24 vs 2.12; r = 512, B = 8, S = 34: 1.22 vs 2.06)
SPLIT_MIN_GENES = 96  # below this r the dense mask (at r = 32 it was ~12% faster)
SPLIT_MAX_SHARE = 1.0  # regulator slots S up to this share of r (every share measured paid)


def split_applies(device: torch.device, dropout_p: float, prior: PriorCodes | None, r: int) -> bool:
    """Whether the prior's attention takes the split, fused path: CPU, no attention dropout, the
    kernel present in this torch, and few regulators in long enough sequences (see the limits).
    The trunk asks it once per forward and then puts the regulators first."""
    return (device.type == "cpu" and dropout_p == 0 and _FLASH is not None and _FLASH_BWD is not None
            and prior is not None and r >= SPLIT_MIN_GENES and prior.sources.shape[1] <= SPLIT_MAX_SHARE * r)


def regulators_first(prior: PriorCodes) -> PriorCodes:
    """These codes with each cell's regulators first (positions 0 .. n-1), the other genes after
    them in their order: `order` [B, r] (gather the sequence with it), so that the split slices
    instead of gathering. `codes` stays in the batch's order."""
    B, S, r = prior.row_codes.shape
    valid = prior.valid if prior.valid is not None else prior.row_codes.ne(0).any(-1)
    is_source = torch.zeros(B, r, dtype=torch.int8, device=valid.device).scatter_add_(1, prior.sources, valid.to(torch.int8))
    order = torch.argsort(is_source.eq(0).to(torch.int8), dim=1, stable=True)  # [B, r]
    row_codes = prior.row_codes.gather(2, order[:, None, :].expand(B, S, r))
    col_codes = None if prior.col_codes is None else prior.col_codes.gather(1, order[:, :, None].expand(B, r, S))
    return PriorCodes(prior.codes, prior.table, torch.arange(S, device=valid.device) * valid, row_codes, col_codes, valid, order)


def _heads_first_codes(codes: torch.Tensor, H: int, n_codes: int) -> torch.Tensor:
    """[B * H * n * m] int32 (one pass): codes [B, n, m] (uint8) as flat indices h * n_codes + code
    into a [H, n_codes] table, heads first, so one `index_select` gives the per-head lookup."""
    heads = torch.arange(H, dtype=torch.int32, device=codes.device).view(1, H, 1, 1) * n_codes
    return (heads + codes.unsqueeze(1).to(torch.int32)).reshape(-1)


GRAD_LANES = 8  # partial sums per code in `_code_grad` (one sum per code is a serial chain of adds)


def _lane_codes(codes: torch.Tensor) -> torch.Tensor:
    """[B, 1, n * m] long (one pass): codes [B, n, m] (uint8) spread over GRAD_LANES partial sums,
    code * GRAD_LANES + lane."""
    B = codes.shape[0]
    flat = codes.reshape(B, 1, -1)
    return torch.arange(flat.shape[-1], device=codes.device) % GRAD_LANES + flat * GRAD_LANES


def _code_grad(ds: torch.Tensor, lanes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """[n_codes, H]: ds [B, H, n, m] summed by code, given the codes [B, n, m] (the same for every
    head) as `_lane_codes` [B, 1, n * m].
    Consecutive pairs mostly share a code, so the adds go round GRAD_LANES accumulators per code
    (`_lane_codes`: 2x faster than one on CPU) and are summed at the end."""
    B, H = ds.shape[:2]
    out = ds.new_zeros(B, H, n_codes * GRAD_LANES).scatter_add_(2, lanes.expand(B, H, -1), ds.reshape(B, H, -1))
    return out.view(B, H, n_codes, GRAD_LANES).sum(dim=(0, 3)).t()


@dataclass
class _Layout:
    """Where the prior's bias sits for query rows [start, start + rq) of a regulators-first
    sequence (`regulators_first`): the first `n_r` of these rows are R rows (below
    S), the others attend to keys 0 .. S-1 with their column codes `col` (B) and to the rest on
    the fused kernel, whose mask is `key_mask` (A). Codes are uint8, one byte per pair held (the
    long indices the lookups want are made per use); code K, one past the table, marks a padded
    key. Built once per batch and chunk, shared by every block (`PriorCodes.cache`)."""

    S: int  # regulator slots: rows and keys 0 .. S-1
    n_r: int  # R rows at the start of this chunk
    key_mask: torch.Tensor  # [B, 1, 1, r - S] (or [B, 1, 1, r] without `col`): the dtype's min on pads, else 0
    col: torch.Tensor | None  # [B, rq - n_r, S] the other rows' codes at keys 0 .. S-1; None: no bias there ("outgoing")
    row: torch.Tensor  # [B, n_r, r] the R rows' codes
    index: dict = field(default_factory=dict, repr=False)  # the codes' index forms, made once (`indices`)

    def indices(self, part: str, H: int, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes of `part` ("col" or "row") as the table lookup's flat indices
        (`_heads_first_codes`) and the gradient's lane indices (`_lane_codes`), made on first use
        and kept for every block and both passes: made per use, the fresh int64 [B, H, n, m]
        index cost ~4 ms per block and pass at r = 512, B = 8 (mostly its allocation)."""
        key = (part, H, n_codes)
        if key not in self.index:
            codes = getattr(self, part)
            self.index[key] = (_heads_first_codes(codes, H, n_codes), _lane_codes(codes))
        return self.index[key]

    @classmethod
    def of(cls, prior: PriorCodes, padding_mask: torch.Tensor, start: int, rq: int, dtype: torch.dtype, K: int) -> _Layout:
        key = ("split", start, rq, dtype, K)
        hit = prior.cache.get(key)
        if hit is not None and hit[0] is padding_mask:
            return hit[1]
        B, r = padding_mask.shape
        S = prior.sources.shape[1]
        n_r = min(max(S - start, 0), rq)
        col, kernel_pads = None, padding_mask  # "outgoing": the other rows see every key on the kernel
        row = prior.row_codes[:, start:start + n_r]
        if prior.col_codes is not None:
            col = prior.col_codes[:, start + n_r:start + rq].to(torch.uint8).masked_fill(padding_mask[:, None, :S], K)
            kernel_pads = padding_mask[:, S:]
            row = row + F.pad(prior.col_codes[:, start:start + n_r], (0, r - S))  # a filler row's codes: at the regulator keys
        key_mask = torch.zeros(B, 1, 1, kernel_pads.shape[1], dtype=dtype, device=padding_mask.device).masked_fill_(
            kernel_pads[:, None, None, :], torch.finfo(dtype).min)
        lay = cls(S, n_r, key_mask, col, row.to(torch.uint8).masked_fill(padding_mask[:, None, :], K))
        prior.cache[key] = (padding_mask, lay)
        return lay


EXP_FLOOR = -87.0  # exp's argument floor: exp(-87) = 1.6e-38, the smallest normal float


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over [B, H, n, k] x [B, H, k, m] (either may be a transposed view) as one bmm."""
    B, H, n, k = a.shape
    m = b.shape[-1]
    return torch.bmm(a.reshape(B * H, n, k), b.reshape(B * H, k, m)).view(B, H, n, m)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _biased_scores(table: torch.Tensor, flat: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """table[codes] + scale q k^T: [B, H, n, m] from the table [H * (K + 1)], the codes as flat
    indices into it (`_heads_first_codes`), q [B, H, n, d], k [B, H, m, d], the product
    accumulated in place into the looked-up bias."""
    B, H, n, d = q.shape
    m = k.shape[2]
    bias = table.index_select(0, flat).view(B * H, n, m)
    return bias.baddbmm_(q.reshape(B * H, n, d), k.reshape(B * H, m, d).transpose(1, 2), alpha=scale).view(B, H, n, m)


def _softmax_grad(d_out: torch.Tensor, out: torch.Tensor, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """dS = P (dO v^T - D), D = rowsum(dO . O): [B, H, n, m] from d_out, out [B, H, n, d], v [B, H, m, d]."""
    B, H, n, m = p.shape
    d = v.shape[-1]
    D = (d_out * out).sum(-1, keepdim=True).reshape(B * H, n, 1)
    return torch.baddbmm(D, d_out.reshape(B * H, n, d), v.reshape(B * H, m, d).transpose(1, 2),
                         beta=-1).view(B, H, n, m).mul_(p)


def _merge_keys(q_o, k, v, table, lay: _Layout, scale: float):
    """The rows past R: part A (keys S .. r-1, on the fused kernel) and part B (keys 0 .. S-1
    with their column codes) merged by log-sum-exp: out [B, H, n, d], lse [B, H, n] and B's
    probabilities [B, H, n, S]."""
    S, H = lay.S, q_o.shape[1]
    out_a, lse_a = _FLASH(q_o, k[:, :, S:], v[:, :, S:], 0.0, False, attn_mask=lay.key_mask, scale=scale)  # [B, H, n, d], [B, H, n]
    s_b = _biased_scores(table, lay.indices("col", H, table.shape[0] // H)[0], q_o, k[:, :, :S], scale)  # [B, H, n, S]
    m = torch.maximum(s_b.amax(dim=-1), lse_a)  # [B, H, n]
    e_b = s_b.sub_(m.unsqueeze(-1)).clamp_min_(EXP_FLOOR).exp_()
    e_a = torch.exp(lse_a - m)
    z = e_b.sum(dim=-1).add_(e_a)
    lse = m.add_(z.log())  # the whole row's log-sum-exp
    p_b = e_b.div_(z.unsqueeze(-1))  # the softmax's probabilities at keys 0 .. S-1
    out = _bmm(p_b, v[:, :, :S]).addcmul_(out_a, e_a.div_(z).unsqueeze(-1))  # [B, H, n, d]
    return out, lse, p_b


class _SplitAttention(torch.autograd.Function):
    """The split computation of the module docstring, one node with its own backward. Products
    with a long inner dimension are taken in the orientation whose bmm is fast on CPU (a
    [r, S] x [S, d] product with the [r, S] factor transposed measured ~10x slower than
    ([d, S] x [S, r])^T), and exp's argument is floored at EXP_FLOOR (below it the vectorised
    exp takes a 4-15x slower path): a masked pair's probability is ~1e-38 instead of 0,
    invisible in fp32 next to the row's total (>= 1 before normalising)."""

    @staticmethod
    def forward(ctx, q, k, v, delta, lay: _Layout, scale: float):
        K, H = delta.shape
        table = torch.cat([delta, delta.new_full((1, H), torch.finfo(delta.dtype).min)]).t().reshape(-1)  # [H * (K + 1)]
        n_r = lay.n_r
        q_r, q_o = q[:, :, :n_r], q[:, :, n_r:]  # R rows, the other rows
        p_r = out_r = out_o = lse = p_b = None
        outs = []
        if n_r:  # R: whole rows with their row codes
            p_r = torch.softmax(_biased_scores(table, lay.indices("row", H, K + 1)[0], q_r, k, scale), dim=-1)  # [B, H, n_r, r]
            out_r = _bmm(p_r, v)  # [B, H, n_r, d]
            outs.append(out_r)
        if q_o.shape[2]:
            if lay.col is None:  # no bias off the R rows: every key on the fused kernel
                out_o, lse = _FLASH(q_o, k, v, 0.0, False, attn_mask=lay.key_mask, scale=scale)
            else:
                out_o, lse, p_b = _merge_keys(q_o, k, v, table, lay, scale)
            outs.append(out_o)
        ctx.save_for_backward(q, k, v, out_o, lse, p_b, p_r, out_r)
        ctx.lay, ctx.scale, ctx.K = lay, scale, K
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, d_out):
        """dS = P (dO . v - D), D = dO . O, over each part's pairs: the fused kernel's backward
        with the merged out and lse recomputes exactly the softmax's P on A's keys (its D is
        dO . out), so A needs no log-sum-exp gradient; B and R get theirs from their saved
        probabilities."""
        q, k, v, out_o, lse, p_b, p_r, out_r = ctx.saved_tensors
        lay, scale, K = ctx.lay, ctx.scale, ctx.K
        n_r, S, H = lay.n_r, lay.S, q.shape[1]
        q_r, q_o = q[:, :, :n_r], q[:, :, n_r:]
        d_r, d_o = d_out[:, :, :n_r], d_out[:, :, n_r:]
        g = q.new_zeros(K + 1, H)
        dqs = []
        if out_o is None:
            dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        elif p_b is None:  # every key on the kernel
            dq_o, dk, dv = _FLASH_BWD(d_o, q_o, k, v, out_o, lse, 0.0, False, attn_mask=lay.key_mask, scale=scale)
            dqs.append(dq_o)
        else:
            dq_o, dk_a, dv_a = _FLASH_BWD(d_o, q_o, k[:, :, S:], v[:, :, S:], out_o, lse, 0.0, False, attn_mask=lay.key_mask, scale=scale)
            ds_b = _softmax_grad(d_o, out_o, v[:, :, :S], p_b)  # [B, H, n, S]
            dqs.append(dq_o.add_(_bmm(ds_b, k[:, :, :S]), alpha=scale))
            dk = torch.cat([_t(_bmm(_t(q_o), ds_b)).mul_(scale), dk_a], dim=2)
            dv = torch.cat([_t(_bmm(_t(d_o), p_b)), dv_a], dim=2)
            g += _code_grad(ds_b, lay.indices("col", H, K + 1)[1], K + 1)
        if n_r:
            ds_r = _softmax_grad(d_r, out_r, v, p_r)  # [B, H, n_r, r]
            dqs.insert(0, _bmm(ds_r, k).mul_(scale))
            dk.add_(_t(_bmm(_t(q_r), ds_r)), alpha=scale)
            dv.add_(_t(_bmm(_t(d_r), p_r)))
            g += _code_grad(ds_r, lay.indices("row", H, K + 1)[1], K + 1)
        g = g[:K]
        g[0] = -g[1:].sum(0)  # every row's dS sums to 0: code 0's gradient over all its pairs
        dq = torch.cat(dqs, dim=2) if len(dqs) > 1 else dqs[0]
        return dq, dk, dv, g, None, None


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
    """Attention of these query rows with the prior's per-code bias (and pads masked): split and
    fused for a regulators-first prior where `split_applies` and v is as wide as q, else the
    dense mask through `dense_bias_attention`."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if prior.order is not None and split_applies(q.device, dropout_p, prior, k.shape[2]) and v.shape[-1] == q.shape[-1]:
        lay = _Layout.of(prior, padding_mask, start, q.shape[2], q.dtype, delta.shape[0])
        return _SplitAttention.apply(q, k, v.to(q.dtype), delta.to(q.dtype), lay, scale)
    mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r]
    return dense_bias_attention(q, k, v, mask, dropout_p, scale)  # fused on CPU in fp32 training too
