"""Torch modules only: the scGPT-style baseline and BioFormer, behind one interface.

Every model takes (gene_ids, values, padding_mask, prior=None) and returns a dict with
"pred" [B, L] (and "zero_logit" [B, L] with the zero head). `model.needs_prior` tells the
training loop whether to pass the per-cell prior codes.
"""

from bioformer.models.bioformer import BioFormer
from bioformer.models.scgpt import ScGPT


def build_model(cfg, vocab_size: int, pad_id: int = 0, use_prior: bool = True):
    """Build the model named by `cfg.model` ("bioformer" or "scgpt") from a ModelConfig.

    `use_prior=False` makes BioFormer start z at zero (the prior option is "none").
    """
    from bioformer.errors import BioformerError

    if cfg.model == "scgpt":
        return ScGPT(
            vocab_size, d_model=cfg.d_model, nhead=cfg.nhead, nlayers=cfg.nlayers,
            ff_factor=cfg.ff_factor, dropout=cfg.dropout, pad_id=pad_id,
            explicit_zero_prob=cfg.explicit_zero_prob,
        )
    if cfg.model == "bioformer":
        return BioFormer(
            vocab_size, d_model=cfg.d_model, nhead=cfg.nhead, nlayers=cfg.nlayers,
            ff_factor=cfg.ff_factor, dropout=cfg.dropout, pad_id=pad_id,
            explicit_zero_prob=cfg.explicit_zero_prob, pair_bias=cfg.pair_bias, opm=cfg.opm,
            gating=cfg.gating, d_z=cfg.d_z, d_opm=cfg.d_opm, opm_chunk_size=cfg.opm_chunk_size,
            checkpoint_blocks=cfg.checkpoint_blocks, use_prior=use_prior,
        )
    raise BioformerError(f"unknown model {cfg.model!r}; use bioformer or scgpt")


__all__ = ["BioFormer", "ScGPT", "build_model"]
