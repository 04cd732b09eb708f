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
    """MLP c->c->c->1 with LeakyReLU for the value; optional zero-probability head (logit).

    Without the zero head "pred" is the value. With it, "value" is the value if the gene is
    detected, "zero_logit" the logit of P(value == 0) and "pred" the expected value
    P(detected) * value, so the masked MSE (on zeros and non-zeros) stays the score of "pred"."""

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
        value = self.value(h).squeeze(-1)  # [B, L]
        if self.zero_logit is None:
            return {"pred": value}
        zero_logit = self.zero_logit(h).squeeze(-1)  # [B, L]; sigmoid = P(value == 0)
        return {"pred": torch.sigmoid(-zero_logit) * value, "value": value, "zero_logit": zero_logit}


class MVCDecoder(nn.Module):
    """scGPT's MVC / GEPC head: a gene's value from the cell embedding and the gene's embedding
    only, pred_j = <W sigmoid(Q e_j), cell> + b (scGPT's "inner product" form). Nothing but the
    cell embedding carries the cell, so this loss trains it to summarise the cell."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_model)
        self.weight = nn.Linear(d_model, d_model, bias=False)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, cell: torch.Tensor, gene_emb: torch.Tensor) -> torch.Tensor:
        # cell [B, c], gene_emb [B, L, c] -> [B, L]
        query = self.weight(torch.sigmoid(self.gene2query(gene_emb)))  # [B, L, c]
        return torch.einsum("blc,bc->bl", query, cell) + self.bias


def cell_embedding(h: torch.Tensor, gene_ids: torch.Tensor, padding_mask: torch.Tensor, cls_id: int = 1) -> torch.Tensor:
    """One vector per cell [B, c] from hidden states h [B, L, c]: the <cls> position when the
    sequences start with <cls> (token id `cls_id`), else the mean over non-pad positions."""
    keep = (~padding_mask).unsqueeze(-1).to(h.dtype)  # [B, L, 1]
    mean = (h * keep).sum(1) / keep.sum(1).clamp(min=1)  # [B, c]
    starts_with_cls = (gene_ids[:, :1] == cls_id)  # [B, 1]
    return torch.where(starts_with_cls, h[:, 0], mean)


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
