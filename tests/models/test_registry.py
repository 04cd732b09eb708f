"""The model registry: a third model registered from outside `bioformer/` trains, evaluates,
estimates and runs in a study without any change to the package (everything asks the registry)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from torch import nn

from bioformer.cli import main
from bioformer.config import ModelConfig, prior_enabled
from bioformer.errors import BioformerError
from bioformer.experiments import studies
from bioformer.experiments.plan import plan_study
from bioformer.experiments.suite import run_study
from bioformer.models import (
    MODELS,
    MaskedValueModel,
    build_model,
    model_class,
    register_model,
    uses_prior,
)
from bioformer.models.layers import ExprDecoder, GeneEncoder, ValueEncoder
from tests.conftest import H5AD, PRIOR_CSV


class TokenMLP(MaskedValueModel):
    """No attention at all: each token's value from its own gene + value embedding."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = 0, use_prior: bool = False) -> None:
        super().__init__()
        self.gene_encoder = GeneEncoder(vocab_size, cfg.d_model, pad_id)
        self.value_encoder = ValueEncoder(cfg.d_model, cfg.dropout)
        self.mix = nn.Linear(cfg.d_model, cfg.d_model)
        self.decoder = ExprDecoder(cfg.d_model, cfg.explicit_zero_prob)

    def forward(self, gene_ids, values, padding_mask, prior=None):
        h = self.gene_encoder(gene_ids) + self.value_encoder(values)  # [B, L, c]
        return self.decoder(torch.relu(self.mix(h)))


@pytest.fixture
def toy_model():
    register_model("token-mlp")(TokenMLP)
    yield "token-mlp"
    MODELS.pop("token-mlp")


def test_the_registry_answers_what_models_need():
    bio, sc = ModelConfig(model="bioformer"), ModelConfig(model="scgpt")
    assert uses_prior(bio, "collectri") and not uses_prior(bio, "none") and not uses_prior(sc, "collectri")
    assert not uses_prior(bio.replace(pair_bias=False), "collectri")  # nothing reads z
    assert build_model(bio, 30, use_prior=True).needs_prior and not build_model(bio, 30, use_prior=False).needs_prior
    assert [prior_enabled(p) for p in (None, "", "none", "None", "collectri", "x.csv")] == [False, False, False, False, True, True]
    with pytest.raises(BioformerError, match="--model must be bioformer or scgpt, got 'gpt5'"):
        model_class("gpt5")


def test_a_registered_toy_model_trains_evaluates_estimates_and_runs_a_study(toy_model, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-q", "train", "--model", toy_model, "--data", str(H5AD), "--prior", str(PRIOR_CSV), "--n-hvg", "48",
            "--max-prior-genes", "16", "--max-len", "32", "--d-model", "16", "--nhead", "2", "--epochs", "6",
            "--lr", "1e-2", "--warmup-steps", "5", "--batch-size", "16", "--no-progress", "--num-threads", "1", "--out", str(run)]
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == toy_model and summary["uses_prior"] is False
    assert summary["test_mse"] < summary["floor_const_mse"]  # it learnt something
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["model"]["mse"] == pytest.approx(summary["test"]["model"]["mse"], rel=1e-6)
    assert main(["-q", "estimate", "--model", toy_model, "--d-model", "16", "--nhead", "2", "--n-genes", "64"]) == 0
    assert "token-mlp: " in capsys.readouterr().out

    study = studies.Study("toy-vs-scgpt", "a toy against scGPT", lambda base, prior, vocab, profile: [
        studies.Arm("toy", dataclasses.replace(base, model=toy_model)), studies.Arm("scgpt", dataclasses.replace(base, model="scgpt"))],
        lambda names: [("toy", "scgpt")])
    studies.STUDIES[study.name] = study
    try:
        overrides = {"data": {"data": str(H5AD), "max_cells": None, "n_hvg": 48, "max_prior_genes": 16, "prior": str(PRIOR_CSV), "max_len": 32},
                     "train": {"num_threads": 1}}
        out = run_study(plan_study(study.name, "quick", out=tmp_path / "study", seeds=2, epochs=1, overrides=overrides))
    finally:
        studies.STUDIES.pop(study.name)
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["arm"]) == ["scgpt", "scgpt", "toy", "toy"] and df["test_mse"].notna().all()
    assert "| toy |" in (out / "summary.md").read_text()  # parameter breakdown and tables name the new model
