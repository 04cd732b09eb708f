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

With prior_direction "outgoing" no other row carries a bias (a code sits only on the regulators'
rows): the regulator keys stay on the fused kernel and the B part is skipped (per block at
r = 512, B = 8, d = 24: ~9 ms over the plain kernel instead of ~17).

One autograd node (`_SplitAttention`) with its own backward. With P the whole row's softmax,
dS_ij = P_ij (dO_i . v_j - D_i), D_i = dO_i . O_i: the fused kernel's backward recomputes
P_ij = exp(s_ij - lse_i) and D_i = dO_i . out_i from the lse and out it is given, so given the
merged lse and output it returns exactly the unbiased keys' share of dq, dk, dv (no gradient of
lse_A needed). The regulator keys' and rows' dS come from their saved probabilities, and the
per-code gradient is dS summed by code (code 0's from the others': each row's dS sums to 0).
The regulator rows are cut out of A and B in backward (zero dO there).

The result equals the math path's to float rounding (tests/models/test_fused_bias.py). Anything
else (short sequences, many regulators, attention dropout, other devices) takes the dense mask
through `norm_bias.dense_bias_attention`: CPU's fused kernel with the mask's gradient from the
log-sum-exp in fp32 training without attention dropout, else `scaled_dot_product_attention`
(the pure-PyTorch reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bioformer.models.norm_bias import dense_bias_attention
from bioformer.models.pair import PriorCodes

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


SPLIT_MIN_GENES = 128  # below this r the dense mask is cheap (measured: split 1.27x scGPT vs dense 1.39x at r = 128, B = 32; dense better at r = 64)
SPLIT_MAX_SHARE = 0.25  # regulator slots S up to this share of r (measured at r = 512, S/r ~ 0.18: split 1.59x scGPT vs dense 2.40x)


def split_applies(q: torch.Tensor, dropout_p: float, prior: PriorCodes | None, r: int) -> bool:
    """Whether `coded_bias_attention` takes the split, fused path: CPU, no attention dropout, the
    kernel present in this torch, and few regulators in long enough sequences (see the limits)."""
    return (q.device.type == "cpu" and dropout_p == 0 and _FLASH is not None and _FLASH_BWD is not None
            and prior is not None and r >= SPLIT_MIN_GENES and prior.sources.shape[1] <= SPLIT_MAX_SHARE * r)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, w] at rows idx [B, S] (the same rows for every head): [B, H, S, w]."""
    B, H, _, w = x.shape
    return x.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], w))


def _scatter_rows_(x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, w] += rows [B, H, S, w] at rows idx [B, S], in place (repeated rows add up)."""
    return x.scatter_add_(2, idx[:, None, :, None].expand_as(rows), rows)


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
    """Where the prior's bias sits for query rows [start, start + rq): the regulator keys (masked
    off the fused kernel by `key_mask`), their codes per query row `col`, the regulator rows
    inside the chunk (local rows `idx`, `inside` per cell) and their codes `row` (uint8: one byte
    per pair held; the long indices the lookups want are made per use). Code K, one past the
    table, marks a masked pair (a pad or an empty slot). Built once per batch and chunk, shared by
    every block (`PriorCodes.cache`)."""

    key_mask: torch.Tensor  # [B, 1, 1, r] the dtype's min on pads and (with `col`) regulator keys, else 0
    src: torch.Tensor  # [B, S] regulator key positions
    col: torch.Tensor | None  # [B, rq, S] uint8 the codes per query row and regulator key; None: all "no edge"
    idx: torch.Tensor  # [B, S'] local row of each kept slot (clamped; see inside)
    inside: torch.Tensor  # [B, S'] the slot is a regulator row of this chunk in this cell
    row: torch.Tensor  # [B, S', r] uint8 the regulator rows' codes
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
        src = prior.sources  # [B, S]
        valid = prior.valid if prior.valid is not None else prior.row_codes.ne(0).any(-1)  # [B, S]
        key_ok = valid & ~padding_mask.gather(1, src)  # [B, S] the slot is a real regulator key
        is_src_key = torch.zeros(B, r, dtype=torch.int32, device=src.device).scatter_add_(1, src, key_ok.int()) > 0
        col, off_kernel = None, padding_mask  # no bias off the regulators' rows ("outgoing"): every key on the kernel
        if prior.col_codes is not None:
            col = prior.col_codes[:, start:start + rq].to(torch.uint8).masked_fill(~key_ok[:, None, :], K)
            off_kernel = padding_mask | is_src_key
        key_mask = torch.zeros(B, 1, 1, r, dtype=dtype, device=src.device).masked_fill_(
            off_kernel[:, None, None, :], torch.finfo(dtype).min)
        local = src - start
        inside = valid & (local >= 0) & (local < rq)  # [B, S]
        keep = inside.any(dim=0).nonzero().squeeze(1)  # [S'] the slots in this chunk in any cell
        row = prior.row_codes[:, keep].to(torch.uint8).masked_fill(padding_mask[:, None, :], K)  # [B, S', r]
        lay = cls(key_mask, src, col, local[:, keep].clamp(0, max(rq - 1, 0)), inside[:, keep], row)
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


class _SplitAttention(torch.autograd.Function):
    """The split computation of the module docstring, one node with its own backward. Products
    with a long inner dimension are taken in the orientation whose bmm is fast on CPU (a
    [r, S] x [S, d] product with the [r, S] factor transposed measured ~10x slower than
    ([d, S] x [S, r])^T), and exp's argument is floored at EXP_FLOOR (below it the vectorised
    exp takes a 4-15x slower path): a masked pair's probability is ~1e-38 instead of 0,
    invisible in fp32 next to the row's total (>= 1 before normalising)."""

    @staticmethod
    def keys_part(q, k, v, table, lay: _Layout, scale: float):
        """Parts A (every key but the regulators, on the fused kernel) and B (the regulator keys
        with their column codes) merged by log-sum-exp: out [B, H, rq, d], lse [B, H, rq], and
        B's keys, values [B, H, S, d] and probabilities [B, H, rq, S]."""
        H, n_codes = q.shape[1], table.shape[0] // q.shape[1]
        out_a, lse_a = _FLASH(q, k, v, 0.0, False, attn_mask=lay.key_mask, scale=scale)  # [B, H, rq, d], [B, H, rq]
        # B: the regulator keys with their column codes, merged by log-sum-exp
        k_s, v_s = _gather_rows(k, lay.src), _gather_rows(v, lay.src)  # [B, H, S, d]
        s_b = _biased_scores(table, lay.indices("col", H, n_codes)[0], q, k_s, scale)  # [B, H, rq, S]
        m = torch.maximum(s_b.amax(dim=-1), lse_a)  # [B, H, rq]
        e_b = s_b.sub_(m.unsqueeze(-1)).clamp_min_(EXP_FLOOR).exp_()
        e_a = torch.exp(lse_a - m)
        z = e_b.sum(dim=-1).add_(e_a)
        lse = m.add_(z.log())  # the whole row's log-sum-exp
        p_b = e_b.div_(z.unsqueeze(-1))  # the softmax's probabilities at the regulator keys
        out = _bmm(p_b, v_s).addcmul_(out_a, e_a.div_(z).unsqueeze(-1))  # [B, H, rq, d]
        return out, lse, k_s, v_s, p_b

    @staticmethod
    def forward(ctx, q, k, v, delta, lay: _Layout, scale: float):
        K, H = delta.shape
        table = torch.cat([delta, delta.new_full((1, H), torch.finfo(delta.dtype).min)]).t().reshape(-1)  # [H * (K + 1)]
        if lay.col is None:  # the other rows have no bias: every key on the fused kernel, no B part
            out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=lay.key_mask, scale=scale)  # [B, H, rq, d], [B, H, rq]
            k_s = v_s = p_b = None
        else:
            out, lse, k_s, v_s, p_b = _SplitAttention.keys_part(q, k, v, table, lay, scale)
        # R: the regulators' own query rows, whole rows with their row codes, replace those rows
        q_r = _gather_rows(q, lay.idx)  # [B, H, S', d]
        p_r = torch.softmax(_biased_scores(table, lay.indices("row", H, K + 1)[0], q_r, k, scale), dim=-1)  # [B, H, S', r]
        out_r = _bmm(p_r, v)  # [B, H, S', d]
        bi, si = lay.inside.nonzero(as_tuple=True)
        out[bi, :, lay.idx[bi, si]] = out_r[bi, :, si]
        ctx.save_for_backward(q, k, v, out, lse, k_s, v_s, p_b, q_r, p_r, out_r)
        ctx.lay, ctx.scale, ctx.K = lay, scale, K
        return out

    @staticmethod
    def backward(ctx, d_out):
        """dS = P (dO . v - D), D = dO . O, over each part's pairs: the fused kernel's backward
        with the merged out and lse recomputes exactly the softmax's P on the unbiased keys (its
        D is dO . out), so A needs no log-sum-exp gradient; the regulator rows are cut out of
        A and B (zero dO there) and get theirs from R."""
        q, k, v, out, lse, k_s, v_s, p_b, q_r, p_r, out_r = ctx.saved_tensors
        lay, scale, K = ctx.lay, ctx.scale, ctx.K
        d_r = _gather_rows(d_out, lay.idx) * lay.inside[:, None, :, None].to(d_out.dtype)  # [B, H, S', d]
        bi, si = lay.inside.nonzero(as_tuple=True)
        d_a = d_out.contiguous().clone()
        d_a[bi, :, lay.idx[bi, si]] = 0  # dO with the regulator rows zeroed
        dq, dk, dv = _FLASH_BWD(d_a, q, k, v, out, lse, 0.0, False, attn_mask=lay.key_mask, scale=scale)
        ds_r = _softmax_grad(d_r, out_r, v, p_r)  # [B, H, S', r]
        dq = _scatter_rows_(dq, lay.idx, _bmm(ds_r, k).mul_(scale))
        dk.add_(_t(_bmm(_t(q_r), ds_r)), alpha=scale)
        dv.add_(_t(_bmm(_t(d_r), p_r)))
        H = d_out.shape[1]
        g = _code_grad(ds_r, lay.indices("row", H, K + 1)[1], K + 1)  # [K + 1, H]
        if lay.col is not None:  # B: the regulator keys of the other rows
            ds_b = _softmax_grad(d_a, out, v_s, p_b)  # [B, H, rq, S]
            dq.add_(_bmm(ds_b, k_s), alpha=scale)
            dk = _scatter_rows_(dk, lay.src, _t(_bmm(_t(q), ds_b)).mul_(scale))
            dv = _scatter_rows_(dv, lay.src, _t(_bmm(_t(d_a), p_b)))
            g += _code_grad(ds_b, lay.indices("col", H, K + 1)[1], K + 1)
        g = g[:K]
        g[0] = -g[1:].sum(0)  # every row's dS sums to 0: code 0's gradient over all its pairs
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
    fused where `split_applies` and v is as wide as q, else the dense mask through
    `dense_bias_attention`."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if split_applies(q, dropout_p, prior, k.shape[2]) and v.shape[-1] == q.shape[-1]:
        lay = _Layout.of(prior, padding_mask, start, q.shape[2], q.dtype, delta.shape[0])
        return _SplitAttention.apply(q, k, v.to(q.dtype), delta.to(q.dtype), lay, scale)
    mask = prior.mask(delta, start, start + q.shape[2], padding_mask)  # [B, H, rq, r]
    return dense_bias_attention(q, k, v, mask, dropout_p, scale)  # fused on CPU in fp32 training too
