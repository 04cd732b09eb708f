"""z from the prior: both edge directions reach z, and every arm of a seed starts from the same
weights in the modules it shares (prior vs zero z vs one-direction vs scGPT)."""

from __future__ import annotations

import pytest
import torch

from bioformer.config import ModelConfig
from bioformer.data.prior import ACTIVATES, REPRESSES
from bioformer.errors import BioformerError
from bioformer.models import build_model

V = 30
CFG = ModelConfig.of(d_model=16, nhead=2, nlayers=2, d_z=4, d_opm=4, dropout=0.0)


def _build(seed: int, use_prior: bool, **changes):
    torch.manual_seed(seed)
    cfg = CFG.replace(**changes)
    return build_model(cfg, V, use_prior=use_prior)


def _edge_batch():
    """gene 5 (a TF) activates gene 7 and represses gene 9; pair (7, 9) has no edge."""
    gene_ids = torch.tensor([[1, 5, 7, 9]])  # [B=1, r=4]: <cls>, TF, targets
    codes = torch.zeros(1, 4, 4, dtype=torch.int8)
    codes[0, 1, 2] = ACTIVATES
    codes[0, 1, 3] = REPRESSES
    return gene_ids, codes


def test_both_directions_inform_the_target_row():
    model = _build(0, True)
    gene_ids, codes = _edge_batch()
    z = model.initial_z(gene_ids, codes)[0]  # [r, r, c_z]
    none = z[2, 3]  # target-target: no edge either way
    assert torch.equal(z[0, 1], none)
    for tf, target in ((1, 2), (1, 3)):
        assert not torch.allclose(z[tf, target], none)  # the TF's row sees its target
        assert not torch.allclose(z[target, tf], none)  # the target's row sees its regulator
        assert not torch.allclose(z[target, tf], z[tf, target])  # and knows the direction
    assert not torch.allclose(z[2, 1], z[3, 1])  # ... and the sign
    # the coded path (what forward uses) is the same z
    coded = model.initial_z_coded(codes)
    torch.testing.assert_close(coded.materialise(1, 4)[0], z)


def test_one_direction_coding_stays_selectable():
    model = _build(0, True, prior_direction="outgoing")
    gene_ids, codes = _edge_batch()
    z = model.initial_z(gene_ids, codes)[0]
    assert not torch.allclose(z[1, 2], z[2, 3])
    assert torch.equal(z[2, 1], z[2, 3])  # the target's row says "no edge" towards its TF
    with pytest.raises(BioformerError, match="prior_direction"):
        _build(0, True, prior_direction="sideways")


@pytest.mark.parametrize("pair_mode", ["full", "linear"])
def test_prior_and_zero_z_arms_start_from_identical_weights(pair_mode):
    """Every module they share starts equal. In the linear mode a zero z is constant before the
    first OPM, so the zero-z arm has no first-block pair bias (it would only shift the logits by
    a constant over keys); that is the only difference."""
    prior = _build(7, True, pair_mode=pair_mode).state_dict()
    zero = _build(7, False, pair_mode=pair_mode).state_dict()
    one_dir = _build(7, True, pair_mode=pair_mode, prior_direction="outgoing").state_dict()
    assert prior.keys() == one_dir.keys()
    only_prior = {"blocks.0.attention.z_scale", "blocks.0.attention.bias_proj.weight"} if pair_mode == "linear" else set()
    assert set(prior) - set(zero) == only_prior and set(zero) <= set(prior)
    for k in zero:
        assert torch.equal(prior[k], zero[k]) and torch.equal(prior[k], one_dir[k]), k
    other = _build(8, True, pair_mode=pair_mode).state_dict()
    assert not torch.equal(prior["prior_encoder.weight"], other["prior_encoder.weight"])  # own generator, seeded
    assert not torch.equal(prior["gene_encoder.embedding.weight"], other["gene_encoder.embedding.weight"])


def test_zero_z_model_ignores_the_prior_embedding():
    model = _build(0, False)
    gene_ids, codes = _edge_batch()
    assert not model.needs_prior and not model.prior_encoder.weight.requires_grad  # held: no optimizer step, no DDP gradient
    assert torch.count_nonzero(model.initial_z(gene_ids, None)) == 0
    values = torch.tensor([[0.0, 3.0, -1.0, 5.0]])
    pad = torch.zeros(1, 4, dtype=torch.bool)
    before = model(gene_ids, values, pad)["pred"]
    with torch.no_grad():
        model.prior_encoder.weight.mul_(10)
    torch.testing.assert_close(model(gene_ids, values, pad)["pred"], before)


def test_scgpt_is_init_matched_in_shared_modules():
    bio = _build(3, True).state_dict()
    scgpt = _build(3, False, model="scgpt").state_dict()
    shared = [k for k in scgpt if k.startswith(("gene_encoder.", "value_encoder.", "decoder."))]
    assert len(shared) >= 8
    for k in shared:
        assert torch.equal(bio[k], scgpt[k]), k
