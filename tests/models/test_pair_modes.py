"""The pair mode is an engine chosen once: the linear engine never forms z, the full one does."""

import pytest
import torch

from bioformer.errors import BioformerError
from bioformer.models.pair import OuterProductMean, PairBiasAttention
from bioformer.models.pair_modes import PAIR_ENGINES, pair_engine
from tests.models.test_models import V, tiny_bioformer


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (2, 10), generator=g)
    values = torch.randint(0, 51, (2, 10), generator=g).float()
    pm = torch.zeros(2, 10, dtype=torch.bool)
    prior = torch.randint(0, 4, (2, 10, 10), generator=g, dtype=torch.int8)
    return ids, values, pm, prior


def _forbid_z(monkeypatch):
    """Reading a materialised z (the pair bias of z) or writing one (the OPM's forward) raises."""
    def no_z(*args, **kwargs):
        raise AssertionError("z was materialised")

    monkeypatch.setattr(PairBiasAttention, "pair_bias", no_z)
    monkeypatch.setattr(OuterProductMean, "forward", no_z)


def test_linear_engine_never_materialises_z_and_the_full_one_does(monkeypatch):
    ids, values, pm, prior = _batch()
    linear, full = tiny_bioformer(pair_mode="linear"), tiny_bioformer(pair_mode="full")
    assert linear.engine is PAIR_ENGINES["linear"] and full.engine is PAIR_ENGINES["full"]
    _forbid_z(monkeypatch)
    linear(ids, values, pm, prior=prior)["pred"].sum().backward()  # encode, all blocks
    linear.pair_bias_logits(ids, values, pm, prior=prior, block=1)  # a block's pair bias
    with pytest.raises(AssertionError, match="materialised"):  # positive control: full mode forms z
        full(ids, values, pm, prior=prior)


def test_unknown_pair_mode_is_one_clear_error():
    with pytest.raises(BioformerError, match="unknown pair_mode 'sparse'; use one of full, linear"):
        pair_engine("sparse")
