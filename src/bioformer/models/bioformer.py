"""BioFormer: an Evoformer-style stack over gene tokens m [B, r, c] and gene pairs z [B, r, r, c_z]."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bioformer.config import ModelConfig
from bioformer.data.prior import N_PRIOR_CODES
from bioformer.models.base import MaskedValueModel, PairPath
from bioformer.models.layers import ExprDecoder, GeneEncoder, Transition, ValueEncoder
from bioformer.models.pair import CodedPair, OuterProductMean, PairBiasAttention
from bioformer.models.registry import register_model


class BioFormerBlock(nn.Module):
    """m += PairBiasAttention(m, z); m += Transition(m); z += OPM(m) (when `update_z`)."""

    def __init__(
        self, d_model: int, nhead: int, d_z: int, d_opm: int, ff_factor: int = 4,
        dropout: float = 0.1, pair_bias: bool = True, gating: bool = True,
        update_z: bool = True, opm_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.attention = PairBiasAttention(d_model, nhead, d_z, pair_bias=pair_bias, gating=gating, dropout=dropout)
        self.transition = Transition(d_model, ff_factor, dropout)
        self.outer_product_mean = OuterProductMean(d_model, d_opm, d_z, opm_chunk_size) if update_z else None

    def forward(self, m: torch.Tensor, z: torch.Tensor | CodedPair | None, padding_mask: torch.Tensor):
        """m [B, r, c], z [B, r, r, c_z] (or the initial z as a CodedPair, or None), mask [B, r]."""
        m = m + self.attention(m, z, padding_mask)  # [B, r, c]
        m = m + self.transition(m)
        if self.outer_product_mean is not None and z is not None:
            z = self.outer_product_mean(m, padding_mask, z)  # z + OPM(m): [B, r, r, c_z]
        return m, z


@register_model("bioformer")
class BioFormer(MaskedValueModel):
    """Gene/value encoders -> N BioFormer blocks -> LN -> expression decoder.

    z starts from the prior (an embedding of each pair's edge code: none / activates / represses
    / unsigned) or from zeros. z is only built when something reads it (pair bias on), and the
    last block skips its OPM because no later block would read that update. The initial z is
    never materialised: it holds at most 4 distinct rows, so the first block reads it as a
    `CodedPair` (its pair bias is a 4-entry lookup; the first OPM adds it while writing z).
    """

    @classmethod
    def reads_prior(cls, cfg: ModelConfig) -> bool:
        return cfg.pair_bias  # without pair bias nothing reads z

    @classmethod
    def pair_path(cls, cfg: ModelConfig) -> PairPath:
        opm_blocks = (cfg.nlayers - 1) if (cfg.pair_bias and cfg.opm) else 0  # the last block skips its OPM
        return PairPath(reads_z=cfg.pair_bias, opm_blocks=opm_blocks, gating=cfg.gating,
                        checkpoint=cfg.checkpoint_blocks, d_z=cfg.d_z, d_opm=cfg.d_opm)

    @classmethod
    def fine_size_field(cls, cfg: ModelConfig) -> str | None:
        return "d_opm" if cls.pair_path(cfg).opm_blocks else None  # c_opm^2 * c_z output layer

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = True) -> None:
        super().__init__()
        d_model, d_z = cfg.d_model, cfg.d_z
        self.uses_z = cfg.pair_bias
        self.needs_prior = bool(use_prior and cfg.pair_bias)
        self.d_z = d_z
        self.checkpoint_blocks = cfg.checkpoint_blocks
        self.gene_encoder = GeneEncoder(vocab_size, d_model, pad_id)
        self.value_encoder = ValueEncoder(d_model, cfg.dropout)
        self.prior_encoder = nn.Embedding(N_PRIOR_CODES, d_z) if self.needs_prior else None
        self.register_buffer("zero_z", torch.zeros(1, d_z), persistent=False)  # the table of zero z
        self.blocks = nn.ModuleList(
            BioFormerBlock(
                d_model, cfg.nhead, d_z, cfg.d_opm, cfg.ff_factor, cfg.dropout, pair_bias=cfg.pair_bias,
                gating=cfg.gating, update_z=(cfg.opm and cfg.pair_bias and i < cfg.nlayers - 1),
                opm_chunk_size=cfg.opm_chunk_size,
            )
            for i in range(cfg.nlayers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.decoder = ExprDecoder(d_model, cfg.explicit_zero_prob)

    def initial_z(self, gene_ids: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor | None:
        """[B, r, r, c_z] from the prior codes [B, r, r], or zeros; None when nothing reads z."""
        if not self.uses_z:
            return None
        if self.prior_encoder is not None:
            if prior is None:
                raise ValueError("this BioFormer was built with a prior: pass prior=PriorMatrix.prior_for(gene_ids)")
            return self.prior_encoder(prior.long())
        B, r = gene_ids.shape
        return torch.zeros(B, r, r, self.d_z, device=gene_ids.device, dtype=self.norm.weight.dtype)

    def initial_z_coded(self, prior: torch.Tensor | None) -> CodedPair | None:
        """The initial z as a lookup (see `initial_z` for the materialised tensor)."""
        if not self.uses_z:
            return None
        if self.prior_encoder is None:
            return CodedPair(None, self.zero_z)
        if prior is None:
            raise ValueError("this BioFormer was built with a prior: pass prior=PriorMatrix.prior_for(gene_ids)")
        codes = torch.arange(N_PRIOR_CODES, device=prior.device, dtype=prior.dtype)
        onehot = (prior.unsqueeze(-1) == codes).to(self.zero_z.dtype)  # [B, r, r, 4] (no int64 detour)
        return CodedPair(onehot, self.prior_encoder.weight)

    def forward(
        self,
        gene_ids: torch.Tensor,  # [B, r]
        values: torch.Tensor,  # [B, r]
        padding_mask: torch.Tensor,  # [B, r] True = pad
        prior: torch.Tensor | None = None,  # [B, r, r] edge codes
    ) -> dict[str, torch.Tensor]:
        m = self.gene_encoder(gene_ids) + self.value_encoder(values)  # [B, r, c]
        z = self.initial_z_coded(prior)  # implicit [B, r, r, c_z], or None
        for block in self.blocks:
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                m, z = checkpoint(block, m, z, padding_mask, use_reentrant=False)
            else:
                m, z = block(m, z, padding_mask)
        return self.decoder(self.norm(m))
