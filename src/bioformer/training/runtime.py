"""Where and in what precision a run computes (device, autocast dtype), resolved once per run.

`--amp auto` is decided here (`autocast_dtype`), for training, evaluation and `estimate` alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bioformer.config import ModelConfig, TrainConfig

# --amp auto on the CPU: bf16 autocast from this model width up, fp32 below. Measured on a CPU
# with AVX512-BF16 (benchmarks/README.md, "bf16 autocast"; CPU time of a training step, fp32 /
# bf16, every family): 0.70-1.04 at d_model 64 (no gain: the matmuls are not what costs), 1.7-2.4
# at 256 and 512; and a paired-seed check at d_model 256 (5 seeds, BioFormer linear) found equal
# test MSE, bf16 - fp32 = -0.22 [-1.85, +1.41] (benchmarks/README.md, "bf16 quality"); for scGPT
# it did not (+2.47 [-1.57, +6.52], worse in 4 of 5 seeds) and the full pair mode was not checked.
# So bf16 only for the models whose quality was found equal (CPU_BF16_CHECKED, by `cpu_amp_kind`).
# tests/training/test_runtime.py binds both constants to the measurements. None: fp32 on every CPU model.
CPU_BF16_MIN_D_MODEL: int | None = 256
CPU_BF16_CHECKED: tuple[str, ...] = ("bioformer-linear",)


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a run computes; resolved once per run from its TrainConfig
    (and its model's width, which `--amp auto` reads on the CPU)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = fp32

    @classmethod
    def from_config(cls, cfg: TrainConfig, model: ModelConfig | None = None) -> Runtime:
        device = resolve_device(cfg.device)
        return cls(device, autocast_dtype(cfg.amp, device, model))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX tiles: the hardware on which bf16 measured faster (without them the CPU
    emulates bf16 matmuls, which is slower than fp32)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_amp_kind(model: ModelConfig) -> str:
    """The name the bf16 measurements give a model: its family, BioFormer with its pair mode."""
    return f"bioformer-{model.bioformer.pair_mode}" if model.model == "bioformer" else model.model


def autocast_dtype(amp: str, device: torch.device, model: ModelConfig | None = None) -> torch.dtype | None:
    """The autocast dtype of `--amp` (None = fp32). "auto": bf16 on GPUs that support it (fp16
    otherwise); on the CPU bf16 only where it measured faster at equal quality: a model of a
    checked kind (CPU_BF16_CHECKED) and width >= CPU_BF16_MIN_D_MODEL, on a CPU with bf16 units;
    fp32 otherwise (and when the model is not given)."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or model is None or CPU_BF16_MIN_D_MODEL is None:
        return None
    measured = model.d_model >= CPU_BF16_MIN_D_MODEL and cpu_amp_kind(model) in CPU_BF16_CHECKED
    return torch.bfloat16 if (measured and cpu_has_bf16_units()) else None
