"""Run: loading, determinism, embeddings, imputation and pair scores against direct references."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from bioformer import Run
from bioformer.data.preprocess import bins_to_values
from bioformer.data.prior import pair_codes
from bioformer.errors import BioformerError
from bioformer.training.run import run_training
from tests.conftest import H5AD, tiny_config


@pytest.fixture(scope="module")
def cells():
    return ad.read_h5ad(H5AD)[:60].copy()


def _inputs(run: Run, cells, n: int = 4):
    prepared = run.prepare(cells, quiet=True)
    seqs = [run._sequence(*run._visible(prepared, i)[:2]) for i in range(n)]
    idx, batch = next(run._batches(seqs, n))  # sorted by length: put cells back in order
    batch = {k: v[np.argsort(idx)] for k, v in batch.items()}
    return batch, run._model_inputs(batch)


@pytest.mark.parametrize("name", ["bioformer", "scgpt"])
def test_load_restores_the_trained_model(runs, name):
    run = Run.load(runs[name], device="cpu")
    assert run.config.model.model == name
    assert (run.prior is not None) == (name == "bioformer")
    from safetensors.torch import load_file

    saved = load_file(str(runs[name] / "model.safetensors"))
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not run.model.training


def test_loaded_prior_is_the_training_prior_without_heldout_edges(runs):
    """z at inference starts as in training: the edges held out for GRN scoring stay out of it."""
    from bioformer.data.pipeline import prepare_data

    run = Run.load(runs["bioformer"], device="cpu")
    held = pd.read_csv(runs["bioformer"] / "heldout_edges.csv")
    t2i = run.vocab.token_to_id
    keys = set(run.prior.keys.tolist())
    held_keys = {t2i[s] * run.prior.vocab_size + t2i[t] for s, t in zip(held["source"], held["target"], strict=True)}
    assert held_keys and not (held_keys & keys)
    trained = prepare_data(run.config.data, seed=run.config.train.seed, gene_list=run.genes, heldout_edges=held, quiet=True).prior
    assert torch.equal(trained.keys, run.prior.keys) and torch.equal(trained.codes, run.prior.codes)


@pytest.mark.parametrize("name", ["bioformer", "scgpt"])
def test_forward_is_decoder_of_encode(runs, cells, name):
    run = Run.load(runs[name], device="cpu")
    _, args = _inputs(run, cells)
    with torch.no_grad():
        out = run.model(*args)["pred"]
        ref = run.model.decoder(run.model.encode(*args))["pred"]
    assert torch.equal(out, ref)


def test_embedding_batch_size_order_and_subsampling_do_not_matter(runs, cells):
    run = Run.load(runs["bioformer"], device="cpu")
    assert (np.diff(run.prepare(cells, quiet=True).binned.indptr) > run.max_genes).any()  # long cells get subsampled
    e1 = run.embed(cells, batch_size=1)
    e64 = run.embed(cells, batch_size=64)
    assert e1.shape == (cells.n_obs, run.config.model.d_model)
    np.testing.assert_allclose(e1, e64, atol=1e-5)
    assert run.batch_size() == min(512, 2**22 // run.config.data.max_len**2)  # the default: a gene-pair budget (full-mode z)
    np.testing.assert_allclose(run.embed(cells), e64, atol=1e-5)
    perm = np.random.default_rng(0).permutation(cells.n_obs)
    np.testing.assert_allclose(run.embed(cells[perm].copy(), batch_size=7), e64[perm], atol=1e-5)
    alone = run.embed(cells[[5]].copy(), batch_size=1)
    np.testing.assert_allclose(alone[0], e64[5], atol=1e-5)
    assert np.abs(e64[0] - e64[1]).max() > 1e-3  # different cells, different vectors


def test_mean_pooling_is_the_mean_over_gene_tokens(runs, cells):
    run = Run.load(runs["scgpt"], device="cpu")
    batch, args = _inputs(run, cells, n=3)
    with torch.no_grad():
        h = run.model.encode(*args)
    gene = (batch["columns"] >= 0).numpy()
    ref = np.stack([h[b].numpy()[gene[b]].mean(axis=0) for b in range(3)])
    np.testing.assert_allclose(run.embed(cells[:3].copy(), pooling="mean"), ref, atol=1e-5)
    np.testing.assert_allclose(run.embed(cells[:3].copy(), pooling="cls"), h[:, 0].numpy(), atol=1e-5)


def test_imputation_predicts_every_gene_once_and_matches_direct_forwards(runs, cells):
    run = Run.load(runs["bioformer"], device="cpu")
    prepared = run.prepare(cells, quiet=True)
    n_expr = np.diff(prepared.binned.indptr)
    i = int(np.flatnonzero((n_expr > 2) & (n_expr < run.max_genes - 1))[0])  # fits with one query
    one = cells[[i]].copy()
    # n_query = n_expressed: the cell's genes are predicted all masked at once
    k = int(n_expr[i])
    imp = run.imputation(one, n_query=k)
    cols, vals, _ = run._visible(prepared, i)
    _, batch = next(run._batches([run._sequence(cols, np.full(k, -1.0, dtype=np.float32))], 1))
    with torch.no_grad():
        ref = run.model(*run._model_inputs(batch))["pred"][0, 1:].numpy()
    np.testing.assert_allclose(imp.bins[0, cols], np.clip(ref, 0, run.config.data.n_bins - 1), atol=1e-5)
    # an unexpressed gene: with the older shared passes (n_query = 1) masked next to all the cell's
    # values; isolated (the default; n_query = k) appended to the one fold pass, where the cell's
    # k genes are all masked, and seen by no other position
    g = int(np.setdiff1d(np.arange(len(run.genes)), cols)[0])
    for isolated, n_query, inputs in ((False, 1, vals), (True, k, np.full(k, -1.0))):
        imp1 = run.imputation(one, n_query=n_query, isolated=isolated)
        seq = run._sequence(np.append(cols, g), np.append(inputs, -1.0).astype(np.float32))
        _, batch = next(run._batches([seq], 1))
        mark = {"isolated": torch.arange(batch["values"].shape[1])[None, :] == k + 1} if isolated else {}  # <cls> + k genes first
        with torch.no_grad():
            ref_g = run.model(*run._model_inputs(batch), **mark)["pred"][0, -1].item()
        assert imp1.bins[0, g] == pytest.approx(np.clip(ref_g, 0, run.config.data.n_bins - 1), abs=1e-5)
    # the whole batch: every gene of every cell predicted, batch size irrelevant, bins -> values
    full = run.imputation(cells[:12].copy(), batch_size=64)
    assert not np.isnan(full.bins).any() and full.bins.shape == (12, len(run.genes))
    np.testing.assert_allclose(run.imputation(cells[:12].copy(), batch_size=1).bins, full.bins, atol=1e-5)
    edges = run.prepare(cells[:12].copy(), quiet=True).bin_edges
    np.testing.assert_allclose(full.expression[3], bins_to_values(full.bins[3], edges[3]), atol=1e-6)


def _planted_data(tmp_path):
    """60 cells x 30 genes of Poisson counts (genes G0.. G29), a prior with one edge G3 -> G7."""
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(60, 30)).astype(np.float32)
    X[:, [3, 7]] += 1  # both genes in every cell
    a = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"condition": np.repeat(["ctrl", "stim"], 30)}, index=[f"c{i}" for i in range(60)]))
    a.var_names = [f"G{i}" for i in range(30)]
    path = tmp_path / "planted.h5ad"
    a.write_h5ad(path)
    prior = tmp_path / "prior.csv"
    pd.DataFrame({"source": ["G3"], "target": ["G7"], "sign": [1]}).to_csv(prior, index=False)
    return a, path, prior


def test_planted_prior_pair_ranks_first_in_the_right_direction(tmp_path):
    a, path, prior = _planted_data(tmp_path)
    cfg = tiny_config(tmp_path, data={"data": str(path), "prior": str(prior), "genes": "hvg", "n_hvg": 30, "max_len": 64, "hvg_flavor": "cell_ranger"},
                      model={"nlayers": 1, "opm": False, "pair_mode": "full"})  # LN on z: full mode
    cfg.train.epochs = 1
    out, _ = run_training(cfg, quiet=True)
    run = Run.load(out, device="cpu")
    ids = torch.tensor([[run.vocab.token_to_id["G3"], run.vocab.token_to_id["G7"]]])
    code = pair_codes(run.prior.prior_for(ids), run.model.prior_direction)[0, 0, 1]  # z code of the pair (G3, G7)
    with torch.no_grad():  # that code's z row gives +1.73 bias on every head, every other code 0
        table = run.model.prior_encoder.weight
        table.zero_()
        table[code, 0] = 3.0
        att = run.model.blocks[-1].attention
        att.norm_z.reset_parameters()
        att.bias_proj.weight.zero_()
        att.bias_proj.weight[:, 0] = 1.0
    pairs = run.pair_scores(a)
    edges = pairs.to_edges()
    assert (edges.iloc[0]["source"], edges.iloc[0]["target"]) == ("G3", "G7")
    s, t = run.genes.index("G3"), run.genes.index("G7")
    assert pairs.scores[s, t] == pytest.approx(np.sqrt(3), rel=1e-3)  # LN([3,0,0,0])[0] = sqrt(3)
    assert pairs.scores[t, s] == pytest.approx(0.0, abs=1e-6)
    assert pairs.n_cells[s, t] == 60
    # per condition: each group has its own counts, and the all-cell mean is their weighted mean
    by = run.pair_scores(a, groupby="condition")
    assert set(by) == {"ctrl", "stim"}
    np.testing.assert_array_equal(by["ctrl"].n_cells + by["stim"].n_cells, pairs.n_cells)
    weighted = (by["ctrl"].scores * by["ctrl"].n_cells + by["stim"].scores * by["stim"].n_cells) / np.maximum(pairs.n_cells, 1)
    np.testing.assert_allclose(weighted, pairs.scores, atol=1e-6)


@pytest.mark.parametrize("name", ["bioformer", "bioformer-full"])
def test_bioformer_pair_scores_are_last_block_bias_mean_over_heads(runs, cells, name):
    """In both pair modes (the default, linear, never forms z: its reference is the same model
    with z materialised)."""
    run = Run.load(runs[name], device="cpu")
    assert run.model.pair_mode == ("full" if name == "bioformer-full" else "linear")
    _, args = _inputs(run, cells)
    seen = {}
    att = run.model.blocks[-1].attention
    hook = att.register_forward_hook(lambda mod, inp, out: seen.update(z=inp[1]))
    with torch.no_grad():
        (run.model if run.model.pair_mode == "full" else run.model.forward_materialised)(*args)
        hook.remove()
        z = seen["z"]  # [B, r, r, c_z] after the OPM of the block before
        ref = att.bias_proj(att.normalise_z(z)).mean(dim=-1)  # [B, r, r]
        got = run.model.pair_scores(*args)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_scgpt_pair_scores_are_attention_averaged_over_heads_and_layers(runs, cells):
    run = Run.load(runs["scgpt"], device="cpu")
    batch, (gene_ids, values, pad, _) = _inputs(run, cells)
    model = run.model
    with torch.no_grad():
        m = model.gene_encoder(gene_ids) + model.value_encoder(values)
        probs = []
        for layer in model.encoder.layers:  # post-LN: attention reads the un-normalised input
            H = layer.self_attn.num_heads
            B, L, c = m.shape
            q, k, _ = torch.nn.functional.linear(m, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, dim=-1)
            q = q.view(B, L, H, c // H).transpose(1, 2)
            k = k.view(B, L, H, c // H).transpose(1, 2)
            logits = q @ k.transpose(-1, -2) / np.sqrt(c // H)
            logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
            probs.append(torch.softmax(logits, dim=-1).mean(dim=1))
            m = layer(m, src_key_padding_mask=pad)
        ref = torch.stack(probs).mean(dim=0)
        got = model.pair_scores(gene_ids, values, pad)
    keep = ~pad
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=1e-4)
    assert torch.allclose(got[keep].sum(-1), torch.ones(int(keep.sum())), atol=1e-5)


def test_pair_scores_do_not_depend_on_batch_size(runs, cells):
    run = Run.load(runs["bioformer"], device="cpu")
    p1, p64 = run.pair_scores(cells, batch_size=1), run.pair_scores(cells, batch_size=64)
    np.testing.assert_array_equal(p1.n_cells, p64.n_cells)
    np.testing.assert_allclose(p1.scores, p64.scores, atol=1e-5)


def test_bad_inputs_are_one_clear_error(runs, cells, tmp_path):
    with pytest.raises(BioformerError, match="not found"):
        Run.load(tmp_path / "nope")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["bioformer"], unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(BioformerError, match="not a finished run directory.*summary.json"):
        Run.load(unfinished)
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["bioformer"], damaged)
    (damaged / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(BioformerError, match="damaged"):
        Run.load(damaged)
    run = Run.load(runs["bioformer"], device="cpu")
    other = cells.copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    with pytest.raises(BioformerError, match="none of the run's .* genes"):
        run.embed(other)
    cfg = tiny_config(tmp_path / "noz", model={"pair_bias": False})
    cfg.train.epochs = 1
    noz = Run.load(run_training(cfg, quiet=True)[0], device="cpu")
    with pytest.raises(BioformerError, match="no pair representation"):
        noz.pair_scores(cells)


def test_missing_genes_are_counted_and_treated_as_unexpressed(runs, cells):
    run = Run.load(runs["scgpt"], device="cpu")
    drop = set(run.genes[:4])
    fewer = cells[:, [g for g in cells.var_names if g not in drop]].copy()
    prepared = run.prepare(fewer, quiet=True)
    assert prepared.n_missing == 4
    assert prepared.binned[:, :4].nnz == 0 and prepared.binned.shape == (cells.n_obs, len(run.genes))


def test_embedding_does_not_depend_on_thread_count(runs, cells):
    run = Run.load(runs["bioformer"], device="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run.embed(cells, batch_size=16)
        torch.set_num_threads(2)
        two = run.embed(cells, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(one, two, atol=1e-5)
