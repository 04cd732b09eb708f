"""bioformer embed | impute | grn: new .h5ad written atomically, input untouched, one error line."""

from __future__ import annotations

import hashlib
import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioformer import Run
from bioformer.cli import main
from tests.conftest import H5AD


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """60 fixture cells, minus three run genes, with a condition column; written to disk."""
    a = ad.read_h5ad(H5AD)[:60].copy()
    a.obs["condition"] = np.where(np.arange(a.n_obs) % 2, "stim", "ctrl")
    path = tmp_path_factory.mktemp("input") / "cells.h5ad"
    a.write_h5ad(path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_embed_writes_obsm_and_leaves_the_input_alone(runs, small_input, tmp_path):
    before = _digest(small_input)
    out = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(runs["scgpt"]), "--data", str(small_input), "--out", str(out), "--batch-size", "7", "--no-progress"]) == 0
    assert _digest(small_input) == before
    res = ad.read_h5ad(out)
    ref = Run.load(runs["scgpt"], device="cpu").embed(ad.read_h5ad(small_input))
    np.testing.assert_allclose(res.obsm["X_scgpt"], ref, atol=1e-5)  # keys are named after the family
    assert "X_bioformer" not in res.obsm
    assert res.uns["X_scgpt"]["pooling"] == "cls"
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind


def test_impute_writes_layers_over_the_input_genes(runs, small_input, tmp_path):
    out = tmp_path / "imp.h5ad"
    assert main(["-q", "impute", str(runs["bioformer"]), "--data", str(small_input), "--out", str(out), "--no-progress"]) == 0
    res = ad.read_h5ad(out)
    run = Run.load(runs["bioformer"], device="cpu")
    imp = run.imputation(ad.read_h5ad(small_input))
    layer = res.layers["bioformer_imputed"]
    assert sp.issparse(layer) and layer.shape == (res.n_obs, res.n_vars)
    run_col = {g: i for i, g in enumerate(run.genes)}
    in_run = np.array([g in run_col for g in res.var_names])
    cols = [run_col[g] for g in res.var_names[in_run]]
    np.testing.assert_allclose(layer[:, in_run].toarray(), imp.expression[:, cols], atol=1e-5)
    np.testing.assert_allclose(res.layers["bioformer_imputed_bins"][:, in_run].toarray(), imp.bins[:, cols], atol=1e-5)
    assert layer[:, ~in_run].nnz == 0


def test_grn_writes_varp_and_a_ranked_edge_list(runs, small_input, tmp_path):
    out, edges_csv = tmp_path / "grn.h5ad", tmp_path / "edges.csv"
    args = ["-q", "grn", str(runs["bioformer"]), "--data", str(small_input), "--out", str(out), "--edges", str(edges_csv), "--top-k", "25", "--no-progress"]
    assert main(args) == 0
    res = ad.read_h5ad(out)
    run = Run.load(runs["bioformer"], device="cpu")
    pairs = run.pair_scores(ad.read_h5ad(small_input))
    varp = res.varp["bioformer_pair_scores"]
    assert sp.issparse(varp) and varp.shape == (res.n_vars, res.n_vars)
    edges = pd.read_csv(edges_csv)
    assert list(edges.columns) == ["source", "target", "score", "n_cells"] and len(edges) == 25
    assert (np.diff(edges["score"]) <= 0).all() and (edges["n_cells"] >= 1).all()
    top = edges.iloc[0]
    s, t = run.genes.index(top["source"]), run.genes.index(top["target"])
    assert top["score"] == pytest.approx(pairs.scores[s, t], abs=1e-6)
    assert top["score"] == pytest.approx(pairs.scores[~np.eye(len(run.genes), dtype=bool) & (pairs.n_cells > 0)].max(), abs=1e-6)
    names = list(res.var_names)
    assert varp[names.index(top["source"]), names.index(top["target"])] == pytest.approx(top["score"], abs=1e-5)
    # one matrix per condition
    out2 = tmp_path / "grn2.h5ad"
    assert main(["-q", "grn", str(runs["bioformer"]), "--data", str(small_input), "--out", str(out2), "--groupby", "condition", "--no-progress"]) == 0
    assert {"bioformer_pair_scores_ctrl", "bioformer_pair_scores_stim"} <= set(ad.read_h5ad(out2).varp)


def test_grn_score_prints_the_table_of_the_written_scores(runs, small_input, tmp_path, capsys):
    """`grn --score` scores exactly the matrix it writes, against the run's held-out edges and ChIP."""
    from bioformer.evaluation.grn import score_run

    held = pd.read_csv(runs["bioformer"] / "heldout_edges.csv")
    chip = tmp_path / "chip.json"
    chip.write_text(json.dumps({f"{tf} K562": list(held.loc[held["source"] == tf, "target"]) for tf in held["source"].unique()}))
    table_csv = tmp_path / "grn.csv"
    args = ["-q", "grn", str(runs["bioformer"]), "--data", str(small_input), "--out", str(tmp_path / "g.h5ad"),
            "--score", "--chip", str(chip), "--score-csv", str(table_csv), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "heldout prior edges:" in printed and "pair scores (all)" in printed and "random level" in printed
    table = pd.read_csv(table_csv)
    pairs = Run.load(runs["bioformer"], device="cpu").pair_scores(ad.read_h5ad(small_input))
    # the written matrix, with pairs never seen together as "no opinion" (ranked last, not 0)
    direct = score_run(runs["bioformer"], {"pair scores (all)": pairs.ranked()}, genes=pairs.genes, chip_path=chip)
    got = table[table["predictor"] == "pair scores (all)"].set_index("truth")["average_precision"]
    want = direct[direct["predictor"] == "pair scores (all)"].set_index("truth")["average_precision"]
    assert set(got.index) == {"heldout prior edges", "heldout prior edges, reverse not given", "chip"}
    assert got.to_dict() == pytest.approx(want.to_dict(), abs=1e-9)
    assert main(["-q", "grn", str(runs["bioformer"]), "--data", str(small_input), "--out", str(tmp_path / "h.h5ad"), "--score-csv", "x.csv"]) == 2
    assert not (tmp_path / "h.h5ad").exists()


def test_bad_inputs_exit_2_and_write_nothing(runs, small_input, tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["scgpt"], unfinished)
    (unfinished / "summary.json").unlink()
    bad_genes = tmp_path / "bad.h5ad"
    a = ad.read_h5ad(small_input)
    a.var_names = [f"X{i}" for i in range(a.n_vars)]
    a.write_h5ad(bad_genes)
    cases = {
        "not a finished run directory": ["embed", str(unfinished), "--data", str(small_input)],
        "none of the run's": ["embed", str(runs["scgpt"]), "--data", str(bad_genes)],
        "is the input file": ["impute", str(runs["scgpt"]), "--data", str(small_input), "--out", str(small_input)],
        "file not found": ["grn", str(runs["scgpt"]), "--data", str(tmp_path / "missing.h5ad")],
    }
    for message, args in cases.items():
        if "--out" not in args:
            args = [*args, "--out", str(out)]
        assert main(["-q", *args]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
        assert not out.exists()
