"""Torch modules only: the scGPT-style baseline and BioFormer, behind one interface.

Every model takes (gene_ids, values, padding_mask, prior=None) and returns a dict with
"pred" [B, L] (and "zero_logit" [B, L] with the zero head). Models register by name
(`registry.MODELS`) and are built from a ModelConfig; `model.needs_prior` tells the training
loop whether to pass the per-cell prior codes, `model.loss` is the training objective.
"""

from bioformer.models.base import MaskedValueModel, PairPath
from bioformer.models.bioformer import BioFormer
from bioformer.models.registry import (
    MODELS,
    build_model,
    count_config_parameters,
    count_parameters,
    model_class,
    register_model,
    unwrap,
    uses_prior,
)
from bioformer.models.scgpt import ScGPT

__all__ = [
    "MODELS", "BioFormer", "MaskedValueModel", "PairPath", "ScGPT", "build_model", "count_config_parameters",
    "count_parameters", "model_class", "register_model", "unwrap", "uses_prior",
]
