"""scGPT-style baseline: gene + value embeddings summed, nn.TransformerEncoder, MLP decoder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from bioformer.config import ModelConfig
from bioformer.models.base import MaskedValueModel
from bioformer.models.isolation import attend_mask
from bioformer.models.layers import GeneEncoder, ValueEncoder
from bioformer.models.registry import register_model


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """Inference without nn.TransformerEncoderLayer's "fast path" (`_transformer_encoder_layer_fwd`):
    on CPU it is 2x slower than the regular layer, whose attention takes SDPA's fused kernel
    (measured at B = 64, r = 128, d_model 64), and it is the same computation as in training."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@register_model("scgpt")
class ScGPT(MaskedValueModel):
    """A faithful small scGPT: post-LN `nn.TransformerEncoderLayer` (as scGPT), feed-forward
    width `ff_factor * d_model` (4 by default as in the notes; scGPT's paper used 1).
    Reads d_model, nhead, nlayers, ff_factor, dropout, attention_dropout, explicit_zero_prob and
    mvc_weight of the config: `dropout` on the residual branches and feed-forward, `attention_dropout` on the
    attention probabilities (0 keeps SDPA on its fused kernel in training)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = False) -> None:
        super().__init__()
        self.gene_encoder = GeneEncoder(vocab_size, cfg.d_model, pad_id)
        self.value_encoder = ValueEncoder(cfg.d_model, cfg.dropout, scale=cfg.value_scale)
        self.build_heads(cfg, cfg.d_model)  # before the stack: init-matched with BioFormer
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.nhead, dim_feedforward=cfg.ff_factor * cfg.d_model, dropout=cfg.dropout, batch_first=True,
        )
        layer.self_attn.dropout = cfg.attention_dropout  # copied into every layer by the encoder
        # enable_nested_tensor would drop padded positions on CPU eval and change numerics
        self.encoder = nn.TransformerEncoder(layer, cfg.nlayers, enable_nested_tensor=False)

    def encode(
        self,
        gene_ids: torch.Tensor,  # [B, L]
        values: torch.Tensor,  # [B, L]
        padding_mask: torch.Tensor,  # [B, L] True = pad
        prior: torch.Tensor | None = None,
        isolated: torch.Tensor | None = None,  # [B, L] True = isolated query (models/isolation.py)
    ) -> torch.Tensor:  # [B, L, c]
        """Hidden states of the last encoder layer, i.e. what the decoder reads (cell embeddings)."""
        m = self.gene_encoder(gene_ids) + self.value_encoder(values)  # [B, L, c]
        attend = attend_mask(isolated)  # [B, 1, L, L] True = may attend
        mask = None
        if attend is not None:  # nn.MultiheadAttention's 3-D mask: [B * H, L, L], True = may not attend
            B, L = gene_ids.shape
            H = self.encoder.layers[0].self_attn.num_heads
            mask = (~attend).expand(B, H, L, L).reshape(B * H, L, L)
        with _no_mha_fastpath():
            return self.encoder(m, mask=mask, src_key_padding_mask=padding_mask)

    def pair_scores(
        self,
        gene_ids: torch.Tensor,  # [B, L]
        values: torch.Tensor,  # [B, L]
        padding_mask: torch.Tensor,  # [B, L] True = pad
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [B, L, L]
        """Attention probabilities averaged over heads and layers (the usual attention readout of
        scGPT-style models); [b, i, j] is how much query gene i attends to key gene j."""
        m = self.gene_encoder(gene_ids) + self.value_encoder(values)  # [B, L, c]
        total = torch.zeros(m.shape[0], m.shape[1], m.shape[1], device=m.device)
        layers = self.encoder.layers
        for layer in layers:
            x = layer.norm1(m) if layer.norm_first else m
            _, w = layer.self_attn(x, x, x, key_padding_mask=padding_mask, need_weights=True, average_attn_weights=True)
            total += w.float()  # [B, L, L], mean over heads
            m = layer(m, src_key_padding_mask=padding_mask)
        return total / len(layers)

    def forward(
        self,
        gene_ids: torch.Tensor,  # [B, L]
        values: torch.Tensor,  # [B, L]
        padding_mask: torch.Tensor,  # [B, L] True = pad
        prior: torch.Tensor | None = None,
        isolated: torch.Tensor | None = None,  # [B, L] True = isolated query (inference)
    ) -> dict[str, torch.Tensor]:
        return self.heads(self.encode(gene_ids, values, padding_mask, prior, isolated), gene_ids, padding_mask)
