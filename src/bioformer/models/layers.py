"""Parts both models share: gene and value encoders, the expression decoder, the transition."""

from __future__ import annotations

import torch
from torch import nn


class GeneEncoder(nn.Module):
    """Gene token embedding + LayerNorm. [B, L] -> [B, L, c]"""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(gene_ids))


class ValueEncoder(nn.Module):
    """scGPT's continuous value encoder: clamp, Linear(1->c), ReLU, Linear(c->c), LN, dropout.

    Mask (-1) and pad (-2) values go through the same path, as in scGPT; the clamp keeps
    unbinned inputs from blowing up. [B, L] -> [B, L, c]
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale  # bins are multiplied by it (not the mask / pad codes): see ModelConfig.value_scale
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.clamp(max=self.max_value)
        x = torch.where(x >= 0, x * self.scale, x).unsqueeze(-1)  # [B, L, 1]
        x = self.linear2(torch.relu(self.linear1(x)))
        return self.dropout(self.norm(x))


class ExprDecoder(nn.Module):
    """MLP c->c->c->1 with LeakyReLU for the value; optional zero-probability head (logit)."""

    def __init__(self, d_model: int, explicit_zero_prob: bool = False) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(d_model, d_model), nn.LeakyReLU(),
                nn.Linear(d_model, d_model), nn.LeakyReLU(),
                nn.Linear(d_model, 1),
            )

        self.value = mlp()
        self.zero_logit = mlp() if explicit_zero_prob else None

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pred": self.value(h).squeeze(-1)}  # [B, L]
        if self.zero_logit is not None:
            out["zero_logit"] = self.zero_logit(h).squeeze(-1)  # [B, L]; sigmoid = P(value == 0)
        return out


class Transition(nn.Module):
    """Pre-LN feed-forward: LN -> Linear(c->n*c) -> ReLU -> Linear(n*c->c) (dropout as in
    nn.TransformerEncoderLayer, so a BioFormer block without pair path matches one)."""

    def __init__(self, d_model: int, factor: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, factor * d_model)
        self.linear2 = nn.Linear(factor * d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout_out = nn.Dropout(dropout)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.dropout_out(self.linear2(self.dropout(torch.relu(self.linear1(self.norm(m))))))
