"""Shared fixtures: a small real PBMC3k subset (see scripts/make_fixture.py) and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
H5AD = FIXTURES / "pbmc3k_small.h5ad"
PRIOR_CSV = FIXTURES / "prior_edges.csv"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache; tests that need the real download set their own."""
    monkeypatch.setenv("BIOFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_config(tmp_path: Path, **overrides) -> RunConfig:
    """A config that trains in seconds on the fixture."""
    cfg = RunConfig(
        data=DataConfig(data=str(H5AD), n_hvg=64, genes="hvg+prior", max_prior_genes=32, prior=str(PRIOR_CSV), max_len=48),
        model=ModelConfig.of(d_model=16, nhead=2, nlayers=2, d_z=4, d_opm=4, dropout=0.0),
        train=TrainConfig(epochs=2, batch_size=16, warmup_steps=5, progress=False, num_threads=1),
        out=str(tmp_path / "run"),
    )
    for section, values in overrides.items():
        if section == "model":  # family fields (pair_bias, d_z, ...) live in their section
            cfg.model = cfg.model.replace(**values)
            continue
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    return cfg
