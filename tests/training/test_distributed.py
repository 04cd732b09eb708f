"""DDP on CPU (gloo): 2 processes x batch b == 1 process x batch 2b; exact metric reduction;
plain checkpoints; every model switch uses all its parameters (DDP without unused-parameter search)."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bioformer.config import ModelConfig
from bioformer.data.prior import N_PRIOR_CODES
from bioformer.models import build_model
from bioformer.training.checkpoint import TRAINING_STATE, load_training_state
from bioformer.training.distributed import shard
from bioformer.training.evaluate import evaluate_run
from bioformer.training.run import run_training
from tests.conftest import tiny_config

TEST_KEYS = ("test_mse", "test_mre", "test_mae", "test_pearson", "floor_gene_mean_mse", "floor_const_mse")


def shift_invariant_removed(name: str, w: torch.Tensor, d_model: int, pair_mode: str) -> torch.Tensor:
    """`w` without the entries that cannot change any output: the key bias (adds a constant to a
    query's logits), in the full pair mode norm_z.bias (a per-head constant bias), in the linear
    pair mode the OPM's key-side bias `linear_b.bias` (z_ij gets W(a_i x beta), a constant over
    keys j, with no LayerNorm after it). Their true gradient is exactly 0
    (`test_shift_invariant_parameters_have_no_true_gradient`), so AdamW turns float round-off in
    it, which the batch split changes, into lr-sized steps (measured: up to 4e-5 apart after 15
    steps in full mode, 2.7e-5 for linear_b.bias in linear mode; every other weight <= 2.4e-7)."""
    if name.endswith("attention.in_proj.bias"):
        return torch.cat([w[:d_model], w[2 * d_model:]])
    if name.endswith("attention.norm_z.bias") or (pair_mode == "linear" and name.endswith("outer_product_mean.linear_b.bias")):
        return w[:0]
    return w


def _shift_invariant_parts(model: torch.nn.Module, d_model: int, pair_mode: str) -> dict[str, torch.Tensor]:
    """The gradient entries `shift_invariant_removed` drops, by parameter name."""
    out = {}
    for n, p in model.named_parameters():
        kept = shift_invariant_removed(n, torch.arange(p.numel()), d_model, pair_mode)
        dropped = sorted(set(range(p.numel())) - set(kept.tolist()))
        if dropped:
            out[n] = p.grad.flatten()[dropped]
    return out


@pytest.mark.parametrize("pair_mode", ["linear", "full"])
def test_shift_invariant_parameters_have_no_true_gradient(pair_mode):
    """What the two-process test leaves out is exactly what no output depends on: in float64
    its gradient is ~1e-17 of the largest one (round-off), in float32 ~1e-10. Positive control:
    the same entries in the other pair mode (linear_b.bias in the full mode) have a real gradient."""
    torch.manual_seed(0)
    B, r, V, d = 4, 12, 30, 16
    gene_ids, values = torch.randint(3, V, (B, r)), torch.randint(0, 51, (B, r)).double()
    mask, pad = torch.zeros(B, r, dtype=torch.bool), torch.zeros(B, r, dtype=torch.bool)
    mask[:, 1:4], pad[1, -3:] = True, True
    prior = torch.randint(0, N_PRIOR_CODES, (B, r, r))
    model = build_model(ModelConfig.of(d_model=d, nhead=2, d_z=4, d_opm=4, dropout=0.0, pair_mode=pair_mode), V).double()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    model.loss(model(gene_ids, values.masked_fill(mask, -1.0), pad, prior=prior), values, mask).backward()
    largest = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    dropped = _shift_invariant_parts(model, d, pair_mode)
    assert dropped and all(float(g.abs().max()) < 1e-12 * largest for g in dropped.values()), {n: float(g.abs().max()) for n, g in dropped.items()}
    if pair_mode == "full":
        assert float(model.blocks[0].outer_product_mean.linear_b.bias.grad.abs().max()) > 1e-6 * largest


def test_two_processes_match_one_process_with_double_batch(tmp_path):
    """In the default pair mode: the weights after one epoch on 2 ranks equal 1 rank with the double
    batch, entry by entry to 1e-5 (the largest gap measured: 2.4e-7), except the entries no output
    depends on (`shift_invariant_removed`)."""
    b = 8
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    cfg.train.batch_size = b
    cfg.data.backed = True  # ranks share the streaming passes over the file: same lengths and floors
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "bioformer", "-q", "train", "--nproc", "2", "--config", str(cfg_path), "--out", str(two)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1  # only rank 0 prints

    cfg.train.batch_size = 2 * b
    cfg.data.backed = False
    cfg.out = str(tmp_path / "one")
    _, one_summary = run_training(cfg, quiet=True)

    w2, w1 = load_file(str(two / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    assert w2.keys() == w1.keys() and not any(k.startswith("module.") for k in w2)
    for k in w1:
        a, b = (shift_invariant_removed(k, w[k], cfg.model.d_model, cfg.model.bioformer.pair_mode) for w in (w2, w1))
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (k, (a - b).abs().max())
    s2 = load_training_state(two / TRAINING_STATE)
    s1 = load_training_state(tmp_path / "one" / TRAINING_STATE)
    assert s2["step"] == s1["step"] == 15  # 240 training cells / 16 per global batch
    assert len(s2["rng"]) == 2  # one RNG state per rank
    assert s2["history"][0]["train_loss"] == pytest.approx(s1["history"][0]["train_loss"], rel=1e-5)
    two_summary = json.loads((two / "summary.json").read_text())
    for k in TEST_KEYS:
        assert two_summary[k] == pytest.approx(one_summary[k], rel=1e-4), k
    # the 2-process test metrics (positions gathered over ranks) equal a 1-process evaluation of the
    # same weights: exactly, up to float64 summation order
    single = evaluate_run(two, quiet=True)[0].flat("test_")
    for k in TEST_KEYS:
        assert single[k] == pytest.approx(two_summary[k], rel=1e-12, abs=0), k
    rows = list(csv.DictReader(open(two / "metrics.csv")))
    assert len(rows) == 1


def test_shard_cuts_global_batches_into_contiguous_parts():
    batch = list(range(10, 17))  # 7 cells on 2 ranks
    parts = [shard(batch, r, 2) for r in range(2)]
    assert parts == [([10, 11, 12], 1.0), ([13, 14, 15, 16], 1.0)]
    # fewer cells than ranks: the idle rank runs a cell with weight 0
    assert shard([5], 0, 2) == ([5], 0.0)
    assert shard([5], 1, 2) == ([5], 1.0)


SWITCHES = [
    dict(model="scgpt"),
    dict(model="scgpt", explicit_zero_prob=True),
    *[dict(model="bioformer", pair_bias=pb, opm=o, gating=g, explicit_zero_prob=zp, nlayers=n, pair_mode=pm)
      for pb, o, g, zp, n, pm in itertools.product([True, False], [True, False], [True, False], [False, True], [1, 2], ["linear", "full"])],
]


@pytest.mark.parametrize("use_prior", [True, False])
def test_every_switch_uses_every_parameter(use_prior):
    """DDP (without find_unused_parameters) needs a gradient for every parameter each step."""
    torch.manual_seed(0)
    B, r, V = 2, 6, 20
    gene_ids = torch.randint(3, V, (B, r))
    values = torch.randint(0, 51, (B, r)).float()
    mask = torch.zeros(B, r, dtype=torch.bool)
    mask[:, 1] = True
    pad = torch.zeros(B, r, dtype=torch.bool)
    pad[1, -1] = True
    prior = torch.randint(0, N_PRIOR_CODES, (B, r, r))
    for sw in SWITCHES:
        cfg = ModelConfig.of(d_model=8, nhead=2, d_z=4, d_opm=4, dropout=0.0, **sw)
        model = build_model(cfg, V, use_prior=use_prior)
        out = model(gene_ids, values.masked_fill(mask, -1.0), pad, prior=prior if model.needs_prior else None)
        model.loss(out, values, mask).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]  # DDP reduces only these
        assert not unused, (sw, unused)


def test_length_grouped_global_batches_are_seeded_and_epoch_dependent():
    from bioformer.data.tokenize import length_grouped_batches

    lengths = np.random.default_rng(0).integers(5, 60, 200)
    a = length_grouped_batches(lengths, 16, 1001)
    assert a == length_grouped_batches(lengths, 16, 1001)
    assert a != length_grouped_batches(lengths, 16, 1002)
    assert sorted(i for b in a for i in b) == list(range(200))


def test_two_processes_on_a_split_smaller_than_the_ranks(tmp_path):
    """`train --nproc 2` when the validation and test splits are one evaluation batch (30 cells,
    batch 2 x 32): the idle rank neither crashes (it once died with KeyError 'const') nor changes
    the numbers: the summary equals a 1-process evaluation of the same weights exactly."""
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    cfg.train.batch_size = 32
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "bioformer", "-q", "train", "--nproc", "2", "--max-cells", "300", "--config", str(cfg_path), "--out", str(two)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["n_cells"]["valid"] == summary["n_cells"]["test"] == 30
    single = evaluate_run(two, quiet=True)[0].flat("test_")
    for k in TEST_KEYS:
        assert single[k] == pytest.approx(summary[k], rel=1e-12, abs=0), k


@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_nproc_below_one_is_an_error(nproc, tmp_path, capsys):
    from bioformer.cli import main

    assert main(["-q", "train", "--nproc", nproc, "--out", str(tmp_path / "run")]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nproc_1_trains_in_this_process(tmp_path, monkeypatch):
    """--nproc 1 never starts torchrun (os.execv is not called)."""
    import os

    from bioformer.cli import main

    def no_exec(*a):
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(os, "execv", no_exec)
    cfg = tiny_config(tmp_path)
    cfg.train.epochs = 1
    cfg.save(tmp_path / "cfg.yaml")
    assert main(["-q", "train", "--nproc", "1", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "summary.json").is_file()
