"""Studies: statistics helpers against scipy, and one quick study end to end (files, columns, resume)."""

import dataclasses
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from bioformer.data.prior import edge_overlap
from bioformer.errors import BioformerError
from bioformer.experiments import suite
from bioformer.experiments.report import RESULT_COLUMNS
from bioformer.experiments.stats import holm, paired_test, t_interval


def test_t_interval_matches_scipy():
    x = [1.0, 2.0, 4.0, 7.0, 11.0]
    mean, lo, hi = t_interval(x)
    ref_lo, ref_hi = stats.t.interval(0.95, df=4, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(5.0)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi))
    m1, lo1, hi1 = t_interval([3.0])
    assert m1 == 3.0 and math.isnan(lo1) and math.isnan(hi1)


def test_paired_test_matches_scipy():
    a = np.array([10.0, 12.0, 9.5, 11.0, 13.0, 10.5])
    b = np.array([11.0, 12.5, 10.0, 11.2, 14.0, 11.5])
    r = paired_test(a, b)
    d = a - b
    assert r["n"] == 6 and r["mean_diff"] == pytest.approx(d.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(stats.t.interval(0.95, df=5, loc=d.mean(), scale=stats.sem(d)))
    assert r["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert r["ci_high"] < 0 and r["t_p"] < 0.05  # a is lower in every pair
    few = paired_test(a[:3], b[:3])
    assert math.isnan(few["wilcoxon_p"]) and not math.isnan(few["t_p"])


def test_holm_known_values():
    # p sorted 0.01, 0.02, 0.04 with m = 3: 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    out = holm([0.5, float("nan")])
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1])


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A 160-cell count matrix and a small TF prior among its genes (no download needed)."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    n_cells, n_genes = 160, 90
    means = rng.gamma(0.6, 3.0, n_genes)
    counts = rng.poisson(means[None, :] * rng.gamma(2.0, 0.5, (n_cells, 1))).astype(np.float32)
    counts[:, 0] += 1  # no empty cells
    genes = [f"TF{i}" if i < 10 else f"G{i}" for i in range(n_genes)]
    ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes)).write_h5ad(d / "tiny.h5ad")
    src = [f"TF{i % 10}" for i in range(120)]
    tgt = [genes[10 + (7 * i) % 80] for i in range(120)]
    pd.DataFrame({"source": src, "target": tgt, "sign": rng.choice([-1, 1], 120)}).to_csv(d / "prior.csv", index=False)
    return d


def _overrides(tiny):
    return {
        "data": {"data": str(tiny / "tiny.h5ad"), "max_cells": None, "n_hvg": 32, "max_prior_genes": 32, "prior": str(tiny / "prior.csv"), "max_len": 24},
        "train": {"num_threads": 1, "batch_size": 32},
    }


def _plan(tiny, out, study="same-params"):
    return suite.plan_study(study, "quick", out=out, seeds=2, epochs=1, overrides=_overrides(tiny))


def test_quick_study_end_to_end_and_resume(tiny_inputs, tmp_path, monkeypatch):
    out = tmp_path / "same-params"
    plan = _plan(tiny_inputs, out)
    suite.run_study(plan)
    for name in ("results.csv", "pairs.csv", "summary.md", "comparison.png", "curves.png", "study.json"):
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / "results.csv")
    assert set(RESULT_COLUMNS) <= set(df.columns)
    assert len(df) == 4 and sorted(df["arm"].unique()) == ["bioformer", "scgpt"] and sorted(df["seed"].unique()) == [0, 1]
    assert df[["test_mse", "floor_gene_mean_mse", "floor_const_mse", "n_params", "wall_seconds"]].notna().all().all()
    n = df.groupby("arm")["n_params"].first()
    assert abs(n["bioformer"] - n["scgpt"]) / n["scgpt"] <= 0.02
    md = (out / "summary.md").read_text()
    assert "mean ± 95% CI" in md and "bioformer vs scgpt" in md and "Floor check" in md and "per-gene floor MSE" in md

    # finished (arm, seed) runs are skipped: training must not be called again
    import bioformer.training.run as run_mod

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_mod, "run_training", boom)
    before = (out / "runs" / "scgpt" / "seed0" / "summary.json").stat().st_mtime_ns
    suite.run_study(_plan(tiny_inputs, out))
    assert (out / "runs" / "scgpt" / "seed0" / "summary.json").stat().st_mtime_ns == before
    suite.run_study(_plan(tiny_inputs, out), report_only=True)
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_cli_lists_the_studies():
    from bioformer.cli import build_parser

    args = build_parser().parse_args(["experiment", "prior", "--profile", "quick", "--seeds", "3", "--report-only"])
    assert args.study == "prior" and args.seeds == 3 and args.report_only
    assert set(suite.STUDIES) == {"same-params", "same-attention", "ablation", "depth", "prior", "prior-transfer", "depth-recheck", "planted"}
    assert {"quick", "standard", "full"} <= set(suite.PROFILES)


def test_prior_study_end_to_end_with_init_paired_arms_and_controls(tiny_inputs, tmp_path):
    from bioformer.data.prior import edge_overlap, read_edge_file

    out = tmp_path / "prior"
    plan = suite.plan_study("prior", "quick", out=out, seeds=1, epochs=1, overrides=_overrides(tiny_inputs))
    names = ["prior-both-directions", "prior-one-direction", "zero-z", "prior-rewired", "prior-random", "scgpt"]
    assert plan.arm_names() == names
    assert ("prior-both-directions", "zero-z") in plan.pairs() and ("prior-both-directions", "prior-rewired") in plan.pairs()
    sd = suite.seed_data(plan, 0)
    prepared, arms = sd.prepared, sd.arms
    assert arms["prior-both-directions"].model.bioformer.prior_direction == "both" and arms["prior-one-direction"].model.bioformer.prior_direction == "outgoing"
    assert arms["prior-one-direction"].model.replace(prior_direction="both") == arms["zero-z"].model == arms["prior-rewired"].model
    real = read_edge_file(tiny_inputs / "prior.csv")
    for name in ("prior-rewired", "prior-random"):
        ctrl = sd.data_for(arms[name])
        assert ctrl.adata is prepared.adata and ctrl.split is prepared.split  # same genes, cells, masks
        assert ctrl.prior.n_edges == prepared.prior.n_edges
        s, t, _ = ctrl.prior.edge_index()
        tokens = prepared.vocab.tokens
        edges = pd.DataFrame({"source": [tokens[i] for i in s], "target": [tokens[i] for i in t]})
        assert edge_overlap(edges, real) < 0.1
    assert sd.data_for(arms["zero-z"]) is prepared

    suite.run_study(plan)
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["arm"]) == sorted(names) and df["test_prior_targets_mse"].notna().all()
    assert (df["floor_gene_mean_mse"].nunique(), df["floor_prior_targets_gene_mean_mse"].nunique()) == (1, 1)  # paired masks
    assert df.loc[df["arm"] == "zero-z", "prior"].item() == "none" and df.loc[df["arm"] == "prior-rewired", "prior"].item().endswith("-rewired")
    pairs = pd.read_csv(out / "pairs.csv")
    assert "prior_targets_mse" in set(pairs["metric"])
    assert "MSE, prior-targets masks" in (out / "summary.md").read_text()


def test_per_arm_seeds_and_study_profiles():
    plan = suite.plan_study("prior", "standard", out="x")
    assert plan.seeds == list(range(10)) and plan.train.epochs == 40
    runs = plan.runs()
    per_arm = {name: sum(1 for _, a in runs if a == name) for name in plan.arm_names()}
    assert per_arm == {"collectri-both-directions": 10, "collectri-one-direction": 10, "zero-z": 10,
                       "collectri-rewired": 10, "collectri-random": 5, "scgpt": 5}
    assert suite.plan_study("prior", "standard", out="x", seeds=3).runs()[-1][0] == 2
    assert "Seeds [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] (collectri-random: 5 seeds, scgpt: 5 seeds)." in suite._header(plan)
    transfer = suite.plan_study("prior-transfer", "standard", out="x")
    assert (transfer.data.split_by, transfer.data.test_groups) == ("condition", "stimulated") and transfer.train.epochs == 40
    recheck = suite.plan_study("depth-recheck", "standard", out="x")
    assert (recheck.train.epochs, recheck.train.lr) == (40, 1e-3)
    arms = {a.name: a.model for a in recheck.arms(vocab_size=515)}
    bio, matched = arms["bioformer-N8"], arms["bioformer-no-pair-path-N8-matched"]
    assert not matched.bioformer.pair_bias and not matched.bioformer.opm and matched.nlayers == bio.nlayers == 8
    from bioformer.models import count_config_parameters

    n_bio, n_matched = count_config_parameters(bio, 515, True), count_config_parameters(matched, 515, False)
    assert abs(n_matched - n_bio) / n_bio <= 0.05 and matched.d_model > bio.d_model
    assert count_config_parameters(arms["bioformer-no-pair-path-N8"], 515, False) < 0.85 * n_bio


def test_parallel_jobs_give_the_same_results(tiny_inputs, tmp_path):
    """--jobs 2 trains in worker processes; every run is seeded, so the numbers must not change."""
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    suite.run_study(_plan(tiny_inputs, serial))
    suite.run_study(_plan(tiny_inputs, parallel), jobs=2)
    cols = ["arm", "seed", "test_mse", "test_pearson", "n_params", "best_epoch"]
    a = pd.read_csv(serial / "results.csv")[cols].sort_values(["arm", "seed"]).reset_index(drop=True)
    b = pd.read_csv(parallel / "results.csv")[cols].sort_values(["arm", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_resume_refuses_runs_of_another_config(tiny_inputs, tmp_path):
    out = tmp_path / "study"
    suite.run_study(_plan(tiny_inputs, out))
    changed = _plan(tiny_inputs, out)
    changed = dataclasses.replace(changed, data=dataclasses.replace(changed.data, max_len=20))
    with pytest.raises(BioformerError, match=r"(?s)another configuration.*data\.max_len 24 -> 20"):
        suite.run_study(changed)
    # execution details (threads) are not a different configuration
    same = _plan(tiny_inputs, out)
    suite.run_study(dataclasses.replace(same, train=dataclasses.replace(same.train, num_threads=2)))


def test_standard_depth_profile_uses_its_own_training_settings():
    depth = suite.plan_study("depth", "standard", out="x")
    other = suite.plan_study("ablation", "standard", out="x")
    assert depth.data == other.data  # same data as the other studies (2,000 cells)
    assert (depth.train.lr, depth.train.warmup_steps) == (1e-3, 100)
    assert (other.train.lr, other.train.warmup_steps) == (2e-3, 30)
    assert suite.plan_study("depth", "standard", out="x", overrides={"train": {"lr": 5e-4}}).train.lr == 5e-4


def test_arms_subset_runs_and_reports_only_those(tiny_inputs, tmp_path):
    out = tmp_path / "subset"
    plan = suite.plan_study("same-attention", "quick", out=out, seeds=2, epochs=1, overrides=_overrides(tiny_inputs), arms=["bioformer", "scgpt"])
    assert plan.arm_names() == ["scgpt", "bioformer"] and plan.pairs() == [("bioformer", "scgpt")]
    suite.run_study(plan)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["bioformer", "scgpt"]
    assert sorted(pd.read_csv(out / "results.csv")["arm"].unique()) == ["bioformer", "scgpt"]
    assert "--arms bioformer,scgpt" in (out / "summary.md").read_text()
    with pytest.raises(BioformerError, match="unknown arm.*its arms are: scgpt, bioformer, bioformer-no-pair-path"):
        suite.plan_study("same-attention", "quick", arms=["nope"])


def test_depth_arms_separate_the_pair_path_from_depth():
    plan = suite.plan_study("depth", "standard", out="x")
    arms = {a.name: a.model for a in plan.arms(vocab_size=515)}
    bio, plain = arms["bioformer-N8"], arms["bioformer-no-pair-path-N8"]
    assert bio.replace(pair_bias=False, opm=False) == plain  # the pair path is the only difference
    assert ("bioformer-N8", "bioformer-no-pair-path-N8") in plan.pairs()
    assert ("bioformer-N8", "bioformer-N2") in plan.pairs() and ("bioformer-small-N8", "scgpt-large-N2") in plan.pairs()
    assert arms["scgpt-N8"].nlayers == 8 and arms["scgpt-large-N2"].d_model == 2 * arms["scgpt-N2"].d_model


def test_ablation_has_a_linear_pair_mode_arm_that_runs(tiny_inputs, tmp_path):
    """The `linear` arm is the full BioFormer with only the pair mode changed, paired with `full`."""
    standard = suite.plan_study("ablation", "standard", out="x")
    arms = {a.name: a.model for a in standard.arms(vocab_size=515)}
    assert arms["linear"].bioformer.pair_mode == "linear" and arms["linear"].replace(pair_mode="full") == arms["full"]
    assert ("full", "linear") in standard.pairs()
    out = tmp_path / "ablation"
    plan = suite.plan_study("ablation", "quick", out=out, seeds=2, epochs=1, overrides=_overrides(tiny_inputs), arms=["full", "linear"])
    suite.run_study(plan)
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["arm"].unique()) == ["full", "linear"] and df["test_mse"].notna().all()
    assert "pair_mode: linear" in (out / "runs" / "linear" / "seed0" / "config.yaml").read_text()
    assert "full vs linear" in (out / "summary.md").read_text()  # the paired comparison is reported


def test_never_sampled_cells_are_a_second_test_set(tiny_inputs, tmp_path):
    """With max_cells below the data set, each run is also scored on cells the subsample never
    drew: reported beside the test split, paired like every metric."""
    over = _overrides(tiny_inputs)
    over["data"]["max_cells"] = 100
    plan = suite.plan_study("same-params", "quick", out=tmp_path / "s", seeds=2, epochs=1, overrides=over)
    plan = dataclasses.replace(plan, extra_test_cells=40)
    suite.run_study(plan)
    df = pd.read_csv(tmp_path / "s" / "results.csv")
    assert (df["unsampled_n_cells"] == 40).all() and df["test_unsampled_mse"].notna().all()
    extra = __import__("json").loads((tmp_path / "s" / "runs" / "bioformer" / "seed0" / "extra_test.json").read_text())
    split = np.load(tmp_path / "s" / "runs" / "bioformer" / "seed0" / "split.npz", allow_pickle=False)
    assert extra["n_cells"] == 40 and len(split["obs_names"]) == 100  # scored cells are outside the 100 drawn
    assert "unsampled_mse" in set(pd.read_csv(tmp_path / "s" / "pairs.csv")["metric"])
    assert "never-sampled cells" in (tmp_path / "s" / "summary.md").read_text()
    assert suite.plan_study("prior", "standard").extra_test_cells == 4000
    assert suite.plan_study("prior-transfer", "standard").extra_test_cells == 0  # test = a condition, not a sample


def test_planted_study_arms_and_controls(tmp_path):
    from bioformer.data.simulate import parse_spec, simulate

    spec = "synthetic:cells=300,genes=48,tfs=8"
    plan = suite.plan_study("planted", "quick", out=tmp_path, seeds=1, epochs=1, overrides={"data": {"data": spec, "prior": spec, "n_hvg": 48}})
    assert plan.arm_names() == ["planted-both-directions", "zero-z", "planted-rewired", "scgpt"]
    assert ("planted-both-directions", "zero-z") in plan.pairs() and ("planted-both-directions", "planted-rewired") in plan.pairs()
    sd = suite.seed_data(plan, 0)
    truth = simulate(parse_spec(spec)).truth
    held = set(zip(sd.prepared.heldout_edges["source"], sd.prepared.heldout_edges["target"], strict=True))
    assert held and held <= set(zip(truth["source"], truth["target"], strict=True))  # true edges, not given
    ctrl = sd.data_for(sd.arms["planted-rewired"])
    s, t, _ = ctrl.prior.edge_index()
    tokens = sd.prepared.vocab.tokens
    edges = pd.DataFrame({"source": [tokens[i] for i in s], "target": [tokens[i] for i in t]})
    assert ctrl.prior.n_edges == sd.prepared.prior.n_edges
    assert edge_overlap(edges, truth) < 0.05  # the rewired prior carries (almost) no true edge
    with pytest.raises(BioformerError, match="synthetic"):
        suite.plan_study("planted", "quick", out=tmp_path, overrides={"data": {"prior": "collectri"}}).arms(100)


def test_studies_keep_the_pair_mode_their_committed_results_were_made_with():
    """The library default is the linear pair mode; every study pins the full one (profiles.py),
    in which each committed result was made (a study.json without the field predates the
    option: full was the only mode). So a re-run or resume trains what the results report."""
    import json
    from pathlib import Path

    from bioformer.experiments.profiles import PROFILES

    for profile in PROFILES:
        for study in suite.STUDIES:
            for arm in suite.plan_study(study, profile, out="x").arms(vocab_size=None):
                if arm.model.model == "bioformer":
                    assert arm.model.bioformer.pair_mode == ("linear" if arm.name == "linear" else "full"), (profile, study, arm.name)
    committed = sorted((Path(__file__).parents[2] / "results").glob("*/study.json"))
    assert len(committed) >= 10
    for path in committed:
        made = json.loads(path.read_text())
        plan = suite.plan_study(made["study"], made["profile"], out="x")
        assert plan.model.bioformer.pair_mode == made["model"].get("pair_mode", "full"), path
