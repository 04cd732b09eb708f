import json
import math

import numpy as np
import pandas as pd
import pytest

from bioformer.errors import BioformerError
from bioformer.evaluation.baselines import coexpression, degree_baseline, genie3
from bioformer.evaluation.grn import (
    TruthSet,
    auroc,
    chip_truth,
    edge_truth,
    grn_table,
    per_tf_metrics,
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


def test_degree_baseline_uses_only_the_given_edges():
    genes = ["A", "B", "C", "D"]
    given = pd.DataFrame({"source": ["A", "A", "B", "X"], "target": ["C", "D", "C", "C"]})  # X: not a gene
    S = degree_baseline(given, genes)
    out_deg, in_deg = np.array([2, 1, 0, 0]), np.array([0, 0, 2, 1])
    assert np.array_equal(S, np.outer(out_deg, in_deg))


def test_genie3_finds_the_planted_regulator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    X[:, 4] = 2 * X[:, 0] + 0.1 * rng.normal(size=300)  # gene 0 drives gene 4
    X[:, 5] = -X[:, 1] + 0.1 * rng.normal(size=300)  # gene 1 drives gene 5
    S = genie3(X, np.array([0, 1, 2]), seed=0)
    assert np.nanargmax(S[:, 4]) == 0 and np.nanargmax(S[:, 5]) == 1
    assert np.isnan(S[3:]).all()  # non-regulator rows: no opinion


def _per_tf_case():
    """Two TFs with 5 true targets each among 10 candidates, one TF with 2 (not scored)."""
    genes = [f"T{i}" for i in range(3)] + [f"G{i}" for i in range(10)]
    edges = pd.DataFrame({"source": ["T0"] * 5 + ["T1"] * 5 + ["T2"] * 2,
                          "target": [f"G{i}" for i in range(5)] + [f"G{i}" for i in range(5, 10)] + ["G0", "G1"]})
    return genes, edge_truth("t", edges, genes, tfs=["T0", "T1", "T2"])


def test_per_tf_auroc_matches_a_hand_computation():
    genes, t = _per_tf_case()
    S = np.zeros((13, 13))
    S[0, 3:13] = [9, 8, 7, 1, 0.5, 6, 5, 4, 3, 2]  # T0: true G0-G4 -> 9,8,7,1,0.5; false 6,5,4,3,2
    S[1, 3:13] = np.arange(10.0)  # T1: true G5-G9 hold the top 5 scores
    S[2, 3:13] = -np.arange(10.0)  # T2 (2 targets) is not scored
    m = per_tf_metrics(S, t)
    # on the 10 G columns alone, T0: 9, 8, 7 beat all 5 false targets, 1 and 0.5 none -> 15 / 25
    assert auroc(S[0, 3:13], np.r_[np.ones(5), np.zeros(5)].astype(bool)) == pytest.approx(0.6)
    assert m["n_tfs"] == 2
    # a TF's candidates are every gene but itself: the other two TFs' columns (score 0) are negatives too
    neg0 = np.array([0, 0, 6, 5, 4, 3, 2.0])  # T1, T2 columns and the 5 false targets
    pos0 = np.array([9, 8, 7, 1, 0.5])
    hand0 = np.mean([(p > n) + 0.5 * (p == n) for p in pos0 for n in neg0])
    neg1 = np.array([0, 0, 0, 1, 2, 3, 4.0])  # T0, T2 columns score 0; G0-G4 score 0-4
    pos1 = np.array([5, 6, 7, 8, 9.0])
    hand1 = np.mean([(p > n) + 0.5 * (p == n) for p in pos1 for n in neg1])
    assert m["per_tf_auroc"] == pytest.approx((hand0 + hand1) / 2)
    assert m["per_tf_auroc_low"] < m["per_tf_auroc"] < m["per_tf_auroc_high"]
    # ties count one half: a constant row is exactly 0.5
    assert per_tf_metrics(np.ones((13, 13)), t)["per_tf_auroc"] == pytest.approx(0.5)


def test_epr_on_tf_rows_and_over_all_pairs_differ_by_the_candidate_set():
    genes, t = _per_tf_case()
    S = t.truth.astype(float)
    m = score_matrix(S, t)
    n_true = t.n_true
    assert m["epr"] == pytest.approx(1 / (n_true / t.n_candidates))
    assert m["epr_all_pairs"] == pytest.approx(1 / (n_true / (13 * 12)))
    S2 = S.copy()
    S2[np.isnan(S2)] = 0
    S2[[5, 6], :] = np.nan  # pairs never seen together: no opinion, counted
    assert score_matrix(S2, t)["n_unscored"] == 0  # rows 5, 6 are not TF rows
    S2[0, 5] = np.nan
    assert score_matrix(S2, t)["n_unscored"] == 1


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
    assert set(df["predictor"]) >= {"model", "random", "pearson co-expression", "spearman co-expression", "GENIE3 (trees)"}
    assert "degree-preserving shuffle" not in set(df["predictor"])  # the truth-derived oracle is gone
    df = grn_table({"model": t.truth.astype(float)}, [t, chip], X, prior, given=prior, genie3=False)
    assert "degree (visible out x in)" in set(df["predictor"]) and "GENIE3 (trees)" not in set(df["predictor"])
    assert "prior" in set(df.loc[df["truth"] == "chip", "predictor"])
    assert "prior" not in set(df.loc[df["truth"] == "t", "predictor"])
    assert (df.loc[df["predictor"] == "model", "average_precision"] == 1.0).all()


def test_reverse_free_truth_drops_pairs_whose_reverse_edge_was_given():
    genes = ["A", "B", "C", "D"]
    held = pd.DataFrame({"source": ["A", "A"], "target": ["B", "C"]})
    given = pd.DataFrame({"source": ["B", "A"], "target": ["A", "D"]})  # B -> A: the reverse of A -> B
    reverse = given.rename(columns={"source": "target", "target": "source"})
    t = edge_truth("r", held, genes, tfs=["A", "B"], exclude=pd.concat([given, reverse]))
    assert not t.candidates[0, 1] and t.candidates[0, 2] and t.n_true == 1
