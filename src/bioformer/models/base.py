"""What every model provides to the rest of the package (see `bioformer.models.registry`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bioformer.config import ModelConfig
from bioformer.errors import BioformerError
from bioformer.models.layers import ExprDecoder, MVCDecoder, cell_embedding


@dataclass(frozen=True)
class PairPath:
    """What a configured model has of a gene-pair representation (for estimates and sizing).

    reads_z: attention logits get a bias from z; opm_blocks: blocks that write z (outer product
    mean); gating/checkpoint: the attention gate and block recomputation switches."""

    reads_z: bool = False
    opm_blocks: int = 0
    gating: bool = False
    checkpoint: bool = False
    d_z: int = 0
    d_opm: int = 0
    linear: bool = False  # linear pair mode: z is never materialised (models/linear_pair.py)
    attention_chunk_size: int | None = None  # linear mode: query rows per attention chunk

ECS_THRESHOLD = 0.6  # scGPT's default: cosines above it are pulled to 1, those below pushed down


def elastic_cell_similarity(cell: torch.Tensor) -> torch.Tensor:
    """scGPT's ECS loss of a batch of cell embeddings [B, c]: the mean over ordered pairs of
    distinct cells of 1 - (cos - ECS_THRESHOLD)^2 (0 for a batch of one cell)."""
    n = cell.shape[0]
    if n < 2:
        return cell.sum() * 0.0
    unit = F.normalize(cell, dim=-1)
    cos = unit @ unit.T  # [B, B]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=cell.device)
    return (1.0 - (cos[off_diag] - ECS_THRESHOLD) ** 2).mean()


class MaskedValueModel(nn.Module):
    """Base of every model: forward(gene_ids, values, padding_mask, prior=None) -> {"pred": [B, L],
    optionally "value" and "zero_logit" [B, L] (zero head), "mvc_pred" [B, L] (cell-embedding
    objective, in training), "cell" [B, c] (the cell embedding, in training with ECS)}; built from a ModelConfig; owns its heads (`build_heads`, `heads`)
    and its loss.

    `needs_prior` (instance): whether forward expects per-cell prior codes.
    """

    name: str = ""
    needs_prior: bool = False
    PAIR_PARTS: tuple[str, ...] = ("prior_encoder", "outer_product_mean", "norm_z", "z_scale", "bias_proj")

    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = True) -> MaskedValueModel:
        return cls(cfg, vocab_size, pad_id=pad_id, use_prior=use_prior)

    @classmethod
    def reads_prior(cls, cfg: ModelConfig) -> bool:
        """Whether this configuration of the model can consume a TF prior."""
        return False

    @classmethod
    def pair_path(cls, cfg: ModelConfig) -> PairPath:
        return PairPath()

    @classmethod
    def describe(cls, cfg: ModelConfig) -> str:
        """The architecture in a few words, for `bioformer estimate`."""
        return f"d_model {cfg.d_model}, nhead {cfg.nhead}, nlayers {cfg.nlayers}"

    @classmethod
    def fine_size_field(cls, cfg: ModelConfig) -> str | None:
        """A ModelConfig field that moves the parameter count in small steps (for equal-parameter
        sizing after d_model), or None."""
        return None

    @classmethod
    def parameter_role(cls, name: str) -> str:
        """Role of one parameter from its qualified name, for sizing tables: embeddings (gene
        embedding + value encoder), attention (projections, their LayerNorm, a gate), transition
        (feed-forward + LayerNorm), pair_path (everything that exists only because of z), decoder
        (the expression decoder, the MVC head and a final LayerNorm), else other."""
        parts = name.split(".")
        if parts[0] in ("gene_encoder", "value_encoder"):
            return "embeddings"
        if parts[0] in ("decoder", "norm", "mvc"):
            return "decoder"
        if any(p in cls.PAIR_PARTS for p in parts):
            return "pair_path"
        if "attention" in parts or "self_attn" in parts or "norm1" in parts:
            return "attention"
        if "transition" in parts or (len(parts) > 1 and parts[-2] in ("linear1", "linear2", "norm2")):
            return "transition"
        return "other"

    def build_heads(self, cfg: ModelConfig, d_model: int) -> None:
        """The output heads every family shares: the expression decoder (with the zero head when
        `explicit_zero_prob`) and, when `mvc_weight` > 0, the cell-embedding (MVC) head."""
        self.decoder = ExprDecoder(d_model, cfg.explicit_zero_prob)
        self.mvc_weight = float(cfg.mvc_weight)
        self.mvc = MVCDecoder(d_model) if self.mvc_weight > 0 else None
        self.ecs_weight = float(getattr(cfg, "ecs_weight", 0.0))

    def heads(self, h: torch.Tensor, gene_ids: torch.Tensor, padding_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs from the hidden states h [B, L, c] (what `encode` returns); the MVC prediction
        only in training (it is a training signal for the cell embedding, not an output)."""
        out = self.decoder(h)
        if self.training and (self.mvc is not None or self.ecs_weight > 0):
            cell = cell_embedding(h, gene_ids, padding_mask)  # [B, c]
            if self.mvc is not None:
                out["mvc_pred"] = self.mvc(cell, self.gene_encoder(gene_ids))  # [B, L]
            if self.ecs_weight > 0:
                out["cell"] = cell
        return out

    def start_at(self, mean_value: float) -> None:
        """Start the expression decoder's output at `mean_value` (its last bias; e.g. the training
        mean bin), so the first steps are not spent moving the output from 0 to ~25 bins; the
        MVC head's bias too."""
        with torch.no_grad():
            self.decoder.value[-1].bias.fill_(float(mean_value))
            if getattr(self, "mvc", None) is not None:
                self.mvc.bias.fill_(float(mean_value))

    def encode(self, gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states the decoder reads, [B, L, c] (forward = decoder(encode(...))): embeddings."""
        raise BioformerError(f"model {self.name!r} does not expose its hidden states (no encode)")

    def pair_scores(self, gene_ids: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor,
                    prior: torch.Tensor | None = None) -> torch.Tensor:
        """One scalar per ordered gene pair, [B, L, L] ([b, i, j]: query i, key j)."""
        raise BioformerError(f"model {self.name!r} has no gene-pair readout")

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked MSE of "pred", plus the Bernoulli NLL of "value is zero" when the model has a zero
        head, plus `mvc_weight` x the masked MSE of the cell-embedding prediction when it has one,
        plus `ecs_weight` x the elastic cell similarity of the batch's cell embeddings."""
        target = target[mask]
        loss = F.mse_loss(out["pred"].float()[mask], target)
        if "zero_logit" in out:
            loss = loss + F.binary_cross_entropy_with_logits(out["zero_logit"].float()[mask], (target == 0).float())
        if "mvc_pred" in out:
            loss = loss + self.mvc_weight * F.mse_loss(out["mvc_pred"].float()[mask], target)
        if "cell" in out:
            loss = loss + self.ecs_weight * elastic_cell_similarity(out["cell"].float())
        return loss
