"""Whole-model properties: BioFormer equals its literal reference and, without pair path, a
pre-LN transformer layer; padding never leaks; checkpointing is exact; bf16 stays close."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bioformer.config import ModelConfig
from bioformer.models import BioFormer, ScGPT
from bioformer.models.bioformer import BioFormerBlock
from tests.reference_impl import naive_outer_product_mean, naive_pair_bias_attention

V, B, R = 40, 3, 11


def batch(r: int = R, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gene_ids = torch.randint(2, V, (B, r), generator=g)
    values = torch.randint(0, 51, (B, r), generator=g).float()
    values[0, 2] = -1.0  # a masked position
    padding_mask = torch.zeros(B, r, dtype=torch.bool)
    padding_mask[1, r - 3:] = True
    gene_ids[padding_mask] = 0
    values[padding_mask] = -2.0
    prior = torch.randint(0, 4, (B, r, r), generator=g)
    return gene_ids, values, padding_mask, prior


def tiny_bioformer(**kw) -> BioFormer:
    torch.manual_seed(0)
    args = dict(d_model=16, nhead=4, nlayers=3, ff_factor=2, dropout=0.0, d_z=6, d_opm=5)
    use_prior = kw.pop("use_prior", True)
    args.update(kw)
    return BioFormer.from_config(ModelConfig.of(model="bioformer", **args), V, use_prior=use_prior)


def reference_forward(model: BioFormer, gene_ids, values, padding_mask, prior):
    """The BioFormer mathematics with a materialised z, naive OPM and explicit softmax."""
    m = model.gene_encoder(gene_ids) + model.value_encoder(values)
    z = model.initial_z(gene_ids, prior)
    for block in model.blocks:
        m = m + naive_pair_bias_attention(block.attention, m, z, padding_mask)
        m = m + block.transition(m)
        if block.outer_product_mean is not None:
            z = z + naive_outer_product_mean(block.outer_product_mean, m, padding_mask)
    return model.decoder(model.norm(m))["pred"]


@pytest.mark.parametrize("pair_mode", ["full", "linear"])
@pytest.mark.parametrize("use_prior", [True, False])
def test_bioformer_equals_reference(use_prior, pair_mode):
    model = tiny_bioformer(use_prior=use_prior, pair_mode=pair_mode).eval()
    for p in model.parameters():  # make every parameter matter (gates, biases start constant)
        p.data.normal_(0, 0.3)
    gene_ids, values, pm, prior = batch()
    prior = prior if use_prior else None
    out = model(gene_ids, values, pm, prior=prior)["pred"]
    ref = reference_forward(model, gene_ids, values, pm, prior)
    keep = ~pm
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)
    w = torch.randn_like(out) * keep
    (out * w).sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (ref * w).sum().backward()
    for n, p in model.named_parameters():
        if n in g:
            torch.testing.assert_close(g[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_block_without_pair_path_is_a_pre_ln_transformer_layer():
    d, H, ff = 16, 4, 2
    torch.manual_seed(1)
    block = BioFormerBlock(d, H, d_z=4, d_opm=4, ff_factor=ff, dropout=0.0, pair_bias=False, gating=False, update_z=False).eval()
    layer = nn.TransformerEncoderLayer(d, H, dim_feedforward=ff * d, dropout=0.0, activation="relu", batch_first=True, norm_first=True).eval()
    a, t = block.attention, block.transition
    with torch.no_grad():
        a.in_proj.weight.copy_(layer.self_attn.in_proj_weight)
        a.in_proj.bias.copy_(layer.self_attn.in_proj_bias)
        a.out_proj.weight.copy_(layer.self_attn.out_proj.weight)
        a.out_proj.bias.copy_(layer.self_attn.out_proj.bias)
        for ours, theirs in ((a.norm_m, layer.norm1), (t.norm, layer.norm2), (t.linear1, layer.linear1), (t.linear2, layer.linear2)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    _, _, pm, _ = batch()
    m = torch.randn(B, R, d)
    out, z = block(m, None, pm)
    ref = layer(m, src_key_padding_mask=pm)
    assert z is None
    keep = ~pm
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_kind", ["bioformer", "bioformer-noprior", "scgpt"])
def test_padding_never_changes_real_positions(model_kind):
    torch.manual_seed(2)
    if model_kind == "scgpt":
        model = ScGPT.from_config(ModelConfig(model="scgpt", d_model=16, nhead=4, nlayers=2, dropout=0.0), V).eval()
    else:
        model = tiny_bioformer(use_prior=model_kind == "bioformer").eval()
    gene_ids, values, pm, prior = batch()
    out = model(gene_ids, values, pm, prior=prior if model.needs_prior else None)["pred"]
    assert out.shape == (B, R)
    extra = 5  # append pad positions
    g2 = torch.cat([gene_ids, torch.zeros(B, extra, dtype=gene_ids.dtype)], 1)
    v2 = torch.cat([values, torch.full((B, extra), -2.0)], 1)
    pm2 = torch.cat([pm, torch.ones(B, extra, dtype=torch.bool)], 1)
    p2 = torch.zeros(B, R + extra, R + extra, dtype=prior.dtype)
    p2[:, :R, :R] = prior
    p2[:, R:, :] = torch.randint(0, 4, (B, extra, R + extra))  # codes at pads must not matter either
    out2 = model(g2, v2, pm2, prior=p2 if model.needs_prior else None)["pred"]
    torch.testing.assert_close(out2[:, :R][~pm], out[~pm], rtol=1e-5, atol=1e-5)


def test_checkpointing_gives_exactly_equal_loss_and_grads():
    gene_ids, values, pm, prior = batch()
    results = []
    for ckpt in (False, True):
        model = tiny_bioformer(checkpoint_blocks=ckpt, dropout=0.1).train()
        torch.manual_seed(3)  # same dropout draws (checkpoint replays the RNG state)
        loss = model(gene_ids, values, pm, prior=prior)["pred"][~pm].pow(2).mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n


def test_cpu_bf16_autocast_close_to_fp32():
    """bf16 autocast (8-bit mantissa): predictions within 5% of their scale, loss within 5%."""
    model = tiny_bioformer().eval()
    gene_ids, values, pm, prior = batch()
    ref = model(gene_ids, values, pm, prior=prior)["pred"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(gene_ids, values, pm, prior=prior)["pred"].float()
    keep = ~pm
    scale = ref[keep].abs().max()
    assert ((out - ref)[keep].abs().max() / scale).item() < 0.05
    torch.testing.assert_close(out[keep].pow(2).mean(), ref[keep].pow(2).mean(), rtol=0.05, atol=0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(gene_ids, values, pm, prior=prior)["pred"].float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_scgpt_shapes_and_zero_head():
    model = ScGPT.from_config(ModelConfig(model="scgpt", d_model=16, nhead=4, nlayers=2, dropout=0.0, explicit_zero_prob=True), V).eval()
    gene_ids, values, pm, _ = batch()
    out = model(gene_ids, values, pm)
    assert out["pred"].shape == (B, R) and out["zero_logit"].shape == (B, R)
    assert not model.needs_prior


def test_bioformer_needs_prior_and_switches():
    gene_ids, values, pm, prior = batch()
    model = tiny_bioformer()
    assert model.needs_prior
    with pytest.raises(ValueError, match="prior"):
        model(gene_ids, values, pm)
    assert not tiny_bioformer(use_prior=False).needs_prior
    plain = tiny_bioformer(pair_bias=False, opm=False)
    assert not plain.needs_prior and all(b.outer_product_mean is None for b in plain.blocks)
    assert plain(gene_ids, values, pm)["pred"].shape == (B, R)
    last_has_no_opm = tiny_bioformer()
    assert last_has_no_opm.blocks[-1].outer_product_mean is None
    assert last_has_no_opm.blocks[0].outer_product_mean is not None
