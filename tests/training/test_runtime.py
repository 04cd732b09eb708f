"""`--amp auto` on the CPU follows the measurements: bf16 autocast exactly for the models where
it measured faster (benchmarks/results/amp.json) and a paired-seed check found equal quality
(amp_quality.json), fp32 elsewhere; training and `estimate` resolve it the same way."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bioformer.config import ModelConfig
from bioformer.training import runtime
from bioformer.training.runtime import autocast_dtype

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results"
CPU = torch.device("cpu")
FASTER = 1.2  # fp32 / bf16 CPU time above this counts as "measured faster" (the noise of amp.py's ratios is ~0.1-0.2)


# the names each benchmark gives a model -> `runtime.cpu_amp_kind`
AMP_JSON_KINDS = {"scgpt": "scgpt", "bioformer": "bioformer-full", "bioformer-linear": "bioformer-linear"}
QUALITY_KINDS = {"scgpt": "scgpt", "full": "bioformer-full", "linear": "bioformer-linear"}


def _model(kind: str, d_model: int) -> ModelConfig:
    family, _, mode = kind.partition("-")
    return ModelConfig.of(model=family, d_model=d_model, **({"pair_mode": mode} if mode else {}))


def _equal_quality() -> set[str]:
    """Kinds whose paired-seed check found bf16 as good as fp32: the 95% CI of bf16 - fp32 test
    MSE includes 0 and its upper end is within 2% of the fp32 MSE."""
    paired = json.loads((RESULTS / "amp_quality.json").read_text())["paired"]
    assert all(q["d_model"] == runtime.CPU_BF16_MIN_D_MODEL for q in paired)  # checked at the threshold width
    return {QUALITY_KINDS[q["family"]] for q in paired if q["ci_low"] <= 0 <= q["ci_high"] < 0.02 * q["mean_fp32"]}


def test_auto_picks_bf16_exactly_where_it_measured_faster_and_equal(monkeypatch):
    """Every row of amp.json: auto picks bf16 iff bf16 measured faster there and that kind of
    model passed the quality check. Mutants: auto always fp32 on the CPU, always bf16 from the
    width on (the full mode's quality was never checked), or always bf16: a row disagrees."""
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)  # the measuring CPU had them
    rows = json.loads((RESULTS / "amp.json").read_text())["rows"]
    assert {r["d_model"] for r in rows} >= {64, 256, 512}
    equal = _equal_quality()
    assert "bioformer-linear" in equal  # the default model
    for r in rows:
        faster = r["bf16_cpu_speedup"] > FASTER
        assert faster or r["bf16_cpu_speedup"] < 1.1, r  # no row is ambiguous
        kind = AMP_JSON_KINDS[r["family"]]
        picked = autocast_dtype("auto", CPU, _model(kind, r["d_model"]))
        assert picked == (torch.bfloat16 if faster and kind in equal else None), r


def test_auto_is_fp32_without_bf16_units_or_width_and_explicit_modes_win(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: False)
    wide = ModelConfig.of(d_model=512)
    assert autocast_dtype("auto", CPU, wide) is None  # bf16 would be emulated: slower
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    assert autocast_dtype("auto", CPU, wide) is torch.bfloat16
    assert autocast_dtype("auto", CPU, None) is None  # model unknown: fp32
    assert autocast_dtype("off", CPU, wide) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16 and autocast_dtype("fp16", CPU) is torch.float16


def test_train_and_estimate_resolve_auto_by_the_rule(tmp_path, monkeypatch, capsys):
    """The width reaches the rule from `train` (summary.json's `autocast`) and `estimate`.
    Mutant: run.py resolving --amp without the model width (auto then stays fp32)."""
    from bioformer.cli import main
    from bioformer.training.run import run_training
    from tests.conftest import tiny_config

    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "CPU_BF16_MIN_D_MODEL", 16)  # the tiny model's width
    cfg = tiny_config(tmp_path)
    cfg.train.epochs, cfg.train.max_steps = 1, 2
    _, summary = run_training(cfg, quiet=True)
    assert cfg.model.d_model == 16 and summary["autocast"] == "bfloat16"
    assert main(["-q", "estimate", "--n-genes", "64", "--d-model", "16", "--nhead", "2"]) == 0
    assert "bf16 activations" in capsys.readouterr().out
    monkeypatch.setattr(runtime, "CPU_BF16_MIN_D_MODEL", 32)
    assert main(["-q", "estimate", "--n-genes", "64", "--d-model", "16", "--nhead", "2"]) == 0
    assert "fp32" in capsys.readouterr().out

