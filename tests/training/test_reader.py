"""The run reader: every way into a run checks the held-out edges against the run's checksums
(Python callers too, not only the CLI), and `grn --score` reads each run file and preprocesses
the run's data once, however many groups it scores."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bioformer.cli import main
from bioformer.errors import BioformerError
from bioformer.evaluation.grn import edges_matrix, score_run
from bioformer.inference import Run
from bioformer.training import reader as reader_mod
from bioformer.training.evaluate import evaluate_run
from bioformer.training.reader import RunReader
from bioformer.training.run import run_training
from tests.conftest import H5AD, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("reader"))
    cfg.train.epochs = 1
    return run_training(cfg, quiet=True)[0]


def test_an_edited_heldout_file_is_refused_by_every_reader(run_dir, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    held = pd.read_csv(edited / "heldout_edges.csv")
    assert len(held) > 1
    held.iloc[1:].to_csv(edited / "heldout_edges.csv", index=False)  # one truth edge fewer: easier scoring
    genes = RunReader(run_dir).vocab().genes
    scores = edges_matrix(held, genes)
    assert not score_run(run_dir, scores).empty  # the intact run scores
    for read in (lambda: score_run(edited, scores), lambda: evaluate_run(edited, quiet=True), lambda: Run.load(edited),
                 lambda: RunReader(edited).prior()):
        with pytest.raises(BioformerError, match="changed after training"):
            read()
    (edited / "heldout_edges.csv").unlink()
    with pytest.raises(BioformerError, match="is missing"):
        score_run(edited, scores)


def test_the_reader_gives_the_training_prior_without_heldout_edges(run_dir):
    reader = RunReader(run_dir)
    held = reader.heldout_edges()
    given = reader.given_edges()
    pairs = set(zip(given["source"], given["target"], strict=True))
    assert len(held) and not pairs & set(zip(held["source"], held["target"], strict=True))
    trained = reader.training_data().prior  # what training built, through prepare_data
    mine = reader.prior()
    assert np.array_equal(trained.keys.numpy(), mine.keys.numpy()) and np.array_equal(trained.codes.numpy(), mine.codes.numpy())


def test_grn_score_reads_the_run_and_its_data_once(run_dir, tmp_path, monkeypatch, capsys):
    calls = {"prepare_data": 0, "load_file": 0, "config": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(reader_mod, "prepare_data", counted("prepare_data", reader_mod.prepare_data))
    monkeypatch.setattr(reader_mod, "load_file", counted("load_file", reader_mod.load_file))
    monkeypatch.setattr(reader_mod.RunConfig, "load", counted("config", reader_mod.RunConfig.load))
    cells = ad.read_h5ad(H5AD)[:40].copy()
    cells.obs["condition"] = np.where(np.arange(cells.n_obs) % 2, "stim", "ctrl")
    cells.write_h5ad(tmp_path / "in.h5ad")
    args = ["-q", "grn", str(run_dir), "--data", str(tmp_path / "in.h5ad"), "--out", str(tmp_path / "g.h5ad"),
            "--groupby", "condition", "--score", "--no-progress"]
    assert main(args) == 0
    assert "pair scores (ctrl)" in capsys.readouterr().out
    assert calls == {"prepare_data": 1, "load_file": 1, "config": 1}
