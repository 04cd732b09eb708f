import json
import math

import numpy as np
import pandas as pd
import pytest

from bioformer.errors import BioformerError
from bioformer.evaluation.grn import (
    TruthSet,
    chip_truth,
    coexpression,
    degree_shuffle,
    edge_truth,
    grn_table,
    ranking_metrics,
    score_matrix,
)


def _labels(n=200, n_pos=20, seed=0):
    y = np.zeros(n, dtype=bool)
    y[np.random.default_rng(seed).choice(n, n_pos, replace=False)] = True
    return y


def test_perfect_ranking_scores_one():
    y = _labels()
    m = ranking_metrics(y.astype(float) + 0.01 * np.arange(y.size) / y.size, y, ks=(10, 20))
    assert m["auprc"] == pytest.approx(1.0)
    assert m["average_precision"] == pytest.approx(1.0)
    assert m["epr"] == pytest.approx(1 / 0.1)  # precision 1 over density 0.1
    assert m["precision_at_10"] == 1.0 and m["precision_at_20"] == 1.0
    assert m["random"] == pytest.approx(0.1)


def test_inverted_ranking_scores_the_minimum():
    y = _labels()
    m = ranking_metrics(-y.astype(float) - 0.01 * np.arange(y.size) / y.size, y, ks=(20,))
    assert m["precision_at_20"] == 0.0 and m["epr"] == 0.0
    # positives last: AP = mean over positives of k / (180 + k), k = 1..20
    assert m["average_precision"] == pytest.approx(np.mean([k / (180 + k) for k in range(1, 21)]))
    assert m["auprc"] < 0.1


def test_random_scores_sit_at_the_density():
    y = _labels(n=20000, n_pos=2000)
    m = ranking_metrics(np.random.default_rng(1).random(y.size), y)
    assert m["average_precision"] == pytest.approx(0.1, abs=0.01)
    assert m["auprc"] == pytest.approx(0.1, abs=0.01)
    assert m["epr"] == pytest.approx(1.0, abs=0.08)


def test_ties_are_one_threshold_and_expected_precision():
    y = _labels()
    const = ranking_metrics(np.zeros(y.size), y, ks=(7,))
    # one threshold holding everything: precision = density at recall 1, exactly random
    assert const["average_precision"] == pytest.approx(0.1)
    assert const["auprc"] == pytest.approx(0.1)
    assert const["epr"] == pytest.approx(1.0)
    assert const["precision_at_7"] == pytest.approx(0.1)
    # 4 positives strictly on top, then a 2+2 tie across rank 6: expected precision@6 = (4 + 2 * 0.5) / 6
    s = np.array([5, 5, 5, 5, 1, 1, 1, 1, 0, 0], dtype=float)
    lab = np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert ranking_metrics(s, lab, ks=(6,))["precision_at_6"] == pytest.approx(5 / 6)
    # NaN ranks last
    assert ranking_metrics(np.array([np.nan, 1.0, 0.0]), np.array([False, True, False]), ks=(1,))["precision_at_1"] == 1.0


def test_degenerate_truth_gives_nan():
    m = ranking_metrics(np.arange(5.0), np.zeros(5, dtype=bool))
    assert math.isnan(m["auprc"]) and m["n_true"] == 0


def _truth():
    genes = ["TF1", "TF2", "G1", "G2", "G3"]
    edges = pd.DataFrame({"source": ["TF1", "TF1", "TF2", "TF1"], "target": ["G1", "G2", "G3", "TF2"]})
    given = pd.DataFrame({"source": ["TF1"], "target": ["TF2"]})
    return genes, edge_truth("t", edges, genes, exclude=given)


def test_edge_truth_candidates_rows_are_tfs_no_self_no_given():
    genes, t = _truth()
    # rows TF1, TF2 x 5 columns, minus 2 self-pairs, minus the given edge TF1->TF2
    assert t.n_candidates == 2 * 5 - 2 - 1
    assert t.n_true == 3
    assert not t.candidates[2:].any()
    assert not t.candidates[0, 1]


def test_score_matrix_uses_only_candidates_and_checks_shape():
    genes, t = _truth()
    S = t.truth.astype(float)
    S[2:, :] = 100.0  # non-candidate rows must not matter
    S[0, 1] = 100.0  # excluded pair must not matter
    assert score_matrix(S, t)["average_precision"] == pytest.approx(1.0)
    with pytest.raises(BioformerError, match="5 genes"):
        score_matrix(np.zeros((3, 3)), t)


def test_coexpression_matches_numpy_and_scipy():
    from scipy.stats import spearmanr

    X = np.random.default_rng(0).poisson(2.0, size=(50, 4)).astype(float)
    X[:, 3] = 1.0  # constant gene
    P = coexpression(X, "pearson")
    assert P[0, 1] == pytest.approx(abs(np.corrcoef(X[:, 0], X[:, 1])[0, 1]))
    assert P[0, 3] == 0.0
    S = coexpression(X, "spearman")
    assert S[0, 2] == pytest.approx(abs(spearmanr(X[:, 0], X[:, 2]).statistic))


def test_degree_shuffle_keeps_degrees():
    genes = [f"G{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    edges = pd.DataFrame({"source": [f"G{i}" for i in rng.integers(0, 5, 60)], "target": [f"G{i}" for i in rng.integers(5, 30, 60)]}).drop_duplicates()
    t = edge_truth("t", edges, genes)
    S = degree_shuffle(t, seed=1)
    assert (S.sum(axis=1) == t.truth.sum(axis=1)).all()
    assert (S.sum(axis=0) == t.truth.sum(axis=0)).all()
    assert (S.astype(bool) != t.truth).any()


def test_chip_truth_is_case_insensitive_union_over_cell_lines(tmp_path):
    p = tmp_path / "chip.json"
    p.write_text(json.dumps({"TF1 K562": ["G1", "C1ORF1"], "TF1 HEPG2": ["G2"], "TFX K562": ["G1"]}))
    genes = ["TF1", "G1", "G2", "C1orf1", "G3"]
    t = chip_truth(genes, p)
    assert t.truth[0, [1, 2, 3]].all() and t.n_true == 3
    assert t.n_candidates == 4  # only TF1's row is a candidate (TFX is not a gene)


def test_grn_table_ranks_the_truth_above_baselines():
    genes, t = _truth()
    chip = TruthSet("chip", genes, t.truth.copy(), t.candidates.copy())
    X = np.random.default_rng(0).random((40, 5))
    prior = pd.DataFrame({"source": ["TF1"], "target": ["G1"]})
    df = grn_table({"model": t.truth.astype(float)}, [t, chip], X, prior)
    assert set(df["predictor"]) >= {"model", "random", "pearson co-expression", "spearman co-expression", "degree-preserving shuffle"}
    assert "prior" in set(df.loc[df["truth"] == "chip", "predictor"])
    assert "prior" not in set(df.loc[df["truth"] == "t", "predictor"])
    assert (df.loc[df["predictor"] == "model", "average_precision"] == 1.0).all()
