"""Readouts judged by a positive control: a planted z that holds the given edges passes and is
chosen; a random z fails; the choice never looks at held-out edges; unseen pairs rank last."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from bioformer.evaluation.grn import edge_truth
from bioformer.inference.pairs import CandidateAccumulator
from bioformer.inference.readout_choice import choose_readout, control_truth, readout_table
from bioformer.inference.readouts import candidate_readouts

G, TFS = 40, 6


def _edges(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = {(f"g{s}", f"g{t}") for s in range(TFS) for t in rng.choice(np.arange(TFS, G), 8, replace=False)}
    return pd.DataFrame(sorted(pairs), columns=["source", "target"])


class _ToyZ(torch.nn.Module):
    """Two blocks, two heads. Planted: block 0 head 1 adds +3 on every given edge, the rest is
    noise. Random: noise only."""

    uses_z = True

    def __init__(self, planted: bool) -> None:
        super().__init__()
        self.blocks = [SimpleNamespace(attention=SimpleNamespace(nhead=2))] * 2
        self.planted = planted
        self.gen = torch.Generator().manual_seed(0)

    def pair_bias_logits(self, gene_ids, values, padding_mask, prior=None, block=-1):
        B, r = gene_ids.shape
        bias = torch.randn(B, 2, r, r, generator=self.gen)
        if self.planted and block == 0:
            bias[:, 1] += 3.0 * (prior != 0).float()
        return bias


def _scores(model: _ToyZ, given: pd.DataFrame, n_cells: int = 60, r: int = 12):
    """Per-cell random gene subsets (gene columns 0..G-1), the prior codes of `given` among them."""
    rng = np.random.default_rng(1)
    A = np.zeros((G, G), dtype=np.int64)
    A[given["source"].str[1:].astype(int), given["target"].str[1:].astype(int)] = 1
    acc = CandidateAccumulator(G)
    for _ in range(n_cells // 10):
        cols = torch.from_numpy(np.stack([np.r_[rng.choice(TFS, 3, replace=False), rng.choice(np.arange(TFS, G), r - 3, replace=False)] for _ in range(10)]))
        prior = torch.from_numpy(A[cols[:, :, None], cols[:, None, :]])  # [B, r, r]
        pad = torch.zeros(cols.shape, dtype=torch.bool)
        acc.add(candidate_readouts(model, cols + 3, torch.zeros(cols.shape), pad, prior), cols)
    return acc.result()


def test_planted_z_passes_the_positive_control_and_random_z_fails():
    genes = [f"g{i}" for i in range(G)]
    given = _edges(0)
    control = control_truth(given, genes)
    cands, count = _scores(_ToyZ(planted=True), given)
    best, df = choose_readout(cands, control)
    assert best in {"block0 head1", "block0 mean", "block0 max", "block0 l2"}
    assert df.set_index("readout").loc[best, "passes"]
    assert not df.set_index("readout").loc["block1 head0", "passes"]
    cands, _ = _scores(_ToyZ(planted=False), given)
    best, df = choose_readout(cands, control)
    assert not df["passes"].any()  # a z that holds no edge passes nothing
    # pairs never seen together have no score: NaN, ranked last, counted
    assert (count == 0).any() and np.isnan(cands["block0 mean"][count == 0]).all()


def test_the_choice_never_looks_at_held_out_edges():
    genes = [f"g{i}" for i in range(G)]
    given, held = _edges(0), _edges(5)
    held = held[~held.set_index(["source", "target"]).index.isin(given.set_index(["source", "target"]).index)]
    cands, _ = _scores(_ToyZ(planted=True), given)
    # a readout that is perfect on the held-out edges and random on the given ones
    cheat = edge_truth("h", held, genes).truth.astype(float) + np.random.default_rng(2).random((G, G)) * 0.1
    cands["oracle"] = cheat
    control = control_truth(given, genes, heldout=held)
    truth = edge_truth("held", held, genes, tfs=[f"g{i}" for i in range(TFS)], exclude=given)
    df = readout_table(cands, control, [truth])
    chosen = df[df["chosen"]]["predictor"].unique()
    assert list(chosen) != ["oracle"] and len(chosen) == 1
    on_held = df[(df["truth"] == "held")].set_index("predictor")
    assert on_held.loc["oracle", "average_precision"] > on_held.loc[chosen[0], "average_precision"]
    assert (df["truth"] == control.name).sum() == len(cands)  # the control row of every readout


def test_pass_rule_needs_both_ap_and_per_tf_auroc():
    from bioformer.inference.readout_choice import passes_control

    assert passes_control({"average_precision": 0.3, "random": 0.1, "per_tf_auroc_low": 0.6})
    assert not passes_control({"average_precision": 0.15, "random": 0.1, "per_tf_auroc_low": 0.6})  # AP < 2 x random
    assert not passes_control({"average_precision": 0.3, "random": 0.1, "per_tf_auroc_low": 0.45})  # CI reaches 0.5


def test_run_readout_table_on_trained_runs(runs):
    """End to end on the tiny trained runs: every block / head readout of BioFormer and scGPT's
    attention, each with its positive-control score beside the held-out one, one chosen."""
    from bioformer.inference.readout_choice import format_readout_table, run_readout_table

    df = run_readout_table(runs["bioformer"], genie3=False)
    readouts = set(df.loc[df["kind"] == "readout", "predictor"])
    assert {"block0 l2", "block1 mean", "block0 head0"} <= readouts
    assert df.loc[df["kind"] == "readout", "control_ap"].notna().all()
    assert df[df["chosen"] == True]["predictor"].nunique() == 1  # noqa: E712
    assert "degree (visible out x in)" in set(df["predictor"])
    assert "* " in format_readout_table(df)
    s = run_readout_table(runs["scgpt"], genie3=False)
    assert set(s.loc[s["kind"] == "readout", "predictor"]) == {"attention"}


def test_pair_scores_rank_unseen_pairs_last():
    from bioformer.evaluation.grn import ranking_metrics
    from bioformer.inference.pairs import PairScores

    ps = PairScores(["a", "b", "c"], np.array([[0, -1.0, 0], [0, 0, 0], [0, 0, 0]]), np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]]), "x")
    assert np.isnan(ps.ranked()[0, 2]) and ps.ranked()[0, 1] == -1.0
    # a true edge (a -> b) with a negative score still beats a pair never seen together
    assert ranking_metrics(ps.ranked()[0, 1:], np.array([True, False]), ks=(1,))["precision_at_1"] == 1.0
