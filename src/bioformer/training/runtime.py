"""Where and in what precision a run computes (device, autocast dtype), resolved once per run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bioformer.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a run computes; resolved once per run from its TrainConfig."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = fp32

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Runtime:
        device = resolve_device(cfg.device)
        return cls(device, autocast_dtype(cfg.amp, device))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it (fp16 otherwise) when amp="auto"; nothing on CPU unless asked."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
