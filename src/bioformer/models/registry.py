"""The model registry: every model family by name, and the facts other modules ask of it.

A model class registers itself with `@register_model("name")` and provides (see
`bioformer.models.base.MaskedValueModel`): `from_config(cfg, vocab_size, pad_id, use_prior)`,
`reads_prior(cfg)` and `loss(out, target, mask)`. Training, evaluation, sizing, estimates and
studies ask the registry and the class; none of them compares a family name. Adding a model
touches `models/` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bioformer.config import ModelConfig, prior_enabled
from bioformer.errors import BioformerError

MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make `name` a value of `ModelConfig.model`."""

    def deco(cls: type) -> type:
        cls.name = name
        MODELS[name] = cls
        return cls

    return deco


def model_class(name: str) -> type:
    """The class registered as `name` (one clear error for an unknown name)."""
    if name not in MODELS:
        raise BioformerError(f"--model must be {' or '.join(MODELS)}, got {name!r} (unknown model)")
    return MODELS[name]


def uses_prior(cfg: ModelConfig, prior: str | None) -> bool:
    """The one answer to "does this run feed a prior to its model": a prior is set and the
    model, as configured, reads one."""
    return prior_enabled(prior) and model_class(cfg.model).reads_prior(cfg)


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = True) -> nn.Module:
    """The model named by `cfg.model`. `use_prior=False` starts a pair representation at zero;
    models that read no prior ignore it."""
    return model_class(cfg.model).from_config(cfg, vocab_size, pad_id=pad_id, use_prior=use_prior)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a module (the one counter: runs, sizing and estimates use it)."""
    return sum(p.numel() for p in model.parameters())


def count_config_parameters(cfg: ModelConfig, vocab_size: int, use_prior: bool = True) -> int:
    """Parameters of the model `cfg` builds, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return count_parameters(build_model(cfg, vocab_size, use_prior=use_prior))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar `.module`) wrapper."""
    return getattr(model, "module", model)
