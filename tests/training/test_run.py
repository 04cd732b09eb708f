"""End to end on the fixture: run directory contents, reproducibility, evaluate, atomic writes."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bioformer.data.tokenize import CellDataset
from bioformer.training.checkpoint import save_weights
from bioformer.training.evaluate import evaluate_run
from bioformer.training.metrics import EvalResult
from bioformer.training.run import run_training
from bioformer.training.rundir import RUN_MARKER
from tests.conftest import H5AD, tiny_config

TEST_KEYS = ("test_mse", "test_mre", "test_mae", "test_pearson")


@pytest.fixture(scope="module")
def bioformer_run(tmp_path_factory):
    # lr 1e-2 over 4 epochs: enough for the tiny model to learn (see test_training_learns)
    cfg = tiny_config(tmp_path_factory.mktemp("bf"), train={"epochs": 4, "lr": 1e-2, "warmup_steps": 2})
    out, summary = run_training(cfg, quiet=True)
    return cfg, out, summary


def test_run_directory_has_everything(bioformer_run):
    cfg, out, summary = bioformer_run
    for f in ("config.yaml", "metrics.csv", "model.safetensors", "summary.json", "curves.png", "vocab.json", "split.npz"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    for k in (*TEST_KEYS, "n_params", "seed", "versions", "wall_seconds", "test_mse_vs_floor", "prior_coverage"):
        assert k in s, k
    for p in ("floor_const_", "floor_gene_mean_", "floor_cell_"):
        for m in ("mse", "mre", "mae", "pearson", "pearson_gene", "spearman_cell", "mse_log", "mse_role_tf"):
            assert p + m in s, p + m
    assert s["test_mse_vs_floor"] == pytest.approx(s["test_mse"] / s["floor_gene_mean_mse"])
    assert s["test_mse_vs_floor_cell"] == pytest.approx(s["test_mse"] / s["floor_cell_mse"])
    result = EvalResult.from_dict(s["test"])
    _assert_same(result.flat("test_"), {k: v for k, v in s.items() if k in result.flat("test_")})
    lo, hi = result.ci["mse"]
    assert lo <= result["mse"] <= hi
    # full-cell scoring on the test split: every gene position of every test cell, once
    test_set = CellDataset(*_test_set_args(out, cfg))
    assert result.counts["positions"] == int(test_set.lengths().sum() - len(test_set))
    assert result.counts["folds"] == round(1 / cfg.data.mask_ratio)
    held = pd.read_csv(out / "heldout_edges.csv")
    assert len(held) > 0 and set(held.columns) == {"source", "target", "sign"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == cfg.train.epochs
    assert {"train_loss", "valid_mse", "valid_mre", "valid_mae", "valid_pearson", "valid_pearson_gene", "valid_floor_cell_mse", "lr", "seconds"} <= set(rows[0])
    weights = load_file(str(out / "model.safetensors"))
    assert "blocks.0.outer_product_mean.linear_out.weight" in weights
    assert s["prior_coverage"]["edges"] > 0


def _assert_same(a: dict, b: dict) -> None:
    """Equal flat metric dicts, NaN equal to NaN."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), k


def _test_set_args(out, cfg):
    import numpy as np

    from bioformer.data.pipeline import prepare_data

    data = prepare_data(cfg.data, seed=cfg.train.seed, quiet=True)
    return data.adata.X, data.gene_token_ids, np.load(out / "split.npz")["test"], cfg.train.seed, cfg.data.max_len


def test_training_learns(bioformer_run):
    """Outcome, not plumbing: the training loss falls and the model beats the constant floor
    (an optimizer that never steps, or a flipped loss, fails here)."""
    cfg, out, summary = bioformer_run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # measured: 191 -> 133 (the decoder starts at the mean bin; from 0 it was 702 -> 164)
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert summary["test_mse"] < 0.9 * summary["floor_const_mse"]


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
    result, info = evaluate_run(out, quiet=True)
    _assert_same(result.flat("test_"), EvalResult.from_dict(summary["test"]).flat("test_"))
    assert info["unknown_genes"] == 0


def test_evaluate_on_other_data_maps_genes_by_name(bioformer_run, tmp_path):
    import anndata as ad

    _, out, _ = bioformer_run
    vocab = json.loads((out / "vocab.json").read_text())["genes"]
    other = ad.read_h5ad(H5AD)[:120].copy()
    drop = set(vocab[:5])
    other = other[:, [g for g in other.var_names if g not in drop]].copy()
    p = tmp_path / "other.h5ad"
    other.write_h5ad(p)
    result, info = evaluate_run(out, data=str(p), quiet=True)
    assert info["unknown_genes"] == 5 and info["n_cells"] == 120
    assert result.counts["cells"] == 120 and math.isfinite(result["mse"])


def test_evaluate_scores_cells_outside_the_training_subsample(tmp_path):
    import numpy as np

    cfg = tiny_config(tmp_path, data={"max_cells": 150})
    cfg.train.epochs = 1
    out, _ = run_training(cfg, quiet=True)
    result, info = evaluate_run(out, eval_cells=40, quiet=True, folds=2)
    assert info["n_cells"] == 40 and result.counts["cells"] == 40
    assert result.counts["folds"] == 2 and math.isfinite(result["mse"]) and "cell" in result.floors
    seen = set(np.load(out / "split.npz")["obs_names"])
    assert len(seen) == 150


def test_scgpt_and_zero_z_train_through_the_same_loop(tmp_path):
    for name, over in {"scgpt": {"model": {"model": "scgpt"}}, "zero-z": {"data": {"prior": "none", "genes": "hvg"}}}.items():
        cfg = tiny_config(tmp_path / name, **over)
        cfg.train.epochs = 1
        _, s = run_training(cfg, quiet=True)
        assert s["model"] == cfg.model.model and math.isfinite(s["test_mse"]) and s["best_epoch"] == 1
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


def test_overwrite_absolute_paths_and_evaluate_from_anywhere(tmp_path, monkeypatch, caplog):
    """A finished run in --out is refused unless overwrite; relative data/prior paths are stored
    absolute, so the run evaluates from another working directory; a run that does not beat the
    per-gene floor says so."""
    import yaml

    from bioformer.errors import BioformerError

    out = tmp_path / "run"
    out.mkdir()
    for f in ("config.yaml", "vocab.json", "model.safetensors", "summary.json"):
        (out / f).write_text("old")
    (out / "notes.txt").write_text("mine")
    cfg = tiny_config(tmp_path, data={"data": H5AD.name, "prior": "prior_edges.csv"})
    cfg.train.epochs = 1
    monkeypatch.chdir(H5AD.parent)
    with pytest.raises(BioformerError, match="already holds a finished run; pass --overwrite"):
        run_training(cfg, quiet=True)
    assert (out / "summary.json").read_text() == "old"
    with pytest.raises(BioformerError, match="not created by bioformer train"):  # no run marker: never replaced
        run_training(cfg, quiet=True, overwrite=True)
    assert (out / "summary.json").read_text() == "old"
    (out / RUN_MARKER).write_text("{}")  # as `train` marks the directories it creates
    with caplog.at_level("WARNING", logger="bioformer"):
        _, summary = run_training(cfg, overwrite=True)
    assert ("did not beat the per-gene-mean floor" in caplog.text) == (summary["test_mse_vs_floor"] >= 1)
    assert (out / "notes.txt").read_text() == "mine"
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["data"] == str(H5AD.resolve()) and saved["prior"] == str((H5AD.parent / "prior_edges.csv").resolve())
    monkeypatch.chdir(tmp_path)
    result, info = evaluate_run(out, quiet=True)
    assert info["scored"] == "test split"
    res = result.flat("test_")
    for k in (*TEST_KEYS, "floor_gene_mean_mse", "floor_cell_mse"):
        assert res[k] == summary[k], k


def test_floor_warning_only_when_the_floor_is_not_beaten():
    from bioformer.training.summary import floor_warning

    s = {"test_mse": 150.0, "floor_gene_mean_mse": 140.0, "test_mse_vs_floor": 150 / 140, "epochs": 3}
    assert "did not beat the per-gene-mean floor" in floor_warning(s) and "more than 3 epochs" in floor_warning(s)
    assert floor_warning({**s, "test_mse": 130.0, "test_mse_vs_floor": 130 / 140}) is None


def test_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("out of memory in epoch 1")

    monkeypatch.setattr("bioformer.training.run.train", crash)
    cfg = tiny_config(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(cfg, quiet=True)
    assert not (tmp_path / "run").exists()


def test_evaluate_data_honours_layer_and_says_what_it_scored(bioformer_run, tmp_path):
    import anndata as ad
    import numpy as np

    from bioformer.errors import BioformerError

    _, out, summary = bioformer_run
    plain = ad.read_h5ad(H5AD)[:80].copy()
    plain.write_h5ad(tmp_path / "plain.h5ad")
    layered = plain.copy()
    layered.layers["counts"] = plain.X.copy()
    X = plain.X.copy()
    X.data = np.ones_like(X.data)  # X is something else: scoring it would give other numbers
    layered.X = X
    layered.write_h5ad(tmp_path / "layered.h5ad")
    (ref, ref_info), (via_layer, layer_info) = (evaluate_run(out, data=str(tmp_path / f), layer=lay, quiet=True) for f, lay in (("plain.h5ad", None), ("layered.h5ad", "counts")))
    via_x, _ = evaluate_run(out, data=str(tmp_path / "layered.h5ad"), quiet=True)
    assert ref_info["scored"] == layer_info["scored"] == "all cells" and ref_info["n_cells"] == 80
    for k in ("mse", "mre", "mae", "pearson"):
        assert via_layer[k] == ref[k], k
    assert via_x["mse"] != ref["mse"]
    own, own_info = evaluate_run(out, data=str(H5AD), quiet=True)  # the run's own file: its test split
    assert own_info["scored"] == "test split" and own["mse"] == summary["test_mse"]
    with pytest.raises(BioformerError, match="--layer and --gene-column describe the file given with --data"):
        evaluate_run(out, layer="counts", quiet=True)


def test_evaluate_a_run_trained_on_a_device_this_machine_lacks(bioformer_run, tmp_path):
    import shutil

    _, out, summary = bioformer_run
    moved = tmp_path / "from-gpu"
    shutil.copytree(out, moved)
    text = (moved / "config.yaml").read_text()
    assert "device: auto" in text
    (moved / "config.yaml").write_text(text.replace("device: auto", "device: cuda:99"))
    res, _ = evaluate_run(moved, quiet=True)
    assert res["mse"] == summary["test_mse"]


def test_failure_after_an_epoch_keeps_an_unfinished_resumable_run(tmp_path, monkeypatch):
    from bioformer.errors import BioformerError

    def crash(*a, **k):
        raise RuntimeError("disk full while testing")

    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    with monkeypatch.context() as mp, pytest.raises(RuntimeError, match="disk full"):
        mp.setattr("bioformer.training.run.evaluate", crash)  # after training, before summary.json
        run_training(cfg, quiet=True)
    out = tmp_path / "run"
    assert (out / "last.pt").exists() and (out / "model.safetensors").exists()
    assert not (out / "summary.json").exists()
    with pytest.raises(BioformerError, match="holds an unfinished run .*pass --resume"):
        run_training(cfg, quiet=True)
    _, summary = run_training(cfg, quiet=True, resume=True)
    assert (out / "summary.json").exists() and summary["epochs"] == 1


def test_prior_targets_scored_beside_random_masks(bioformer_run):
    """The summary's prior-targets metrics are the model's metrics on prior-targets test masks."""
    from bioformer.data.pipeline import prepare_data
    from bioformer.training.floors import Floors
    from bioformer.training.loop import evaluate
    from bioformer.training.reader import RunReader

    cfg, out, s = bioformer_run
    assert 0.5 < s["test_prior_targets_cells_share"] <= 1.0
    assert s["test_prior_targets_mse_vs_floor"] == pytest.approx(s["test_prior_targets_mse"] / s["floor_prior_targets_gene_mean_mse"])
    cfg = RunReader(out).config()
    data = prepare_data(cfg.data, seed=cfg.train.seed, quiet=True)
    model = RunReader(out).model()
    floors = Floors.fit(data.adata.X, data.gene_token_ids, data.split["train"], len(data.vocab), False)
    pt = evaluate(model, data.dataset("test", mask_strategy="prior-targets"), data.prior, floors=floors)
    assert pt["mse"] == pytest.approx(s["test_prior_targets_mse"], rel=1e-5)
    assert pt.floors["gene_mean"]["mse"] == pytest.approx(s["floor_prior_targets_gene_mean_mse"], rel=1e-6)
    assert pt["mse"] != pytest.approx(s["test_mse"], rel=1e-3)  # other masks, other numbers


@pytest.mark.parametrize("section, field, value", [("model", "prior_direction", "sideways"), ("data", "mask_strategy", "everything")])
def test_bad_choice_is_refused_before_anything_is_written(tmp_path, section, field, value):
    from bioformer.errors import BioformerError

    cfg = tiny_config(tmp_path, **{section: {field: value}})
    with pytest.raises(BioformerError, match=f"--{field.replace('_', '-')} must be .* got '{value}'"):
        run_training(cfg, quiet=True)
    assert not (tmp_path / "run").exists()
def test_grn_table_of_a_run_uses_its_heldout_edges(bioformer_run, tmp_path):
    """score_run: the held-out edges as a score matrix are a perfect predictor of the held-out
    truth; the edges z was built from are not candidates; ChIP truth comes from the given file."""
    import numpy as np

    from bioformer.evaluation.grn import edges_matrix, score_run

    _, out, _ = bioformer_run
    genes = json.loads((out / "vocab.json").read_text())["genes"]
    held = pd.read_csv(out / "heldout_edges.csv")
    chip = tmp_path / "chip.json"
    tf = held["source"].iloc[0]
    chip.write_text(json.dumps({f"{tf} K562": list(held.loc[held["source"] == tf, "target"])}))
    perfect = edges_matrix(held, genes)
    df = score_run(out, {"held-out itself": perfect, "noise": np.random.default_rng(0).random(perfect.shape)}, chip_path=chip)
    h = df[df["truth"] == "heldout prior edges"].set_index("predictor")
    assert h.loc["held-out itself", "average_precision"] == pytest.approx(1.0)
    assert h.loc["held-out itself", "n_true"] == len(held)
    assert h.loc["noise", "average_precision"] < 0.5
    c = df[df["truth"] == "chip"].set_index("predictor")
    assert c.loc["held-out itself", "average_precision"] == pytest.approx(1.0)  # the TF row ranks its ChIP targets first
    assert {"random", "pearson co-expression", "spearman co-expression", "prior", "GENIE3 (trees)", "degree (visible out x in)"} <= set(c.index)
    assert "degree-preserving shuffle" not in set(c.index)  # the truth-derived oracle is gone
