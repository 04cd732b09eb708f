"""Linear pair mode: the folded attention equals the same model with z materialised (no LN on z),
forward and backward, with padding, for every switch; on a real fixture batch; under
checkpointing; under bf16; and its pair-bias readout equals the materialised one."""

from __future__ import annotations

import pytest
import torch

import bioformer.models.fused_bias as fused_bias
import bioformer.models.linear_pair as linear_pair
from bioformer.config import ModelConfig
from bioformer.data.prior import pair_codes
from bioformer.errors import BioformerError
from bioformer.models import BioFormer, build_model
from tests.models.test_models import V, batch, tiny_bioformer


def sparse_prior(prior: torch.Tensor, frac: float = 0.15, seed: int = 1) -> torch.Tensor:
    """Keep edge codes on a few rows only (TFs are few): the slot path's realistic case."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.rand(prior.shape[:2], generator=g) < frac  # [B, r]
    return (prior * rows[:, :, None]).to(torch.int8)


def linear_model(**kw) -> BioFormer:
    model = tiny_bioformer(pair_mode="linear", **kw)
    for p in model.parameters():  # every parameter matters (gates, biases, scales start constant)
        p.data.normal_(0, 0.3)
    return model


def assert_same_forward_and_backward(model: BioFormer, gene_ids, values, pm, prior) -> None:
    out = model(gene_ids, values, pm, prior=prior)["pred"]
    ref = model.forward_materialised(gene_ids, values, pm, prior=prior)["pred"]
    keep = ~pm
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)
    w = torch.randn_like(out) * keep
    model.zero_grad()
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (ref * w).sum().backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # the OPM output biases only shift z by a constant per head, which cancels in the softmax:
    # the linear path leaves them out, and the reference's gradient for them is zero
    assert grads.keys() <= ref_grads.keys()
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads.get(n, torch.zeros_like(g)), g, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize(
    "use_prior,opm,gating,prior_path,chunk,direction",
    [
        (True, True, True, "dense", None, "both"),
        (True, True, True, "chunked", None, "both"),
        (True, True, False, "dense", 4, "both"),
        (True, True, True, "chunked", 4, "outgoing"),
        (True, False, True, "dense", None, "outgoing"),
        (False, True, True, None, None, "both"),
        (False, True, False, None, 5, "both"),
    ],
)
@pytest.mark.parametrize("split", [False, True])  # the prior split off the fused kernel (models/fused_bias.py) or a dense mask
def test_linear_mode_equals_materialised_reference(monkeypatch, use_prior, opm, gating, prior_path, chunk, direction, split):
    if split:
        monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 1)
        monkeypatch.setattr(fused_bias, "SPLIT_MAX_SHARE", 1.0)
    if prior_path == "chunked":  # the prior bias built per chunk of 3 query rows (chunk_size None)
        monkeypatch.setattr(linear_pair, "BIAS_CHUNK_ELEMENTS", 3 * 4 * 11 * 3)
    model = linear_model(use_prior=use_prior, opm=opm, gating=gating, attention_chunk_size=chunk,
                         prior_direction=direction).eval()
    if use_prior:  # a prior that visibly moves the prediction (checked at the end)
        model.prior_encoder.weight.data.mul_(10)
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior, frac=0.3) if use_prior else None
    if use_prior:  # regulators' rows and (both directions) their columns carry the codes
        codes = linear_pair.PriorCodes.of(pair_codes(prior, direction), model.prior_encoder.weight)
        assert (codes.col_codes is None) == (direction == "outgoing")
        assert 1 < codes.sources.shape[1] < prior.shape[1]
    assert_same_forward_and_backward(model, gene_ids, values, pm, prior)
    # the prior really enters: another prior changes the prediction
    if use_prior:
        other = model(gene_ids, values, pm, prior=torch.zeros_like(prior))["pred"]
        assert (other - model(gene_ids, values, pm, prior=prior)["pred"]).abs().max() > 1e-4  # >> the tolerance


def test_prior_bias_is_the_code_lookup_for_every_pair_and_chunk():
    """The gathered rows and columns scattered back give exactly delta[code(i, j)] for all pairs,
    whole or in chunks, with cells of different regulator counts (padding slots)."""
    g = torch.Generator().manual_seed(0)
    B, r, H = 3, 13, 2
    raw = torch.randint(0, 4, (B, r, r), generator=g, dtype=torch.int8)
    raw *= (torch.rand(B, r, 1, generator=g) < torch.tensor([0.1, 0.3, 0.0]).view(B, 1, 1)).to(torch.int8)
    raw[2] = 0
    raw[2, 4, 7] = 2  # one edge in the last cell
    for direction in ("both", "outgoing"):
        pair = pair_codes(raw, direction)
        prior = linear_pair.PriorCodes.of(pair, torch.randn(16, 4))
        delta = torch.randn(16, H)
        delta[0] = 0
        want = delta[pair.long()].permute(0, 3, 1, 2)  # [B, H, r, r]
        no_pads = torch.zeros(B, r, dtype=torch.bool)
        torch.testing.assert_close(prior.mask(delta, 0, r, no_pads), want, rtol=0, atol=0)
        for chunk in (1, 4, 5):
            got = torch.cat([prior.mask(delta, s, min(s + chunk, r), no_pads) for s in range(0, r, chunk)], dim=2)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        pads = no_pads.clone()
        pads[1, -2:] = True
        masked = prior.mask(delta, 0, r, pads)
        assert (masked[1, :, :, -2:] == torch.finfo(masked.dtype).min).all()
        torch.testing.assert_close(masked[:, :, :, :-2], want[:, :, :, :-2], rtol=0, atol=0)


@pytest.mark.parametrize("direction", ["both", "outgoing"])
def test_training_with_dropout_equals_reference_under_the_same_rng(direction):
    """Training mode, attention dropout on (CPU's math path, v not widened): the same random
    stream gives the same dropout masks in both paths, so outputs and gradients still agree."""
    model = linear_model(dropout=0.2, attention_dropout=0.2, prior_direction=direction).train()
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior)
    keep = ~pm
    w = torch.randn(pm.shape) * keep
    results = []
    for forward in (model, model.forward_materialised):
        torch.manual_seed(5)
        out = forward(gene_ids, values, pm, prior=prior)["pred"]
        model.zero_grad()
        (out * w).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads.get(n, torch.zeros_like(g)), g, rtol=1e-4, atol=1e-5, msg=n)


def test_linear_mode_without_ln_differs_from_full_mode():
    """The reference is not the full model: same weights, LN on z -> different numbers."""
    model = linear_model().eval()
    full = tiny_bioformer(pair_mode="full").eval()
    full.load_state_dict({k: v for k, v in model.state_dict().items() if "z_scale" not in k}, strict=False)
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior)
    a = model(gene_ids, values, pm, prior=prior)["pred"]
    b = full(gene_ids, values, pm, prior=prior)["pred"]
    assert (a - b).abs().max() > 1e-3


def test_linear_mode_on_a_real_fixture_batch(tmp_path):
    from bioformer.data.pipeline import prepare_data
    from bioformer.data.tokenize import collate
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    data = prepare_data(cfg.data, seed=0, quiet=True)
    ds = data.dataset("train")
    b = collate([ds[i] for i in range(6)])
    gene_ids, values, pm = b["gene_ids"], b["values"], b["padding_mask"]
    prior = data.prior.prior_for(gene_ids)
    assert pm.any() and (prior != 0).any()  # padding and real edges in this batch
    torch.manual_seed(0)
    model = build_model(ModelConfig.of(d_model=16, nhead=2, nlayers=3, d_z=4, d_opm=4, dropout=0.0, pair_mode="linear"), len(data.vocab), use_prior=True)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    assert_same_forward_and_backward(model.eval(), gene_ids, values, pm, prior)


@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])  # split fused prior path / math path
def test_checkpointing_is_exact_in_linear_mode(monkeypatch, attention_dropout):
    monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 1)
    monkeypatch.setattr(fused_bias, "SPLIT_MAX_SHARE", 1.0)
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior)
    grads = []
    for ckpt in (False, True):
        model = linear_model(checkpoint_blocks=ckpt, dropout=0.1, attention_dropout=attention_dropout, attention_chunk_size=4).train()
        torch.manual_seed(3)
        out = model(gene_ids, values, pm, prior=prior)["pred"]
        (out[~pm] ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_autocast_stays_close_to_fp32():
    model = linear_model().eval()
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior)
    ref = model(gene_ids, values, pm, prior=prior)["pred"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(gene_ids, values, pm, prior=prior)["pred"].float()
    keep = ~pm
    assert torch.isfinite(out).all()
    err = (out - ref)[keep].abs().max() / ref[keep].abs().max()
    assert err < 0.05, float(err)


@pytest.mark.parametrize("pair_mode", ["full", "linear", "linear-split"])
def test_pair_bias_logits_equal_the_materialised_bias(pair_mode, monkeypatch):
    """[B, H, r, r]: the last block's Linear(norm(z_L)) with z_L formed explicitly. With the
    split prior path the trunk runs regulators first: the readout is back in the batch's order."""
    if pair_mode == "linear-split":
        monkeypatch.setattr(fused_bias, "SPLIT_MIN_GENES", 1)
        monkeypatch.setattr(fused_bias, "SPLIT_MAX_SHARE", 1.0)
    model = linear_model() if pair_mode.startswith("linear") else tiny_bioformer()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    model.eval()
    gene_ids, values, pm, prior = batch()
    prior = sparse_prior(prior)
    with torch.no_grad():
        got = model.pair_bias_logits(gene_ids, values, pm, prior=prior, chunk_size=4)
        m = model.gene_encoder(gene_ids) + model.value_encoder(values)
        z = model.initial_z(gene_ids, prior)
        for block in model.blocks[:-1]:
            z_in = z
            m = m + block.attention(m, z_in, pm)
            m = m + block.transition(m)
            z = block.outer_product_mean(m, pm, z_in)
        last = model.blocks[-1].attention
        want = last.bias_proj(last.normalise_z(z)).permute(0, 3, 1, 2)  # [B, H, r, r]
    B, r = gene_ids.shape
    assert got.shape == (B, model.blocks[-1].attention.nhead, r, r)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pair_mode_config_and_errors(capsys):
    cfg = ModelConfig.of(d_model=16, nhead=2, nlayers=2, d_z=4, d_opm=4, pair_mode="linear")
    model = build_model(cfg, V)
    assert model.pair_mode == "linear"
    assert all(b.attention.norm_z is None and b.attention.z_scale is not None for b in model.blocks)
    with pytest.raises(BioformerError, match="pair_mode"):
        build_model(ModelConfig.of(pair_mode="sparse"), V)
    from bioformer.cli import main
    from tests.conftest import H5AD

    for argv in (["train", "--data", str(H5AD)], ["estimate", "--n-genes", "64"]):  # before any data is read
        assert main(["-q", *argv, "--pair-mode", "sparse"]) == 2
        err = capsys.readouterr().err
        assert "error: unknown pair_mode 'sparse'; use one of full, linear" in err and "Traceback" not in err
    no_bias = tiny_bioformer(pair_bias=False)
    gene_ids, values, pm, _ = batch()
    with pytest.raises(BioformerError, match="no pair bias"):
        no_bias.pair_bias_logits(gene_ids, values, pm)


def test_train_and_evaluate_in_linear_mode_from_the_cli(tmp_path, capsys):
    """`--pair-mode linear` trains through the one loop; the scale on z learns; evaluate reloads it."""
    import json

    from safetensors.torch import load_file

    from bioformer.cli import main
    from tests.conftest import H5AD, PRIOR_CSV

    out = tmp_path / "run"
    argv = ["-q", "train", "--data", str(H5AD), "--prior", str(PRIOR_CSV), "--n-hvg", "48", "--max-prior-genes", "16",
            "--max-len", "32", "--d-model", "16", "--nhead", "2", "--d-z", "4", "--d-opm", "4", "--epochs", "1",
            "--pair-mode", "linear", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    weights = load_file(str(out / "model.safetensors"))
    assert "blocks.0.attention.z_scale" in weights and "blocks.0.attention.norm_z.weight" not in weights
    assert not torch.equal(weights["blocks.0.attention.z_scale"], torch.ones(4))  # gradients reach it
    summary = json.loads((out / "summary.json").read_text())
    assert main(["-q", "evaluate", str(out)]) == 0 and "model (test)" in capsys.readouterr().out
    from bioformer.training.evaluate import evaluate_run

    assert evaluate_run(out, quiet=True)[0]["mse"] == summary["test"]["model"]["mse"]  # the reloaded model is the trained one


@pytest.mark.parametrize("use_prior", [True, False])
def test_every_parameter_gets_a_gradient_in_linear_mode(use_prior):
    """DistributedDataParallel (without find_unused_parameters) needs a gradient for every
    parameter: linear mode has no OPM output bias and no constant pair bias (both would cancel in
    the softmax), and a batch without any prior edge still reaches the prior embedding."""
    import itertools

    gene_ids, values, pm, prior = batch()
    for opm, gating, nlayers, edges in itertools.product([True, False], [True, False], [1, 2], [True, False]):
        model = tiny_bioformer(pair_mode="linear", use_prior=use_prior, opm=opm, gating=gating, nlayers=nlayers)
        codes = sparse_prior(prior) if edges else torch.zeros_like(prior, dtype=torch.int8)
        out = model(gene_ids, values, pm, prior=codes if use_prior else None)["pred"]
        out[~pm].pow(2).mean().backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]  # DDP reduces only these
        assert not unused, (opm, gating, nlayers, edges, unused)
