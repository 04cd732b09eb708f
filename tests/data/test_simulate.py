"""The planted-truth simulator: seeded, acyclic and signed, PBMC-like sparsity, a gene-gene
effect that grows with alpha and vanishes at alpha = 0, prior files with the asked recall and
precision, and the `synthetic:` name through load, prior and pipeline."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from bioformer.config import DataConfig
from bioformer.data.load import load_anndata
from bioformer.data.pipeline import prepare_data
from bioformer.data.prior import load_edges, read_edge_file
from bioformer.data.simulate import (
    FILES,
    SimConfig,
    canonical_spec,
    count_stats,
    parse_spec,
    simulate,
    write_simulation,
)
from bioformer.errors import BioformerError
from tests.data.test_prior_controls import _pairs


def _within_state_link(sim, n_targets: int = 60) -> float:
    """Mean over targets of the within-state correlation between a target's log expression and
    its regulators' signed, weighted log expression (both library-normalised)."""
    X = sim.adata.X.toarray()
    logx = np.log1p(X / X.sum(1, keepdims=True) * 1e3)
    col = {g: i for i, g in enumerate(sim.adata.var_names)}
    state = sim.adata.obs["state"].to_numpy()
    cors = []
    for target, edges in list(sim.truth.groupby("target"))[:n_targets]:
        drive = logx[:, [col[s] for s in edges["source"]]] @ edges["weight"].to_numpy()
        y = logx[:, col[target]]
        for k in np.unique(state):
            m = state == k
            if y[m].std() > 0 and drive[m].std() > 0:
                cors.append(np.corrcoef(y[m], drive[m])[0, 1])
    return float(np.mean(cors))


def test_seeded_and_deterministic():
    a, b = simulate(SimConfig(n_cells=200, n_genes=40, n_tfs=6, seed=1)), simulate(SimConfig(n_cells=200, n_genes=40, n_tfs=6, seed=1))
    c = simulate(SimConfig(n_cells=200, n_genes=40, n_tfs=6, seed=2))
    assert (a.adata.X != b.adata.X).nnz == 0
    pd.testing.assert_frame_equal(a.given, b.given)
    assert (a.adata.X != c.adata.X).nnz > 0


def test_network_is_signed_acyclic_and_tf_driven():
    sim = simulate(SimConfig(n_cells=100, n_genes=80, n_tfs=10))
    order = {g: i for i, g in enumerate(sim.adata.var_names)}
    src = sim.truth["source"].map(order).to_numpy()
    tgt = sim.truth["target"].map(order).to_numpy()
    assert (src < tgt).all() and (src < 10).all()  # TFs regulate only later genes: acyclic
    assert set(np.unique(sim.truth["sign"])) == {-1, 1}
    assert (np.sign(sim.truth["weight"]) == sim.truth["sign"]).all()
    assert set(sim.truth["target"]) == set(sim.adata.var_names[1:])  # every gene but TF000 is regulated


def test_effect_is_gene_gene_grows_with_alpha_and_is_null_at_zero():
    cfg = dict(n_cells=2000, n_genes=64, n_tfs=8, seed=3)
    null, weak, strong = (_within_state_link(simulate(SimConfig(alpha=a, **cfg))) for a in (0.0, 0.3, 0.8))
    assert abs(null) < 0.03, null
    assert 0.05 < weak < strong, (weak, strong)
    assert strong > 0.15, strong


def test_pbmc_like_sparsity_at_full_size_and_fast():
    t0 = time.perf_counter()
    sim = simulate(SimConfig(n_cells=5000, n_genes=256))
    elapsed = time.perf_counter() - t0
    s = count_stats(sim.adata.X)
    assert elapsed < 30, elapsed
    assert 0.75 < s["zero_frac"] < 0.92, s  # PBMC3k over its top 256 HVGs: 0.87
    assert 20 <= s["genes_per_cell_median"] <= 70, s  # PBMC3k: 31
    assert s["logvar_logmean_slope"] > 1.1, s  # overdispersed, like UMI counts
    assert (sim.adata.X.sum(1) > 0).all()
    assert sim.adata.obs["state"].nunique() >= 4


@pytest.mark.parametrize("recall,precision", [(0.8, 1.0), (0.5, 0.5), (1.0, 0.8)])
def test_given_prior_has_the_asked_recall_and_precision(recall, precision):
    sim = simulate(SimConfig(n_cells=50, n_genes=60, n_tfs=8, recall=recall, precision=precision))
    truth, given, held = _pairs(sim.truth), _pairs(sim.given), _pairs(sim.heldout)
    assert len(given & truth) == round(recall * len(truth))
    assert len(given & truth) / len(given) == pytest.approx(precision, abs=0.01)
    assert held == truth - given and not (held & given)
    assert all(s.startswith("TF") for s, _ in given)  # decoys come from TFs too: not told apart by the source


def test_spec_round_trip_and_bad_specs():
    cfg = parse_spec("synthetic:alpha=0.3,cells=900,seed=4")
    assert (cfg.alpha, cfg.n_cells, cfg.seed) == (0.3, 900, 4)
    assert parse_spec(canonical_spec(cfg)) == cfg
    for bad in ("synthetic:alpha=1.5", "synthetic:bogus=1", "synthetic:cells", "synthetic:cells=x", "synthetic:tfs=300"):
        with pytest.raises(BioformerError):
            parse_spec(bad)


def test_written_files_are_what_the_loaders_read(tmp_path):
    sim = simulate(SimConfig(n_cells=120, n_genes=50, n_tfs=6))
    out = write_simulation(sim, tmp_path / "sim")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert _pairs(read_edge_file(out / "prior_given.csv")) == _pairs(sim.given)
    assert _pairs(pd.read_csv(out / "heldout_edges.csv")) == _pairs(sim.heldout)
    a = load_anndata(str(out / "counts.h5ad"), quiet=True)
    assert (a.X != sim.adata.X).nnz == 0


def test_synthetic_name_through_load_prior_and_pipeline():
    name = "synthetic:cells=300,genes=60,tfs=8,seed=5"
    sim = simulate(parse_spec(name))
    a = load_anndata(name, quiet=True)
    assert (a.X != sim.adata.X).nnz == 0
    assert _pairs(load_edges(name)) == _pairs(sim.given)
    data = prepare_data(DataConfig(data=name, prior=name, n_hvg=64, max_len=64), quiet=True)
    genes = set(data.adata.var_names)
    expect = {(s, t) for s, t in _pairs(sim.heldout) if s in genes and t in genes}
    assert _pairs(data.heldout_edges) == expect and expect  # the simulator's held-out edges, not a random share
    src, tgt, _ = data.prior.edge_index()
    names = np.asarray(data.vocab.tokens)
    assert not ({(names[s], names[t]) for s, t in zip(src, tgt, strict=True)} & expect)  # never in z


def test_simulate_command_writes_the_files_and_refuses_bad_input(tmp_path, capsys):
    from bioformer.cli import main

    out = tmp_path / "sim"
    assert main(["-q", "simulate", "--out", str(out), "--cells", "100", "--genes", "40", "--tfs", "6", "--recall", "0.5", "--precision", "0.5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    given, truth = read_edge_file(out / "prior_given.csv"), pd.read_csv(out / "truth_edges.csv")
    assert len(_pairs(given) & _pairs(truth)) == round(0.5 * len(truth))
    assert "synthetic:" in capsys.readouterr().out
    bad = tmp_path / "bad"
    assert main(["-q", "simulate", "--out", str(bad), "--alpha", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "alpha" in err[0]
    assert not bad.exists()
