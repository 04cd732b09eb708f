"""Tiny trained runs shared by the inference tests (trained once per session)."""

from __future__ import annotations

import pytest

from bioformer.training.run import run_training
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A tiny BioFormer (with prior; the default pair mode, and the full mode) and scGPT run on
    the fixture, 1 epoch each."""
    out = {}
    arms = {"bioformer": {}, "bioformer-full": {"model": {"pair_mode": "full"}}, "scgpt": {"model": {"model": "scgpt"}}}
    for name, over in arms.items():
        cfg = tiny_config(tmp_path_factory.mktemp(name), **over)
        cfg.train.epochs = 1
        out[name] = run_training(cfg, quiet=True)[0]
    return out
