"""A synthetic study with a planted effect: the report must name the right winner, and flag the
arm that does not beat the cell-aware floor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bioformer.experiments.report import write_report
from bioformer.training.metrics import EvalResult


def _write_run(study_dir, arm, seed, mse, cell_floor, pearson_gene):
    run = study_dir / "runs" / arm / f"seed{seed}"
    run.mkdir(parents=True)
    floors = {name: {"mse": v, "pearson_gene": 0.1, "spearman_cell": 0.3, "mre": 1.0, "mae": 8.0, "pearson": 0.5}
              for name, v in (("const", 200.0), ("gene_mean", 120.0), ("cell", cell_floor))}
    result = EvalResult(
        {"mse": mse, "pearson_gene": pearson_gene, "spearman_cell": 0.4, "mre": 1.0, "mae": 8.0, "pearson": 0.6},
        floors, {"cells": 200, "positions": 12000},
        {"mse_minus_floor_cell": (mse - cell_floor - 1.0, mse - cell_floor + 1.0)},
    )
    summary = {"model": "scgpt", "seed": seed, "test": result.to_dict(), **result.flat("test_"),
               "n_params": 1000, "epochs": 2, "best_epoch": 2, "best_valid_mse": mse, "wall_seconds": 1.0}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"model": "scgpt", "d_model": 8, "nlayers": 1}, "data": {"prior": "none"}}))


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """The tables are under test here, not the figures (plotting dominates the time)."""
    monkeypatch.setattr("bioformer.experiments.report.plot_comparison", lambda *a, **k: None)
    monkeypatch.setattr("bioformer.experiments.report.plot_curves", lambda *a, **k: None)


def _study(tmp_path, effect):
    rng = np.random.default_rng(0)
    for seed in range(5):
        base = 100 + rng.normal(0, 2)  # seed effect shared by both arms (paired design)
        _write_run(tmp_path, "plain", seed, base + rng.normal(0, 0.3), cell_floor=98.0, pearson_gene=0.20 + rng.normal(0, 0.01))
        _write_run(tmp_path, "better", seed, base - effect + rng.normal(0, 0.3), cell_floor=98.0, pearson_gene=0.25 + rng.normal(0, 0.01))
    return tmp_path


def _verdicts(study_dir):
    md = (study_dir / "summary.md").read_text()
    return md, {line.split("|")[2].strip(): line.split("|")[-2].strip() for line in md.splitlines() if line.startswith("| better vs plain")}


def test_planted_effect_names_the_right_winner(tmp_path):
    study = _study(tmp_path, effect=4.0)
    write_report(study, "synthetic", ["plain", "better"], [("better", "plain")])
    md, verdict = _verdicts(study)
    assert verdict["MSE"].startswith("**better better** (MDE ")
    assert verdict["per-gene Pearson"].startswith("**better better**")
    assert "Minimum detectable effect in test MSE" in md
    # the plain arm (MSE ~100 vs cell-aware floor 98) is flagged; the better arm (~96) is not
    flags = md.split("## Floor check")[1].split("##")[0]
    assert "**plain**" in flags and "does NOT beat the cell-aware floor" in flags
    assert "**better**" not in flags


def test_no_effect_gives_no_winner(tmp_path):
    study = _study(tmp_path, effect=0.0)
    write_report(study, "synthetic", ["plain", "better"], [("better", "plain")])
    md, verdict = _verdicts(study)
    assert verdict["MSE"].startswith("no effect larger than ")  # worded from power, never "no effect"
    mde = float(verdict["MSE"].split()[4])
    assert 0.2 < mde < 1.5  # paired noise sd ~0.3 * sqrt(2), 5 seeds
