"""BioFormer: an Evoformer-style stack over gene tokens m [B, r, c] and gene pairs z [B, r, r, c_z]."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bioformer.config import ModelConfig
from bioformer.data.prior import N_PAIR_CODES, PRIOR_DIRECTIONS, pair_codes
from bioformer.errors import BioformerError
from bioformer.models.base import MaskedValueModel, PairPath
from bioformer.models.isolation import attend_mask
from bioformer.models.layers import GeneEncoder, Transition, ValueEncoder
from bioformer.models.linear_pair import OPMTerm, linear_pair_attention
from bioformer.models.pair import CodedPair, OuterProductMean, PairBiasAttention, PriorCodes
from bioformer.models.pair_modes import FullPair, pair_engine
from bioformer.models.registry import register_model


class BioFormerBlock(nn.Module):
    """m += PairBiasAttention(m, z); m += Transition(m); z += OPM(m) (when `update_z`)."""

    def __init__(
        self, d_model: int, nhead: int, d_z: int, d_opm: int, ff_factor: int = 4,
        dropout: float = 0.1, pair_bias: bool = True, gating: bool = True,
        update_z: bool = True, opm_chunk_size: int | None = None, linear: bool = False,
        attention_chunk_size: int | None = None, attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attention = PairBiasAttention(d_model, nhead, d_z, pair_bias=pair_bias, gating=gating, dropout=dropout,
                                           linear=linear, attention_dropout=attention_dropout)
        self.attention_chunk_size = attention_chunk_size
        self.transition = Transition(d_model, ff_factor, dropout)
        # linear mode: the OPM's output bias shifts z by a constant, which cancels in the softmax
        # once no LayerNorm follows; it would be a parameter without a gradient, so there is none
        self.outer_product_mean = OuterProductMean(d_model, d_opm, d_z, opm_chunk_size, bias=not linear) if update_z else None

    def forward(self, m: torch.Tensor, z: torch.Tensor | CodedPair | None, padding_mask: torch.Tensor,
                attend: torch.Tensor | None = None):
        """m [B, r, c], z [B, r, r, c_z] (or the initial z as a CodedPair, or None), mask [B, r],
        attend [B, 1, r, r] (True = may attend; isolated queries, models/isolation.py) or None."""
        m = m + self.attention(m, z, padding_mask, attend)  # [B, r, c]
        m = m + self.transition(m)
        if self.outer_product_mean is not None and z is not None:
            z = self.outer_product_mean(m, padding_mask, z)  # z + OPM(m): [B, r, r, c_z]
        return m, z

    def forward_linear(
        self, m: torch.Tensor, terms: list[OPMTerm], prior: PriorCodes | None, padding_mask: torch.Tensor,
        attend: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, OPMTerm | None]:
        """The same block in linear pair mode: z is given by the earlier blocks' OPM terms and the
        prior codes; returns m [B, r, c] and this block's OPM term (None when it has no OPM)."""
        if self.attention.bias_proj is None:
            m = m + self.attention(m, None, padding_mask, attend)
        else:
            m = m + linear_pair_attention(self.attention, m, terms, prior, padding_mask, self.attention_chunk_size, attend)
        m = m + self.transition(m)
        term = OPMTerm.of(self.outer_product_mean, m, padding_mask) if self.outer_product_mean is not None else None
        return m, term


def _prior_embedding(d_z: int) -> nn.Embedding:
    """The [N_PAIR_CODES, c_z] table of the initial z, drawn from its own generator: building it
    (or not) never shifts the global RNG, so every other module's initial weights are the same
    whether or not a prior is used."""
    emb = nn.Embedding(N_PAIR_CODES, d_z, _weight=torch.empty(N_PAIR_CODES, d_z))
    g = torch.Generator().manual_seed(torch.initial_seed())
    with torch.no_grad():
        emb.weight.normal_(generator=g)  # N(0, 1), nn.Embedding's own default
    return emb


@register_model("bioformer")
class BioFormer(MaskedValueModel):
    """Gene/value encoders -> N BioFormer blocks -> LN -> expression decoder.

    z starts from the prior (an embedding of each pair's code, see `bioformer.data.prior.pair_codes`:
    with `prior_direction="both"` the code of i -> j and of j -> i, each none / activates /
    represses / unsigned) or from zeros. z is only built when something reads it (pair bias on),
    and the last block skips its OPM because no later block would read that update. The initial
    z is never materialised: it holds at most 16 distinct rows, and differs from "no edge" only
    on the rows and columns of the cell's regulators, so the first block reads it as a
    `CodedPair` (its pair bias is a 16-entry table scattered over those rows and columns; the
    first OPM adds it the same way while writing z).

    Init pairing: the prior embedding is built whenever z is (also for zero z, where it is frozen
    and unread) and drawn from its own generator (seeded by `torch.initial_seed()`), after the
    shared encoders and decoder, so a prior arm, a zero-z arm and an scGPT of the same d_model
    start from the same weights in every module they share.

    `pair_mode="linear"` drops the LayerNorm on z before each pair bias (a learnable per-channel
    scale instead); the bias is then linear in z and z is never formed at all: the OPM updates
    fold into attention as low-rank query/key channels and the prior into a sparse bias (see
    `bioformer.models.linear_pair`). `forward_materialised` computes the same model with z
    materialised (the reference the linear path is tested against).
    """

    @classmethod
    def reads_prior(cls, cfg: ModelConfig) -> bool:
        pair_engine(cfg.bioformer.pair_mode)  # asked before any data is loaded: a typo fails fast
        return cfg.bioformer.pair_bias  # without pair bias nothing reads z

    @classmethod
    def pair_path(cls, cfg: ModelConfig) -> PairPath:
        p = cfg.bioformer
        engine = pair_engine(p.pair_mode)
        opm_blocks = (cfg.nlayers - 1) if (p.pair_bias and p.opm) else 0  # the last block skips its OPM
        return PairPath(reads_z=p.pair_bias, opm_blocks=opm_blocks, gating=p.gating,
                        checkpoint=p.checkpoint_blocks, d_z=p.d_z, d_opm=p.d_opm,
                        linear=p.pair_bias and engine.linear, attention_chunk_size=p.attention_chunk_size)

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        p = cfg.bioformer
        pair = f", d_z {p.d_z}, d_opm {p.d_opm}, opm {p.opm}, pair_bias {p.pair_bias}, pair_mode {p.pair_mode}"
        return super().describe(cfg) + (pair if cls.pair_path(cfg).reads_z else "")

    @classmethod
    def fine_size_field(cls, cfg: ModelConfig) -> str | None:
        return "d_opm" if cls.pair_path(cfg).opm_blocks else None  # c_opm^2 * c_z output layer

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = True) -> None:
        super().__init__()
        p = cfg.bioformer  # this family's own section of the config
        self.engine = pair_engine(p.pair_mode)  # chosen once: nothing below branches on the mode
        if p.prior_direction not in PRIOR_DIRECTIONS:
            raise BioformerError(f"unknown prior_direction {p.prior_direction!r}; use one of {', '.join(PRIOR_DIRECTIONS)}")
        self.prior_direction = p.prior_direction
        self.pair_mode = self.engine.name
        d_model, d_z = cfg.d_model, p.d_z
        self.uses_z = p.pair_bias
        self.needs_prior = bool(use_prior and p.pair_bias)
        self.d_z = d_z
        self.checkpoint_blocks = p.checkpoint_blocks
        self.gene_encoder = GeneEncoder(vocab_size, d_model, pad_id)
        self.value_encoder = ValueEncoder(d_model, cfg.dropout, scale=cfg.value_scale)
        self.build_heads(cfg, d_model)  # before the stack, as in ScGPT
        self.prior_encoder = _prior_embedding(d_z) if self.uses_z else None
        if self.prior_encoder is not None and not self.needs_prior:
            self.prior_encoder.weight.requires_grad_(False)  # zero z: built for init pairing, never read (DDP skips it)
        self.register_buffer("zero_z", torch.zeros(1, d_z), persistent=False)  # the table of zero z
        self.blocks = nn.ModuleList(
            BioFormerBlock(
                d_model, cfg.nhead, d_z, p.d_opm, cfg.ff_factor, cfg.dropout, pair_bias=p.pair_bias,
                gating=p.gating, update_z=(p.opm and p.pair_bias and i < cfg.nlayers - 1),
                opm_chunk_size=p.opm_chunk_size, linear=self.engine.linear,
                attention_chunk_size=p.attention_chunk_size, attention_dropout=cfg.attention_dropout,
            )
            for i in range(cfg.nlayers)
        )
        for i, block in enumerate(self.blocks):  # built, then dropped: a prior and a zero-z arm draw the same init
            if p.pair_bias and not self.engine.block_has_bias(self.needs_prior, p.opm, i):
                block.attention.z_scale, block.attention.bias_proj = None, None  # a bias constant over pairs
        self.norm = nn.LayerNorm(d_model)

    def require_prior(self, prior: torch.Tensor | None) -> torch.Tensor:
        """`prior` [B, r, r], which a BioFormer built with a prior cannot do without."""
        if prior is None:
            raise ValueError("this BioFormer was built with a prior: pass prior=PriorMatrix.prior_for(gene_ids)")
        return prior

    def initial_z(self, gene_ids: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor | None:
        """[B, r, r, c_z] from the prior codes [B, r, r], or zeros; None when nothing reads z."""
        if not self.uses_z:
            return None
        if self.needs_prior:
            return self.prior_encoder(pair_codes(self.require_prior(prior), self.prior_direction).long())
        B, r = gene_ids.shape
        return torch.zeros(B, r, r, self.d_z, device=gene_ids.device, dtype=self.norm.weight.dtype)

    def initial_z_coded(self, prior: torch.Tensor | None) -> CodedPair | None:
        """The initial z as a lookup (see `initial_z` for the materialised tensor)."""
        if not self.uses_z:
            return None
        if not self.needs_prior:
            return CodedPair(None, self.zero_z)
        return CodedPair(self.prior_codes(self.require_prior(prior)), self.prior_encoder.weight)

    def prior_codes(self, prior: torch.Tensor) -> PriorCodes:
        """The batch's edge codes [B, r, r] as the pair codes z embeds, by regulator rows/columns."""
        return PriorCodes.of_edges(prior, self.prior_direction, self.prior_encoder.weight)

    def forward(
        self,
        gene_ids: torch.Tensor,  # [B, r]
        values: torch.Tensor,  # [B, r]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        prior: torch.Tensor | None = None,  # [B, r, r] edge codes
        isolated: torch.Tensor | None = None,  # [B, r] True = isolated query (inference, models/isolation.py)
    ) -> dict[str, torch.Tensor]:
        return self.heads(self.encode(gene_ids, values, padding_mask, prior, isolated), gene_ids, padding_mask)

    def encode(
        self,
        gene_ids: torch.Tensor,  # [B, r]
        values: torch.Tensor,  # [B, r]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        prior: torch.Tensor | None = None,  # [B, r, r] edge codes
        isolated: torch.Tensor | None = None,  # [B, r] True = isolated query
    ) -> torch.Tensor:  # [B, r, c]
        """Hidden states after the final LayerNorm, i.e. what the decoder reads (cell embeddings)."""
        m, _ = self.engine.trunk(self, gene_ids, values, padding_mask, prior, len(self.blocks), attend_mask(isolated))
        return self.norm(m)

    def pair_scores(
        self,
        gene_ids: torch.Tensor,  # [B, r]
        values: torch.Tensor,  # [B, r]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        prior: torch.Tensor | None = None,  # [B, r, r] edge codes
    ) -> torch.Tensor:  # [B, r, r]
        """One scalar per ordered pair from the final z: `pair_bias_logits` averaged over heads.
        [b, i, j] is what query gene i adds to its logit for key gene j, and z[i, j] starts from the
        prior's code for the pair (i, j), so the layout is the prior's (row = source). It is the part
        of attention that comes from z alone (not from the token states), in logit units: what the
        model uses z for. Works in both pair modes; pads are not masked here."""
        if not self.uses_z:
            raise BioformerError("this BioFormer has no pair representation z (trained with --no-pair-bias), so it has no z readout")
        return self.pair_bias_logits(gene_ids, values, padding_mask, prior).float().mean(dim=1)  # [B, r, r]

    def forward_materialised(
        self, gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor, prior: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The forward of either pair mode with z materialised (the linear mode's reference)."""
        m, _ = FullPair().trunk(self, gene_ids, values, padding_mask, prior, len(self.blocks))
        return self.heads(self.norm(m), gene_ids, padding_mask)

    def pair_bias_logits(
        self,
        gene_ids: torch.Tensor,  # [B, r]
        values: torch.Tensor,  # [B, r]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        prior: torch.Tensor | None = None,  # [B, r, r] edge codes
        chunk_size: int | None = None,
        block: int = -1,
    ) -> torch.Tensor:  # [B, H, r, r]
        """Block `block`'s pair bias (default the last; its logits' additive term, per head) for
        every gene pair: `Linear(LN(z_k))`, or in linear mode `w . z_k` built from the OPM factors in
        chunks of `chunk_size` query rows (z_k itself is never formed). Pairs with a padded gene
        are meaningless."""
        if not self.uses_z:
            raise BioformerError("this BioFormer has no pair bias (pair_bias off): there are no pair-bias logits to read")
        B, r = gene_ids.shape
        k = block % len(self.blocks)
        attn = self.blocks[k].attention
        if attn.bias_proj is None:  # linear mode, zero z and no OPM: z_k = 0, so is its bias
            return gene_ids.new_zeros(B, attn.nhead, r, r, dtype=self.norm.weight.dtype)
        _, state = self.engine.trunk(self, gene_ids, values, padding_mask, prior, k)
        return self.engine.pair_bias(attn, state, r, chunk_size).expand(B, -1, r, r)

    def run_block(self, fn, *args):
        """fn(*args) (a block or its linear-mode forward), recomputed in backward with
        activation checkpointing when switched on."""
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
