"""End to end on the fixture: run directory contents, reproducibility, evaluate, atomic writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bioformer.training.checkpoint import save_weights
from bioformer.training.run import evaluate_run, run_training
from tests.conftest import H5AD, tiny_config

TEST_KEYS = ("test_mse", "test_mre", "test_mae", "test_pearson")


@pytest.fixture(scope="module")
def bioformer_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("bf"))
    out, summary = run_training(cfg, quiet=True)
    return cfg, out, summary


def test_run_directory_has_everything(bioformer_run):
    cfg, out, summary = bioformer_run
    for f in ("config.yaml", "metrics.csv", "model.safetensors", "summary.json", "curves.png", "vocab.json", "split.npz"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    for k in (*TEST_KEYS, "n_params", "seed", "versions", "wall_seconds", "test_mse_vs_floor", "prior_coverage"):
        assert k in s, k
    for p in ("floor_const_", "floor_gene_mean_"):
        for m in ("mse", "mre", "mae", "pearson"):
            assert p + m in s
    assert s["test_mse_vs_floor"] == pytest.approx(s["test_mse"] / s["floor_gene_mean_mse"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == cfg.train.epochs
    assert {"train_loss", "valid_mse", "valid_mre", "valid_mae", "valid_pearson", "lr", "seconds"} <= set(rows[0])
    weights = load_file(str(out / "model.safetensors"))
    assert "blocks.0.outer_product_mean.linear_out.weight" in weights
    assert s["prior_coverage"]["edges"] > 0


def test_same_seed_same_numbers(tmp_path):
    """Two fresh processes (as a user would run them) with the same seed give identical metrics."""
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    summaries = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        subprocess.run([sys.executable, "-m", "bioformer.cli", "-q", "train", "--config", str(cfg_path), "--out", str(out)], check=True, capture_output=True)
        summaries.append(json.loads((out / "summary.json").read_text()))
    for k in (*TEST_KEYS, "floor_gene_mean_mse", "n_params", "best_epoch"):
        assert summaries[0][k] == summaries[1][k], k


def test_evaluate_reproduces_test_metrics_exactly(bioformer_run):
    _, out, summary = bioformer_run
    res = evaluate_run(out, quiet=True)
    for k in (*TEST_KEYS, "floor_gene_mean_mse", "floor_const_mse"):
        assert res[k] == summary[k], k
    assert res["unknown_genes"] == 0


def test_evaluate_on_other_data_maps_genes_by_name(bioformer_run, tmp_path):
    import anndata as ad

    _, out, _ = bioformer_run
    vocab = json.loads((out / "vocab.json").read_text())["genes"]
    other = ad.read_h5ad(H5AD)[:120].copy()
    drop = set(vocab[:5])
    other = other[:, [g for g in other.var_names if g not in drop]].copy()
    p = tmp_path / "other.h5ad"
    other.write_h5ad(p)
    res = evaluate_run(out, data=str(p), quiet=True)
    assert res["unknown_genes"] == 5 and res["n_cells"] == 120
    assert res["test_mse"] > 0


def test_scgpt_and_zero_z_train_through_the_same_loop(tmp_path):
    for name, over in {"scgpt": {"model": {"model": "scgpt"}}, "zero-z": {"data": {"prior": "none", "genes": "hvg"}}}.items():
        cfg = tiny_config(tmp_path / name, **over)
        cfg.train.epochs = 1
        _, s = run_training(cfg, quiet=True)
        assert s["model"] == cfg.model.model and s["test_mse"] > 0
        assert s["prior_coverage"] == {}


def test_include_zero_mode_reports_zero_and_nonzero(tmp_path):
    cfg = tiny_config(tmp_path, data={"include_zero_genes": True, "max_len": 40})
    cfg.train.epochs = 1
    _, s = run_training(cfg, quiet=True)
    for k in ("test_mse_zero", "test_mse_nonzero", "test_mre_nonzero"):
        assert k in s


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill after the bytes are written, before the rename

    monkeypatch.setattr("bioformer.training.checkpoint.os.fsync", boom)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_weights(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temp file left behind
