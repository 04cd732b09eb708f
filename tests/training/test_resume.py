"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical to one that
never stopped (same seed, one thread, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from bioformer.cli import main
from bioformer.training.checkpoint import TRAINING_STATE, load_training_state
from bioformer.training.run import run_training
from tests.conftest import tiny_config

COMPARED = ("test_mse", "test_mre", "test_mae", "test_pearson", "floor_gene_mean_mse", "best_epoch", "best_valid_mse")


def resume_config(tmp_path):
    # dropout on (the torch RNG must be restored), warm-up longer than an epoch (15 steps: the
    # step count must be restored), plateau patience 0 (its state decides the LR after a bad epoch)
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 3
    cfg.train.warmup_steps = 20
    cfg.train.plateau_patience = 0
    cfg.model.dropout = 0.1
    return cfg


def kill_mid_run(cfg_path, out, timeout: float = 300.0) -> None:
    """Start `bioformer train` and SIGKILL it as soon as the first epoch's state is on disk."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bioformer", "-q", "train", "--config", str(cfg_path), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while not (out / TRAINING_STATE).exists():
            if proc.poll() is not None:
                raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError("no training state written")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_killed_run_resumes_to_identical_result(tmp_path):
    cfg = resume_config(tmp_path)
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    killed = tmp_path / "killed"
    kill_mid_run(cfg_path, killed)
    assert not (killed / "summary.json").exists()
    state = load_training_state(killed / TRAINING_STATE)
    assert state["epoch"] < cfg.train.epochs  # it really stopped before the end

    assert main(["-q", "train", "--resume", str(killed)]) == 0

    cfg.out = str(tmp_path / "straight")
    _, straight = run_training(cfg, quiet=True)
    resumed = json.loads((killed / "summary.json").read_text())
    for k in COMPARED:
        assert resumed[k] == straight[k], k
    a, b = load_file(str(killed / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    last_a, last_b = load_training_state(killed / TRAINING_STATE), load_training_state(tmp_path / "straight" / TRAINING_STATE)
    assert last_a["step"] == last_b["step"] == cfg.train.epochs * 15
    for k in last_a["model"]:
        assert torch.equal(last_a["model"][k], last_b["model"][k]), k
    assert [r["valid_mse"] for r in last_a["history"]] == [r["valid_mse"] for r in last_b["history"]]
    assert [r["lr"] for r in last_a["history"]] == [r["lr"] for r in last_b["history"]]


def test_resume_refuses_config_changes_and_missing_state(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    out, _ = run_training(cfg, quiet=True)
    assert main(["-q", "train", "--resume", str(out), "--lr", "0.1"]) == 2
    assert "only" in capsys.readouterr().err
    # a finished run: nothing to do, same summary
    assert main(["-q", "train", "--resume", str(out)]) == 0
    assert main(["-q", "train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_resume_with_more_epochs_equals_the_longer_run(tmp_path):
    """A state can be continued to more epochs (same as training that long at once), never with
    another model or data configuration."""
    from bioformer.errors import BioformerError

    short = tiny_config(tmp_path / "a")
    short.train.epochs = 1
    out, _ = run_training(short, quiet=True)
    (out / "summary.json").unlink()  # pretend it stopped after epoch 1 of 2
    other = tiny_config(tmp_path / "a", model={"d_model": 8})
    with pytest.raises(BioformerError, match="another configuration"):
        run_training(other, quiet=True, resume=True)
    long_ = tiny_config(tmp_path / "a")
    long_.train.epochs = 2
    _, resumed = run_training(long_, quiet=True, resume=True)
    straight_cfg = tiny_config(tmp_path / "b")
    straight_cfg.train.epochs = 2
    _, straight = run_training(straight_cfg, quiet=True)
    for k in COMPARED:
        assert resumed[k] == straight[k], k


def test_planted_training_state_is_refused_and_never_runs_code(tmp_path):
    """A last.pt whose unpickling would create a marker file: one BioformerError, no marker."""
    from bioformer.errors import BioformerError
    from tests.bad_input_cases import write_malicious_state

    marker, path = tmp_path / "code-ran", tmp_path / TRAINING_STATE
    write_malicious_state(path, marker)
    with pytest.raises(BioformerError, match="refused"):
        load_training_state(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unpickling it does run code
    assert marker.exists()


def test_training_state_round_trips_rng_streams_without_pickle(tmp_path):
    """Every RNG stream restored from a weights_only state draws the same numbers again."""
    import random

    import numpy as np

    from bioformer.training.checkpoint import rng_state, save_training_state, set_rng_state

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state
    path = tmp_path / TRAINING_STATE
    save_training_state(path, {"epoch": 1, "step": 2, "model": {}, "rng": [rng_state()], "history": [{"x": np.float64(1.5)}]})
    draws = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    state = load_training_state(path)
    set_rng_state(state["rng"][0])
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == draws
    assert state["history"] == [{"x": 1.5}]
