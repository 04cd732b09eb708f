"""Readouts as objects: each is its definition (checked against a direct computation), the
registry finds and lists them, a new one is one registered class usable everywhere at once
(`Run`, `tl`, the CLI, the positive-control table), and a wrong name is one clear error."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import bioformer
from bioformer import Run
from bioformer.cli import main
from bioformer.errors import BioformerError
from bioformer.inference import readouts as ro
from tests.conftest import H5AD


@pytest.fixture(scope="module")
def cells():
    return ad.read_h5ad(H5AD)[:40].copy()


def _one_batch(run: Run, cells, n: int = 6):
    prepared = run.prepare(cells, quiet=True)
    _, batch = next(run._batches([run._sequence(*run._visible(prepared, i)[:2]) for i in range(n)], n))
    return batch, run._model_inputs(batch)


def test_pair_bias_readouts_are_their_definition(runs, cells):
    run = Run.load(runs["bioformer"], device="cpu")
    _, inputs = _one_batch(run, cells)
    with torch.no_grad():
        bias0 = run.model.pair_bias_logits(*inputs, block=0).float()  # [B, H, r, r]
        want = {"block0 mean": bias0.mean(1), "block0 l2": bias0.pow(2).sum(1).sqrt(), "block0 max": bias0.amax(1), "block0 head1": bias0[:, 1],
                "pair_bias": run.model.pair_scores(*inputs)}
        for name, ref in want.items():
            got = ro.get_readout(name, "grn").scores(run.model, inputs, {})
            assert got.shape == ref.shape == (6, inputs[0].shape[1], inputs[0].shape[1])
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(want["block0 l2"], want["block0 mean"])
    # side by side (one pass per block, shared): each candidate equals it computed alone
    with torch.no_grad():
        together = ro.candidate_readouts(run.model, *inputs)
        assert {"block0 l2", "block1 head0"} <= set(together) and "pair_bias" not in together  # no alias
        for name, got in together.items():
            torch.testing.assert_close(got, ro.get_readout(name, "grn").scores(run.model, inputs, {}), atol=0, rtol=0)
    # the default is the last block's signed mean; names are forgiving about the separator
    last = len(run.model.blocks) - 1
    default = run.pair_scores(cells)
    np.testing.assert_allclose(run.pair_scores(cells, readout=f"block{last}.mean").scores, default.scores, atol=1e-6)
    assert default.readout == "pair_bias" and ro.get_readout("block0_l2", "grn").name == "block0 l2"


def test_the_api_and_the_cli_take_and_list_readouts(runs, cells, capsys):
    run = Run.load(runs["bioformer"], device="cpu")
    out = bioformer.tl.embed(cells, run, readout="mean", copy=True)
    np.testing.assert_allclose(out.obsm["X_bioformer"], run.embed(cells, pooling="mean"), atol=1e-6)
    assert out.uns["X_bioformer"]["readout"] == "mean"
    assert not np.allclose(out.obsm["X_bioformer"], run.embed(cells))  # the default (cls) differs
    assert main(["readouts", str(runs["bioformer"])]) == 0
    listed = capsys.readouterr().out
    assert "block1 head1" in listed and 'varp["bioformer_pair_scores"]' in listed and "attention" not in listed


def test_every_listed_readout_of_a_run_runs_with_its_shape(runs, cells):
    for name in ("bioformer", "scgpt"):
        run = Run.load(runs[name], device="cpu")
        listed = run.readouts()
        grn = [r for r, task, _, _ in listed if task == "grn"]
        assert ("attention" in grn) == (name == "scgpt") and ("block1 head1" in grn) == (name == "bioformer")
        for readout in grn:
            assert run.pair_scores(cells[:5].copy(), readout=readout).scores.shape == (len(run.genes),) * 2
        for readout in ("cls", "mean"):
            assert run.embed(cells[:5].copy(), readout=readout).shape == (5, run.config.model.d_model)


@pytest.fixture
def value_product():
    """A toy grn readout registered for one test: [b, i, j] = value_i * value_j."""

    class ValueProduct(ro.PairReadout):
        """value_i * value_j of each pair (a toy)."""

        name = "value_product"

        def scores(self, model, inputs, cache):
            values = inputs[1]
            return values[:, :, None] * values[:, None, :]  # [B, r, r]

    ro.register(ValueProduct)
    yield ValueProduct
    del ro._REGISTRY["value_product"]


def test_a_registered_readout_is_usable_everywhere(runs, cells, value_product, tmp_path, capsys):
    run = Run.load(runs["scgpt"], device="cpu")
    prepared = run.prepare(cells, quiet=True)
    X = prepared.binned.toarray()
    # its per-cell mean over cells holding both genes, with <cls> and pads left out
    want = np.zeros((len(run.genes),) * 2)
    n = np.zeros_like(want)
    for i in range(prepared.n_cells):
        cols, vals, _ = run._visible(prepared, i)
        want[np.ix_(cols, cols)] += np.outer(vals, vals)
        n[np.ix_(cols, cols)] += 1
    assert (X >= 0).all() and n.max() > 1
    want = np.divide(want, n, out=np.zeros_like(want), where=n > 0)
    scores = bioformer.tl.grn(cells, run, readout="value_product")["all"]
    np.testing.assert_allclose(scores.scores, want, rtol=1e-5)
    assert "value_product" in [r.name for r in ro.candidates(run.model)]  # the positive-control table scores it too
    assert main(["readouts"]) == 0 and "value_product" in capsys.readouterr().out
    out = tmp_path / "g.h5ad"
    assert main(["-q", "grn", str(runs["scgpt"]), "--data", str(H5AD), "--out", str(out), "--readout", "value_product", "--no-progress"]) == 0
    assert ad.read_h5ad(out).uns["scgpt_pair_scores"]["readout"] == "value_product"


def test_wrong_readouts_are_one_clear_error(runs, cells, tmp_path, capsys):
    bio, scgpt = Run.load(runs["bioformer"], device="cpu"), Run.load(runs["scgpt"], device="cpu")
    with pytest.raises(BioformerError, match="unknown grn readout 'nope'.*pair_bias"):
        bio.pair_scores(cells, readout="nope")
    with pytest.raises(BioformerError, match="scGPT's"):
        bio.pair_scores(cells, readout="attention")
    with pytest.raises(BioformerError, match="has not"):
        scgpt.pair_scores(cells, readout="block0 l2")
    with pytest.raises(BioformerError, match="blocks 0..1"):
        bio.pair_scores(cells, readout="block7 mean")
    with pytest.raises(BioformerError, match="unknown embed readout"):
        bio.embed(cells, readout="block0 l2")
    out = tmp_path / "e.h5ad"
    assert main(["-q", "embed", str(runs["bioformer"]), "--data", str(H5AD), "--out", str(out), "--readout", "max"]) == 2
    assert "error: unknown embed readout 'max'" in capsys.readouterr().err and not out.exists()
