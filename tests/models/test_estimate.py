"""The memory estimate: parts sum to the total, z grows ~r^2 in the full pair mode, the default
(linear) mode is what is estimated, and the CLI prints a breakdown without loading any data."""

from __future__ import annotations

import pytest

from bioformer.cli import main
from bioformer.config import ModelConfig
from bioformer.errors import BioformerError
from bioformer.estimate import CATEGORIES, estimate_memory, max_genes_for_budget, parse_bytes


def test_breakdown_sums_to_total():
    for cfg in (ModelConfig(), ModelConfig.of(pair_mode="full"), ModelConfig.of(pair_mode="linear")):
        for training in (True, False):
            est = estimate_memory(cfg, 256, 4, training=training)
            assert set(est.parts) == set(CATEGORIES)
            assert est.total == pytest.approx(sum(est.parts.values()))
            assert all(v >= 0 for v in est.parts.values())


def test_the_default_pair_mode_is_estimated():
    """`estimate` predicts the model that `train` builds: the default config's estimate is the
    linear pair mode's (no z), not the full mode's."""
    default, lin, full = ModelConfig(), ModelConfig.of(pair_mode="linear"), ModelConfig.of(pair_mode="full")
    assert estimate_memory(default, 1024, 8).parts == estimate_memory(lin, 1024, 8).parts
    assert estimate_memory(default, 1024, 8).total < estimate_memory(full, 1024, 8).total / 3


def test_z_grows_quadratically_and_scgpt_has_none():
    cfg = ModelConfig.of(pair_mode="full")
    z1 = estimate_memory(cfg, 256, 2, vocab_size=1000).parts["z activations"]
    z2 = estimate_memory(cfg, 512, 2, vocab_size=1000).parts["z activations"]
    assert z2 / z1 == pytest.approx(4.0, rel=1e-6)
    assert estimate_memory(ModelConfig(model="scgpt"), 512, 2).parts["z activations"] == 0


def test_checkpointing_and_budget():
    # checkpointing pays where attention keeps its probabilities (CPU's math path: attention
    # dropout); with the fused kernels a block keeps little beyond z, and recomputing costs one
    # more z (measured at r = 1024: 1150 vs 1110 MiB peak with / without; docs/memory-and-speed.md)
    full = dict(nlayers=4, d_z=32, pair_mode="full")
    plain = ModelConfig.of(**full, attention_dropout=0.1)
    ckpt = ModelConfig.of(**full, attention_dropout=0.1, checkpoint_blocks=True)
    assert estimate_memory(ckpt, 1024, 1).total < estimate_memory(plain, 1024, 1).total
    fused, fused_ckpt = ModelConfig.of(**full), ModelConfig.of(**full, checkpoint_blocks=True)
    assert estimate_memory(fused_ckpt, 1024, 1).total > estimate_memory(fused, 1024, 1).total
    r = max_genes_for_budget(plain, 1, 4e9)
    assert estimate_memory(plain, r, 1).total <= 4e9 < estimate_memory(plain, r + 1, 1).total
    assert parse_bytes("24GB") == 24e9 and parse_bytes("1GiB") == 2**30
    with pytest.raises(BioformerError):
        parse_bytes("lots")


def test_cli_prints_breakdown(capsys):
    rc = main(["estimate", "--n-genes", "256", "--batch-size", "4", "--d-z", "8", "--budget", "2GB"])
    out = capsys.readouterr().out
    assert rc == 0
    for k in CATEGORIES:
        assert k in out
    assert "r = 256" in out and "largest r within 2.00 GB" in out


def test_linear_pair_mode_memory_is_about_linear_in_r(capsys):
    """No z: with chunked attention the only r^2 terms are the 1-byte prior codes, so the peak
    grows ~linearly (log-log slope over r = 1k..16k well below full mode's 2)."""
    import math

    lin = ModelConfig.of(nlayers=4, d_z=32, d_opm=32, pair_mode="linear", attention_chunk_size=512)
    full = ModelConfig.of(nlayers=4, d_z=32, d_opm=32, pair_mode="full")
    t1, t2 = (estimate_memory(lin, r, 1).total for r in (1024, 16384))
    assert 1.0 <= math.log(t2 / t1) / math.log(16) < 1.2
    assert estimate_memory(lin, 4096, 1).total < estimate_memory(full, 4096, 1).total / 10
    # unchunked on CPU with attention dropout (and no prior), the math path keeps the attention
    # probabilities per block; a prior's mask is always built in chunks of rows
    unchunked = ModelConfig.of(nlayers=4, d_z=32, d_opm=32, pair_mode="linear", attention_dropout=0.1)
    lin_attention = estimate_memory(lin, 4096, 1).parts["attention"]
    assert estimate_memory(unchunked, 4096, 1, use_prior=False).parts["attention"] > 4 * lin_attention
    # the prior split off the fused kernel (CPU, no attention dropout) keeps O(S r) per block with
    # S ~ 10% of r regulators: well under one dense fp32 [B, H, r, r] mask per block
    fused = ModelConfig.of(nlayers=4, d_z=32, d_opm=32, pair_mode="linear")
    assert lin_attention < estimate_memory(fused, 4096, 1).parts["attention"] < 0.7 * 4 * (4 * 4096**2 * 4)
    assert main(["estimate", "--pair-mode", "linear", "--n-genes", "20000", "--batch-size", "1", "--device", "cuda", "--budget", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "pair_mode linear" in out and "fits for training" in out


def test_matches_a_hand_count_on_a_tiny_configuration():
    """Full pair mode, B=2, r=10 (T=20 tokens, 200 pairs), c=8, H=2, N=2, ff=32, c_z=4, c_opm=3, fp32, P=1000.
    Counted by hand from the rules in estimate.py's docstring comments: a dropped or doubled
    term changes a part."""
    cfg_args = dict(d_model=8, nhead=2, nlayers=2, ff_factor=4, d_z=4, d_opm=3, dropout=0.0, pair_mode="full")
    cfg = ModelConfig.of(**cfg_args)
    infer = estimate_memory(cfg, 10, 2, training=False, n_params=1000).parts
    assert infer == {
        "parameters + optimizer state": 4 * 1000,  # fp32 weights
        "m activations": (4 * 8 + 32) * 20 * 4,
        "z activations": (1 + 2 * 4 * 4 + 8) * 200,  # int8 codes (no pair codes: PriorCodes.of_edges), z / next z, LN(z)'s mean/rstd
        "attention": 2 * (2 + 2) * 4 * 200,  # mask, bias, scores, probabilities per head
        "OPM intermediates": (20 * 4 * 4 + 20 * 3 * 3) * 4,  # one OPM (the last block skips it)
    }
    # on CUDA (fused kernels, no probabilities kept); CPU's math path for the pair bias is below
    train = estimate_memory(cfg, 10, 2, training=True, n_params=1000, device="cuda").parts
    assert train == {
        "parameters + optimizer state": 16 * 1000,  # weights, grads, two AdamW states
        "m activations": (2 * (12 * 8 + 3 * 8 + 2.5 * 32) + 12 * 8) * 20 * 4,
        # codes 1 (read by regulator rows/columns, no pair codes) + the OPM's new z 16 + LN(z)'s
        # stats 8 (LN(z) is never written), plus the backward transient: the bias gradient 8,
        # its scaled copy 8 and grad z 16
        "z activations": (1 + 16 + 8 + 32) * 200,
        "attention": 2 * (2 * 4) * 200,  # each block keeps its float bias [B, H, r, r]
        "OPM intermediates": (20 * 4 * 4 * 2 + 20 * 3 * 6) * 4,
    }
    # CPU in fp32: the full pair mode's bias runs on the fused kernel too (models/norm_bias.py)
    cpu = estimate_memory(cfg, 10, 2, training=True, n_params=1000).parts
    assert cpu == train
    # with attention dropout, SDPA's math path keeps the probabilities, the dropout mask and the
    # dropped probabilities per block (3 per head); backward's attention transients (3 per head,
    # 24 bytes) stay below the z transient (32)
    cpu = estimate_memory(ModelConfig.of(**{**cfg_args, "attention_dropout": 0.1}), 10, 2, training=True, n_params=1000).parts
    assert cpu["attention"] == 2 * 3 * 2 * 4 * 200 and cpu["z activations"] == train["z activations"]
    scgpt = estimate_memory(ModelConfig(model="scgpt", d_model=8, nhead=2, nlayers=1, dropout=0.0), 10, 2, n_params=1000).parts
    assert scgpt["m activations"] == (12 * 8 + 2.5 * 32 + 12 * 8) * 20 * 4 and scgpt["attention"] == 0
