"""Sizing: equal total parameters within 2%, equal attention + transition, honest breakdowns."""

import dataclasses

import pytest

from bioformer.config import ModelConfig
from bioformer.experiments.sizing import (
    CATEGORIES,
    attention_transition_params,
    format_breakdown,
    match_total_params,
    nearest_d_model,
    parameter_breakdown,
    same_attention,
)
from bioformer.models import build_model
from bioformer.models import count_config_parameters as count_parameters


@pytest.mark.parametrize("vocab", [103, 515])
@pytest.mark.parametrize("nlayers", [2, 4, 8])
def test_same_params_within_two_percent(vocab, nlayers):
    ref = ModelConfig(model="scgpt", d_model=64, nhead=4, nlayers=nlayers)
    bio = match_total_params(ref, ModelConfig(model="bioformer", nlayers=nlayers), vocab, tol=0.02)
    assert bio.model == "bioformer" and bio.nlayers == nlayers and bio.d_model % bio.nhead == 0
    n_ref, n_bio = count_parameters(ref, vocab, use_prior=False), count_parameters(bio, vocab)
    assert abs(n_bio - n_ref) / n_ref <= 0.02
    assert bio.d_model < ref.d_model  # the pair path and gate cost BioFormer width


@pytest.mark.parametrize("template", [ModelConfig(model="scgpt", nhead=4), ModelConfig.of(nhead=2, nlayers=3, d_z=4, d_opm=4, pair_mode="linear")])
def test_nearest_d_model_is_the_brute_force_nearest(template):
    """The one equal-parameter search against the obvious reference: every multiple of nhead."""
    vocab, target = 97, count_parameters(ModelConfig(model="scgpt", d_model=40, nhead=4), 97, use_prior=False)
    counts = {d: count_parameters(template.replace(d_model=d), vocab) for d in range(template.nhead, 129, template.nhead)}
    best = min(counts, key=lambda d: abs(counts[d] - target))
    d_model, err = nearest_d_model(template, target, vocab, max_d_model=128)
    assert d_model == best and err == pytest.approx((counts[best] - target) / target)


def test_same_params_small_quick_sizes():
    ref = ModelConfig.of(model="scgpt", d_model=16, nhead=2, d_z=4, d_opm=4)
    bio = match_total_params(ref, dataclasses.replace(ref, model="bioformer"), 131)
    assert abs(count_parameters(bio, 131) - count_parameters(ref, 131)) / count_parameters(ref, 131) <= 0.02


def test_same_attention_only_pair_path_differs():
    ref = ModelConfig(model="scgpt", d_model=32, nhead=4, nlayers=3, ff_factor=1)
    bio = same_attention(ref, ModelConfig.of(model="bioformer", d_z=8, d_opm=8))
    a, b = parameter_breakdown(ref, 200, use_prior=False), parameter_breakdown(bio, 200)
    assert attention_transition_params(ref, 200) == attention_transition_params(bio, 200)
    assert a["attention"] == b["attention"] and a["transition"] == b["transition"]
    assert a["embeddings"] == b["embeddings"]
    assert a["pair_path"] == 0 < b["pair_path"]
    assert b["decoder"] - a["decoder"] == 2 * ref.d_model  # BioFormer's final pre-LN LayerNorm
    # without the pair path it is the same size as scGPT up to that LayerNorm
    plain = bio.replace(pair_bias=False, opm=False)
    assert count_parameters(plain, 200) == count_parameters(ref, 200) + 2 * ref.d_model


@pytest.mark.parametrize("cfg", [ModelConfig(model="scgpt"), ModelConfig(model="bioformer"), ModelConfig.of(model="bioformer", gating=False, opm=False)])
def test_breakdown_sums_to_the_real_model(cfg):
    b = parameter_breakdown(cfg, 77)
    real = sum(p.numel() for p in build_model(cfg, 77).parameters())
    assert b["total"] == real == sum(b[c] for c in CATEGORIES)


def test_format_breakdown_has_a_row_per_model():
    table = format_breakdown({"scgpt": (ModelConfig(model="scgpt"), False), "bioformer": (ModelConfig(), True)}, 50)
    lines = table.splitlines()
    assert len(lines) == 4 and "pair_path" in lines[0] and lines[2].startswith("| scgpt")
