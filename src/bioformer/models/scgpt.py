"""scGPT-style baseline: gene + value embeddings summed, nn.TransformerEncoder, MLP decoder."""

from __future__ import annotations

import torch
from torch import nn

from bioformer.models.layers import ExprDecoder, GeneEncoder, ValueEncoder


class ScGPT(nn.Module):
    """A faithful small scGPT: post-LN `nn.TransformerEncoderLayer` (as scGPT), feed-forward
    width `ff_factor * d_model` (4 by default as in the notes; scGPT's paper used 1)."""

    needs_prior = False

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        nhead: int = 4,
        nlayers: int = 2,
        ff_factor: int = 4,
        dropout: float = 0.1,
        pad_id: int = 0,
        explicit_zero_prob: bool = False,
    ) -> None:
        super().__init__()
        self.gene_encoder = GeneEncoder(vocab_size, d_model, pad_id)
        self.value_encoder = ValueEncoder(d_model, dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=ff_factor * d_model, dropout=dropout, batch_first=True,
        )
        # enable_nested_tensor would drop padded positions on CPU eval and change numerics
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = ExprDecoder(d_model, explicit_zero_prob)

    def forward(
        self,
        gene_ids: torch.Tensor,  # [B, L]
        values: torch.Tensor,  # [B, L]
        padding_mask: torch.Tensor,  # [B, L] True = pad
        prior: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        m = self.gene_encoder(gene_ids) + self.value_encoder(values)  # [B, L, c]
        m = self.encoder(m, src_key_padding_mask=padding_mask)
        return self.decoder(m)
