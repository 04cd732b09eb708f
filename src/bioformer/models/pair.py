"""The pair path: pair-biased attention over genes and the outer product mean that updates z.

Both are written at their memory floor: the OPM never forms the [B, r, r, c_opm, c_opm] outer
product, and the attention goes through `scaled_dot_product_attention` with the pair bias as a
float mask, so fused kernels run where PyTorch has them.

z can also be given implicitly as a `CodedPair` (z[b, i, j] = table[codes[b, i, j]]): the initial
z is an embedding of only a handful of edge codes, "no edge" everywhere except on the rows and
columns of a cell's regulators (`PriorCodes`). Its pair bias is then a K-entry table scattered
over those rows and columns into the attention mask, and the first OPM adds the table the same
way in the pass that writes z, instead of materialising and normalising a [B, r, r, c_z] tensor
that holds K distinct rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bioformer.data.prior import N_PRIOR_CODES, PRIOR_DIRECTIONS, pair_codes, regulator_rows
from bioformer.models.norm_bias import dense_bias_attention, norm_bias


class _CodeLookup(torch.autograd.Function):
    """table[codes] whose backward is one `index_add_` into the small table (4x faster on CPU
    than the embedding backward for a 16-row table, where many indices hit each row)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(codes)
        ctx.n_codes = table.shape[0]
        return F.embedding(codes, table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (codes,) = ctx.saved_tensors
        C = grad.shape[-1]
        return grad.new_zeros(ctx.n_codes, C).index_add_(0, codes.reshape(-1), grad.reshape(-1, C)), None


def code_lookup(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[..., C]: table [K, C] at integer `codes` [...]."""
    return _CodeLookup.apply(table, codes.long())


@dataclass
class PriorCodes:
    """Pair codes [B, r, r] in the form both pair modes read them: a code other than "no edge"
    sits only on the rows and columns of the cell's regulators (genes with an outgoing edge, S
    of them; see `bioformer.data.prior.regulator_rows`), so any per-code quantity over all pairs
    is S full rows plus S columns of the other rows. Their codes are gathered once (O(B S r),
    shared by every block), and `add_` looks up and scatters only those: never an [B, r, r, K]
    one-hot or a lookup backward over all r * r pairs.

    Padding slots (cells with fewer than S regulators) point at position 0 with code 0, and the
    tables given to `add_` are relative (row 0 is zero), so they add nothing.
    """

    codes: torch.Tensor  # [B, r, r] the codes it was built from (pair or directed edge codes; 0 = no edge)
    table: torch.Tensor  # [K, c_z] the prior embedding E
    sources: torch.Tensor  # [B, S] the regulators' positions, ascending (0 for padding slots)
    row_codes: torch.Tensor  # [B, S, r] code(source_s, j)
    col_codes: torch.Tensor | None  # [B, r, S] code(i, source_s) for i not a regulator; None when all 0 ("outgoing")
    valid: torch.Tensor | None = None  # [B, S] the slot holds a regulator (False: a padding slot)
    order: torch.Tensor | None = None  # [B, r] the batch's positions in this order (`fused_bias.regulators_first`); None: its own
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # index layouts every block reuses

    @classmethod
    def of(cls, codes: torch.Tensor, table: torch.Tensor) -> PriorCodes:
        """From pair codes [B, r, r] (`bioformer.data.prior.pair_codes`)."""
        is_source = regulator_rows(codes)  # [B, r]
        sources, valid = cls._slots(is_source)
        B, S, r = codes.shape[0], sources.shape[1], codes.shape[1]
        row_codes = torch.gather(codes, 1, sources[:, :, None].expand(B, S, r))  # [B, S, r]
        col_codes = torch.gather(codes, 2, sources[:, None, :].expand(B, r, S))  # [B, r, S]
        return cls._build(codes, table, is_source, sources, valid, row_codes, col_codes)

    @classmethod
    def of_edges(cls, edges: torch.Tensor, direction: str, table: torch.Tensor) -> PriorCodes:
        """From the directed edge codes [B, r, r] (i -> j) the batch carries, for `direction` as in
        `pair_codes`, equal to `of(pair_codes(edges, direction), table)` but without forming the
        pair codes: one pass over the edges finds the regulators, the rest reads their rows and
        columns only (O(B S r))."""
        if direction not in PRIOR_DIRECTIONS:
            pair_codes(edges[:1, :1, :1], direction)  # raises the one error for an unknown direction
        words = edges.view(torch.int64) if edges.is_contiguous() and edges.element_size() == 1 and edges.shape[-1] % 8 == 0 else edges
        is_source = words.any(dim=-1)  # [B, r] an outgoing edge (codes 1..3), read 8 codes per word where they fit: 7x faster
        sources, valid = cls._slots(is_source)
        B, S, r = edges.shape[0], sources.shape[1], edges.shape[1]
        out_rows = torch.gather(edges, 1, sources[:, :, None].expand(B, S, r))  # [B, S, r] src -> j
        in_cols = torch.gather(edges, 2, sources[:, None, :].expand(B, r, S))  # [B, r, S] i -> src
        row_codes, col_codes = out_rows, in_cols
        if direction == "both":  # + 4 * code(j -> i)
            row_codes = out_rows + N_PRIOR_CODES * in_cols.transpose(1, 2)
            col_codes = in_cols + N_PRIOR_CODES * out_rows.transpose(1, 2)
        return cls._build(edges, table, is_source, sources, valid, row_codes, col_codes)

    @staticmethod
    def _slots(is_source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The regulators' positions [B, S] ascending (0 in padding slots) and which slots hold one."""
        # at least one slot (an empty one where no cell has an edge): the prior embedding and the
        # bias weights then stay in the graph with an exactly zero gradient, as DDP needs
        S = max(int(is_source.sum(dim=-1).max()) if is_source.numel() else 0, 1)
        order = torch.argsort(is_source.to(torch.int8), dim=1, descending=True, stable=True)[:, :S]  # [B, S]
        valid = torch.gather(is_source, 1, order)  # [B, S]
        return order * valid, valid

    @classmethod
    def _build(cls, codes, table, is_source, sources, valid, row_codes, col_codes) -> PriorCodes:
        row_codes = row_codes * valid[:, :, None]
        col_codes = col_codes * (valid[:, None, :] & ~is_source[:, :, None])  # regulator rows are whole in row_codes
        return cls(codes, table, sources, row_codes, col_codes if col_codes.any() else None, valid)

    def add_(self, out: torch.Tensor, table: torch.Tensor, start: int = 0, heads_first: bool = True) -> torch.Tensor:
        """out += table[code(i, j)] in place, for the query rows [start, start + rq) that `out`
        holds: out [B, C, rq, r] (`heads_first`) or [B, rq, r, C]; table [K, C] with table[0] = 0.
        Returns out."""
        B, S, r = self.row_codes.shape
        C = table.shape[1]
        rq = out.shape[2] if heads_first else out.shape[1]
        if self.col_codes is not None:
            cols = code_lookup(table, self.col_codes[:, start:start + rq])  # [B, rq, S, C]
            if heads_first:
                out.scatter_add_(3, self.sources[:, None, None, :].expand(B, C, rq, S), cols.permute(0, 3, 1, 2))
            else:
                out.scatter_add_(2, self.sources[:, None, :, None].expand(B, rq, S, C), cols)
        if start == 0 and rq == r:
            codes, idx = self.row_codes, self.sources
        else:  # only the slots that fall in these rows (in any cell; the others' codes are zeroed)
            local = self.sources - start  # [B, S]
            inside = (local >= 0) & (local < rq)
            keep = inside.any(dim=0).nonzero().squeeze(1)  # [S']
            if not keep.numel():
                return out
            codes = self.row_codes[:, keep] * inside[:, keep, None]
            idx = local[:, keep].clamp(0, rq - 1)
        rows = code_lookup(table, codes)  # [B, S', r, C]
        if heads_first:
            return out.scatter_add_(2, idx[:, None, :, None].expand(-1, C, -1, r), rows.permute(0, 3, 1, 2))
        return out.scatter_add_(1, idx[:, :, None, None].expand(-1, -1, r, C), rows)

    def mask(self, delta: torch.Tensor, start: int, stop: int, padding_mask: torch.Tensor) -> torch.Tensor:
        """[B, H, rq, r]: the attention mask of query rows [start, stop), i.e. the bias
        `delta[code(i, j)]` (`delta` [K, H], code 0 -> 0) plus the dtype's min on padded keys,
        written in place into one fresh tensor (the padded keys' min absorbs any bias)."""
        B, r = padding_mask.shape
        neg = torch.finfo(delta.dtype).min
        pads = padding_mask[:, None, None, :].to(delta.dtype) * neg  # [B, 1, 1, r]
        mask = pads.expand(B, delta.shape[1], stop - start, r).contiguous()
        return self.add_(mask, delta, start, heads_first=True)


@dataclass
class CodedPair:
    """z given by edge codes: z[b, i, j] = table[code[b, i, j]], the codes held as `PriorCodes`
    (their regulators' rows and columns), or None when every pair has code 0 (e.g. zero z)."""

    prior: PriorCodes | None
    table: torch.Tensor  # [K, c_z]

    def materialise(self, B: int, r: int) -> torch.Tensor:  # [B, r, r, c_z]
        z = self.table[0].expand(B, r, r, -1).contiguous()
        return z if self.prior is None else self.prior.add_(z, self.table - self.table[:1], heads_first=False)


def channels_first(z: torch.Tensor) -> torch.Tensor:
    """z [B, r, r, c_z] as [B, c_z, r, r] contiguous: a free view of the layout BioFormer keeps z
    in (the OPM writes it channel-first), a copy for any other tensor."""
    return z.permute(0, 3, 1, 2).contiguous()


def attention_mask(
    bias: torch.Tensor | None,  # [B, H, r, r] head-major pair bias (or broadcastable), or None
    padding_mask: torch.Tensor,  # [B, r] True = pad
    dtype: torch.dtype = torch.float32,
    aligned: bool | None = None,
) -> torch.Tensor:
    """Float mask for SDPA: the pair bias per head plus the dtype's min on padded keys.

    Returns [B, H, rq, r] (rq = r, or 1 for a bias constant over queries and keys; [B, 1, 1, r]
    without bias). aligned (default: on CUDA only): the bias is written once into a buffer whose
    last dimension is padded to a multiple of 16 and then sliced, because fused GPU kernels want
    an aligned row stride; that costs one copy for all heads together and no second copy inside
    SDPA. CPU kernels do not care, and there one out-of-place masked_fill is cheaper (no
    CopySlices in backward; measured in benchmarks/train_step.py).
    """
    B, r = padding_mask.shape
    neg = torch.finfo(dtype).min
    pad = padding_mask[:, None, None, :]  # [B, 1, 1, r]
    if bias is None:
        return torch.zeros(B, 1, 1, r, device=padding_mask.device, dtype=dtype).masked_fill_(pad, neg)
    if not (aligned if aligned is not None else bias.device.type == "cuda"):
        return bias.to(dtype).masked_fill(pad, neg).expand(B, -1, -1, r)
    H, rq = bias.shape[1], bias.shape[2]
    r_pad = (r + 15) // 16 * 16
    buf = torch.empty(B, H, rq, r_pad, device=bias.device, dtype=dtype)[..., :r]  # aligned rows
    buf.copy_(bias.expand(B, H, rq, r))
    return buf.masked_fill_(pad, neg)


def aligned_attention(
    q: torch.Tensor,  # [B, H, r, d_h]
    k: torch.Tensor,  # [B, H, r, d_h]
    v: torch.Tensor,  # [B, H, r, d_h]
    mask: torch.Tensor,  # [B, H, r, r] float (or broadcastable)
    dropout_p: float = 0.0,
) -> torch.Tensor:  # [B, H, r, d_h]
    """`dense_bias_attention` with the head dim zero-padded to a multiple of 8 where CPU's fused
    kernel runs (no attention dropout): the same scores and output (zero channels add exact
    zeros, the scale stays 1 / sqrt(d_h)), but the kernel at d_h 15 -> 16 measured 53 -> 32 ms
    for forward + backward (B = 8, H = 4, r = 512, 1 thread; 23 -> 24: 62 -> 45 ms)."""
    dh = q.shape[-1]
    pad = (-dh) % 8 if (q.device.type == "cpu" and dropout_p == 0) else 0
    if not pad:
        return dense_bias_attention(q, k, v, mask, dropout_p)
    q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    return dense_bias_attention(q, k, v, mask, dropout_p, scale=dh**-0.5)[..., :dh]


class PairBiasAttention(nn.Module):
    """m -> Attention(LN(m)) with per-head logits biased by Linear(LN(z)), optional sigmoid gate.

    Parameter layout follows nn.MultiheadAttention (in_proj 3c x c, out_proj) so that, without
    bias and gate, it is exactly the attention of a pre-LN nn.TransformerEncoderLayer.
    `dropout` acts on the output (residual branch), `attention_dropout` on the attention
    probabilities (any value > 0 sends CPU training off the fused kernel).
    """

    def __init__(
        self, d_model: int, nhead: int, d_z: int, pair_bias: bool = True, gating: bool = True,
        dropout: float = 0.1, linear: bool = False, attention_dropout: float = 0.0,
    ) -> None:
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
        # linear pair mode: no LayerNorm on z, so the bias is linear in z (a per-channel scale
        # keeps some of its freedom); see bioformer.models.linear_pair
        self.norm_z = nn.LayerNorm(d_z) if (pair_bias and not linear) else None
        self.z_scale = nn.Parameter(torch.ones(d_z)) if (pair_bias and linear) else None
        self.bias_proj = nn.Linear(d_z, nhead, bias=False) if pair_bias else None
        self.attention_dropout_p = attention_dropout
        self.dropout_out = nn.Dropout(dropout)

    def normalise_z(self, z: torch.Tensor) -> torch.Tensor:
        """LN(z) (full pair mode) or z * scale (linear pair mode), over the last dim c_z."""
        return self.norm_z(z) if self.norm_z is not None else z * self.z_scale

    def bias_weight(self) -> torch.Tensor:
        """[H, c_z]: the linear map z -> pair bias of the linear pair mode (scale folded in)."""
        return self.bias_proj.weight * self.z_scale

    def pair_bias(self, z: torch.Tensor | CodedPair) -> torch.Tensor:
        """Linear(LN(z)) in head-major layout: [B, H, r, r] (or [1, H, 1, 1] for a constant z)."""
        if isinstance(z, CodedPair):
            per_code = self.bias_proj(self.normalise_z(z.table))  # [K, H]
            const = per_code[0].view(1, -1, 1, 1)
            if z.prior is None:
                return const
            B, r = z.prior.codes.shape[:2]
            return z.prior.add_(const.expand(B, -1, r, r).contiguous(), per_code - per_code[:1])
        zc = channels_first(z)  # [B, c_z, r, r]
        if self.norm_z is not None:  # no padding: a mask of all-real keys
            return norm_bias(zc, self.bias_proj.weight, self.norm_z, zc.new_zeros(zc.shape[0], zc.shape[-1], dtype=torch.bool))
        return torch.matmul(self.bias_weight(), zc.flatten(2)).unflatten(2, zc.shape[2:])  # [B, H, r, r]

    def forward(
        self,
        m: torch.Tensor,  # [B, r, c]
        z: torch.Tensor | CodedPair | None,  # [B, r, r, c_z]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        attend: torch.Tensor | None = None,  # [B, 1, r, r] True = may attend (isolated queries), or None
    ) -> torch.Tensor:  # [B, r, c]
        x, q, k, v = self.qkv(m)
        if self.bias_proj is not None and isinstance(z, CodedPair) and z.prior is not None:
            # the per-code bias relative to "no edge" (that constant cancels in the softmax),
            # scattered from the regulators' rows and columns straight into the mask
            per_code = self.bias_proj(self.normalise_z(z.table)).to(q.dtype)  # [K, H]
            mask = z.prior.mask(per_code - per_code[:1], 0, m.shape[1], padding_mask)  # [B, H, r, r]
        elif self.norm_z is not None and isinstance(z, torch.Tensor):  # full mode: LN, projection, pads in one node
            mask = norm_bias(channels_first(z), self.bias_proj.weight, self.norm_z, padding_mask)  # [B, H, r, r] fp32
            if mask.dtype != q.dtype:  # autocast: the pads' fp32 minimum would round to -inf
                mask = mask.to(q.dtype).clamp_min(torch.finfo(q.dtype).min)
        else:
            bias = self.pair_bias(z) if (self.bias_proj is not None and z is not None) else None
            mask = attention_mask(bias, padding_mask, q.dtype)  # [B, H, r, r]
        if attend is not None:  # inference only: no gradient path needs it
            mask = mask.masked_fill(~attend, torch.finfo(mask.dtype).min)
        o = aligned_attention(q, k, v, mask.expand(*q.shape[:3], k.shape[2]), self.attention_dropout())  # [B, H, r, d_h]
        return self.output(x, o)

    def qkv(self, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """LN(m) [B, r, c] and the queries, keys, values [B, H, r, c/H]."""
        B, r, c = m.shape
        x = self.norm_m(m)
        q, k, v = self.in_proj(x).view(B, r, 3, self.nhead, c // self.nhead).permute(2, 0, 3, 1, 4)
        return x, q, k, v

    def attention_dropout(self) -> float:
        """The dropout probability on attention weights in this mode (0 in eval)."""
        return self.attention_dropout_p if self.training else 0.0

    def output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Heads [B, H, r, c/H] -> gate (from LN(m) x [B, r, c]) -> out_proj -> dropout: [B, r, c]."""
        B, H, r, dh = o.shape
        o = o.transpose(1, 2).reshape(B, r, H * dh)  # [B, r, c]
        if self.gate is not None:
            o = torch.sigmoid(self.gate(x)) * o
        return self.dropout_out(self.out_proj(o))


class OuterProductMean(nn.Module):
    """z update from m: update[b, i, j] = W . flatten(a_i (x) b_j) + bias, a/b = Linear(LN(m)).

    With W viewed as [c_z, c_opm, c_opm], contract b with W first (t = [B, c_z, c_opm, r]), then
    a with t: memory scales with the output z, not c_opm^2 times it, and the second contraction
    is one batched GEMM per output channel whose output is z stored channel-first, [B, c_z, r, r]
    (returned as its permuted view [B, r, r, c_z]): the pair bias of the next block reads it
    head-major without a permute copy (`bioformer.models.norm_bias`). The output bias rides in
    that GEMM as an extra "ones" channel of a, and a given z is its accumulator (baddbmm), so
    `forward(m, mask, z)` returns z + update in a single pass over z. Padded positions get
    a = b = 0, so they never contribute beyond the bias. `chunk_size` computes rows of z in
    chunks (inference / very long r).
    """

    def __init__(self, d_model: int, d_opm: int, d_z: int, chunk_size: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear_a = nn.Linear(d_model, d_opm)
        self.linear_b = nn.Linear(d_model, d_opm)
        self.linear_out = nn.Linear(d_opm * d_opm, d_z, bias=bias)
        self.d_opm, self.d_z = d_opm, d_z
        self.chunk_size = chunk_size

    def factors(self, m: torch.Tensor, padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a, b = Linear(LN(m)) [B, r, c_opm] each, zero at padded positions."""
        x = self.norm(m)
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, r, 1]
        return self.linear_a(x) * keep, self.linear_b(x) * keep

    def weight(self) -> torch.Tensor:
        """The output weight viewed as [c_z, c_opm(a), c_opm(b)]."""
        return self.linear_out.weight.view(self.d_z, self.d_opm, self.d_opm)

    def forward(
        self,
        m: torch.Tensor,  # [B, r, c]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        z: torch.Tensor | CodedPair | None = None,  # [B, r, r, c_z] to add the update to
    ) -> torch.Tensor:  # [B, r, r, c_z]: update (+ z), stored channel-first
        B, r, _ = m.shape
        C, d = self.d_z, self.d_opm + 1
        a, b = self.factors(m, padding_mask)  # [B, r, c_opm] each
        W = self.weight().to(b.dtype)  # [c_z, c_opm(a), c_opm(b)]
        t = torch.einsum("bje,zde->bzdj", b, W)  # [B, c_z, c_opm(a), r_j]
        # the bias as one more input channel: a_ext = [a, 1], t_ext = [t; bias tiled over j]
        out_bias = self.linear_out.bias if self.linear_out.bias is not None else b.new_zeros(C)
        if isinstance(z, CodedPair):  # the "no edge" row of z is a constant: fold it into the bias
            out_bias = out_bias + z.table[0]
        t = torch.cat([t, out_bias.to(t.dtype)[None, :, None, None].expand(B, C, 1, r)], dim=2)  # [B, c_z, d, r_j]
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)  # [B, r, d]
        zc = z.permute(0, 3, 1, 2) if isinstance(z, torch.Tensor) else None  # [B, c_z, r, r] (a view)
        chunk = self.chunk_size or r
        outs = []
        for start in range(0, r, chunk):
            a_c = a[:, None, start:start + chunk]  # [B, 1, ri, d]
            ri = a_c.shape[2]
            if zc is not None and zc.dtype == t.dtype:  # z + update, one pass
                acc = zc[:, :, start:start + chunk].reshape(B * C, ri, r)
                u = torch.baddbmm(acc, a_c.expand(B, C, ri, d).reshape(B * C, ri, d), t.reshape(B * C, d, r))
                u = u.view(B, C, ri, r)
            else:
                u = torch.matmul(a_c, t)  # [B, c_z, ri, r_j], not a view: in-place adds below stay cheap
                if zc is not None:  # autocast: keep z in its own (fp32) precision
                    u = zc[:, :, start:start + chunk] + u
                elif isinstance(z, CodedPair) and z.prior is not None:
                    # + the codes' rows relative to "no edge", scattered in place (matmul does not
                    # need its output for backward); fp32 like the table
                    u = z.prior.add_(u.to(z.table.dtype), z.table - z.table[:1], start, heads_first=True)
            outs.append(u)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).permute(0, 2, 3, 1)  # [B, r, r, c_z]
