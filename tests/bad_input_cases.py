"""Bad-input cases of trust v3 (issue #22), merged into `tests/test_bad_input.py`'s CASES.

A builder returns a `Case`: the CLI argv, an `out` path that must hold nothing afterwards (or
exactly what it held before), `keep` files of the user that must stay byte-identical (else the
command lost data), and a `marker` file that must never appear (else a file executed code).
Every case stops before training when the code is right.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from tests.conftest import H5AD, PRIOR_CSV

TINY = [
    "--n-hvg", "64", "--genes", "hvg", "--prior", "none", "--d-model", "16", "--nhead", "2",
    "--nlayers", "1", "--epochs", "1", "--batch-size", "16", "--max-len", "32", "--num-threads", "1",
    "--no-progress",
]


@dataclass
class Case:
    argv: list[str]
    out: Path | None = None  # must stay absent / unchanged
    keep: tuple[Path, ...] = ()  # user files that must stay byte-identical
    marker: Path | None = None  # must never appear: its presence means code from a file ran


def as_case(built: Case | tuple) -> Case:
    """The older builders return (argv, out)."""
    return built if isinstance(built, Case) else Case(list(built[0]), built[1])


@functools.lru_cache(maxsize=1)
def _fixture() -> ad.AnnData:
    return ad.read_h5ad(H5AD)


def edited_h5ad(tmp: Path, name: str, edit: Callable[[ad.AnnData], ad.AnnData]) -> Path:
    path = tmp / name
    edit(_fixture().copy()).write_h5ad(path)
    return path


@functools.lru_cache(maxsize=1)
def prior_run() -> Path:
    """One real 3-epoch BioFormer run with the fixture prior (so it holds heldout_edges.csv),
    trained enough (no warm-up) that its imputations are not all zero."""
    from bioformer.cli import main

    base = Path(tempfile.mkdtemp(prefix="bioformer-badinput-prior-"))
    code = main(["-q", "train", "--data", str(H5AD), *TINY, "--genes", "hvg+prior", "--prior", str(PRIOR_CSV),
                 "--epochs", "3", "--warmup-steps", "0", "--lr", "0.01", "--out", str(base / "run")])
    assert code == 0
    return base / "run"


def _run_copy(tmp: Path) -> Path:
    run = tmp / "runcopy"
    if not run.exists():
        shutil.copytree(prior_run(), run)
    return run


def _input(tmp: Path, edit: Callable[[ad.AnnData], ad.AnnData] | None = None) -> Path:
    if edit is None:
        p = tmp / "in.h5ad"
        shutil.copy(H5AD, p)
        return p
    return edited_h5ad(tmp, "in.h5ad", edit)


def infer(tmp: Path, cmd: str, *extra: str, out: Path | None = None, data: Path | None = None, run: Path | None = None,
          keep: tuple[Path, ...] = (), edit: Callable[[ad.AnnData], ad.AnnData] | None = None) -> Case:
    """`embed/impute/grn RUN --data IN --out OUT extra...`; IN must never change."""
    inp = data or _input(tmp, edit)
    out = out or tmp / "new.h5ad"
    argv = [cmd, str(run or prior_run()), "--data", str(inp), "--out", str(out), "--no-progress", *extra]
    keeps = tuple(p for p in (inp, *keep) if p.is_file())
    return Case(argv, None if out.exists() else out, keeps)


def _user_file(tmp: Path, name: str, text: str = "the user's own file\n") -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _train(tmp: Path, *extra: str, data: str | Path | None = None) -> Case:
    out = tmp / "run"
    return Case(["train", "--data", str(data or H5AD), *TINY, *extra, "--out", str(out)], out)


# ---------------------------------------------------------------- 1. no code execution
class _Payload:
    """Unpickling this runs code that creates `marker` (a stand-in for anything an attacker wants)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from a pickle ran')",))


def write_malicious_state(path: Path, marker: Path) -> None:
    """A last.pt in torch.save format whose unpickling creates `marker`."""
    torch.save({"epoch": 1, "step": 1, "history": [_Payload(marker)]}, path)


def _malicious_resume(tmp: Path) -> Case:
    run = _run_copy(tmp)
    (run / "summary.json").unlink()
    marker = tmp / "code-ran"
    write_malicious_state(run / "last.pt", marker)
    return Case(["train", "--resume", str(run)], None, (run / "last.pt", run / "config.yaml"), marker)


def _garbage_resume(tmp: Path) -> Case:
    run = _run_copy(tmp)
    (run / "summary.json").unlink()
    (run / "last.pt").write_bytes(b"\x80\x04not a checkpoint")
    return Case(["train", "--resume", str(run)], None, (run / "last.pt",))


# ---------------------------------------------------------------- 2. never clobber
def _overwrite_unmarked(tmp: Path) -> Case:
    d = tmp / "mine"
    keep = (_user_file(d, "config.yaml", "my: own config\n"), _user_file(d, "notes.txt"))
    c = _train(tmp, "--overwrite")
    c.argv[-1], c.out = str(d), None
    c.keep = keep
    return c


def _experiment_user_dir(tmp: Path) -> Case:
    d = tmp / "mine"
    keep = (_user_file(d, "results.csv", "a,b\n1,2\n"), _user_file(d, "summary.json", '{"mine": 1}\n'))
    return Case(["experiment", "ablation", "--profile", "quick", "--data", str(H5AD), "--report-only", "--out", str(d)], None, keep)


def _experiment(tmp: Path, *extra: str, out: Path | None = None) -> Case:
    out = out or tmp / "study"
    return Case(["experiment", "ablation", "--profile", "quick", "--data", str(H5AD), *extra, "--out", str(out)], out)


def _experiment_other_study(tmp: Path) -> Case:
    d = tmp / "study"
    keep = (_user_file(d, "study.json", '{"study": "depth"}\n'), _user_file(d, "results.csv", "a\n1\n"))
    c = _experiment(tmp, "--report-only", out=d)
    c.out, c.keep = None, keep
    return c


def _in_run(tmp: Path, cmd: str, flag: str, name: str, *extra: str) -> Case:
    run = _run_copy(tmp)
    target = run / name
    c = infer(tmp, cmd, *extra, flag, str(target)) if flag != "--out" else infer(tmp, cmd, *extra, out=target)
    c.out = run  # the run directory must not change at all
    return c


def _existing(tmp: Path, cmd: str, flag: str, *extra: str) -> Case:
    mine = _user_file(tmp, "mine.h5ad" if flag == "--out" else "mine.csv")
    if flag == "--out":
        return infer(tmp, cmd, *extra, out=mine, keep=(mine,))
    return infer(tmp, cmd, *extra, flag, str(mine), keep=(mine,))


def _onto_input(tmp: Path, cmd: str, flag: str, *extra: str) -> Case:
    inp = _input(tmp)
    if flag == "--out":
        return infer(tmp, cmd, *extra, out=inp, data=inp)
    return infer(tmp, cmd, *extra, flag, str(inp), data=inp)


# ---------------------------------------------------------------- 5. input data classes
def fifo(tmp: Path, name: str) -> Path:
    p = tmp / name
    os.mkfifo(p)
    return p


def _set(value: float, index: int = 11) -> Callable[[ad.AnnData], ad.AnnData]:
    """An edit that sets stored value number `index` of X to `value`."""

    def edit(a: ad.AnnData) -> ad.AnnData:
        X = a.X.tocsr().copy()
        X.data[index] = value
        a.X = X
        return a

    return edit


def _bool_x(a: ad.AnnData) -> ad.AnnData:
    a.X = np.asarray(a.X.toarray() > 0)
    return a


def _fractional_counts(a: ad.AnnData) -> ad.AnnData:
    X = a.X.tocsr().copy()
    X.data[:50] += 0.5  # counts with a few non-integers (a broken export)
    a.X = X
    return a


def _nan_in_layer(a: ad.AnnData) -> ad.AnnData:
    X = a.X.tocsr().copy()
    X.data[5] = np.nan
    a.layers["counts"] = X
    return a


def _raw_with_inf(a: ad.AnnData) -> ad.AnnData:
    X = a.X.tocsr().copy()
    X.data[5] = np.inf
    a.raw = ad.AnnData(X=X, var=a.var.copy())
    return a


def _chip(tmp: Path, kind: str) -> str:
    if kind == "dir":
        (tmp / "chipdir").mkdir()
        return str(tmp / "chipdir")
    if kind == "fifo":
        return str(fifo(tmp, "chip.json"))
    if kind == "garbage":
        return str(_user_file(tmp, "chip.json", "{not json"))
    return str(tmp / "nope.json")


# ---------------------------------------------------------------- 6. run directory integrity
def _heldout(tmp: Path, damage: str) -> Case:
    run = _run_copy(tmp)
    held = run / "heldout_edges.csv"
    if damage == "missing":
        held.unlink()
    else:
        lines = held.read_text().splitlines()
        held.write_text("\n".join(lines[:-1]) + "\n")
    return Case(["evaluate", str(run)], None)


def _embed_without_heldout(tmp: Path) -> Case:
    run = _run_copy(tmp)
    (run / "heldout_edges.csv").unlink()
    return infer(tmp, "embed", run=run)


def _estimate(*extra: str) -> Case:
    return Case(["estimate", "--n-genes", "64", *extra])


def _estimate_config(tmp: Path, text: str) -> Case:
    p = _user_file(tmp, "cfg.yaml", text)
    return Case(["estimate", "--config", str(p)])


CASES_V3: dict[str, Callable[[Path], Case]] = {
    # 1. no code execution from a file
    "resume-malicious-last-pt": _malicious_resume,
    "resume-garbage-last-pt": _garbage_resume,
    # 2. never clobber
    "train-overwrite-unmarked-dir": _overwrite_unmarked,
    "experiment-out-user-dir": _experiment_user_dir,
    "grn-edges-is-input": lambda t: _onto_input(t, "grn", "--edges"),
    "grn-edges-existing-file": lambda t: _existing(t, "grn", "--edges"),
    "grn-edges-in-run-dir": lambda t: _in_run(t, "grn", "--edges", "metrics.csv"),
    "grn-score-csv-existing-file": lambda t: _existing(t, "grn", "--score-csv", "--score"),
    "grn-score-csv-in-run-dir": lambda t: _in_run(t, "grn", "--score-csv", "summary.json", "--score"),
    "embed-out-existing-file": lambda t: _existing(t, "embed", "--out"),
    "impute-out-existing-file": lambda t: _existing(t, "impute", "--out"),
    "grn-out-existing-file": lambda t: _existing(t, "grn", "--out"),
    "embed-out-in-run-dir": lambda t: _in_run(t, "embed", "--out", "embedded.h5ad"),
    "impute-out-is-input-overwrite": lambda t: _onto_input(t, "impute", "--out", "--overwrite"),
    "grn-edges-is-input-overwrite": lambda t: _onto_input(t, "grn", "--edges", "--overwrite"),
    "embed-out-in-run-dir-overwrite": lambda t: _in_run(t, "embed", "--out", "model.safetensors", "--overwrite"),
    # 3. every option checked before any data is read
    "embed-batch-size-negative": lambda t: infer(t, "embed", "--batch-size", "-3"),
    "impute-batch-size-0": lambda t: infer(t, "impute", "--batch-size", "0"),
    "impute-n-query-0": lambda t: infer(t, "impute", "--n-query", "0"),
    "embed-device-cuda-missing": lambda t: infer(t, "embed", "--device", "cuda:99"),
    "embed-device-unknown": lambda t: infer(t, "embed", "--device", "tpu"),
    "grn-top-k-0": lambda t: infer(t, "grn", "--top-k", "0", "--edges", str(t / "e.csv")),
    "grn-min-cells-negative": lambda t: infer(t, "grn", "--min-cells", "-1", "--edges", str(t / "e.csv")),
    "grn-chip-missing": lambda t: infer(t, "grn", "--score", "--chip", _chip(t, "missing")),
    "grn-chip-directory": lambda t: infer(t, "grn", "--score", "--chip", _chip(t, "dir")),
    "grn-chip-not-json": lambda t: infer(t, "grn", "--score", "--chip", _chip(t, "garbage")),
    "grn-groupby-unknown": lambda t: infer(t, "grn", "--groupby", "no_such_column"),
    "embed-out-under-a-file": lambda t: infer(t, "embed", out=_user_file(t, "afile") / "x.h5ad"),
    "evaluate-folds-huge": lambda t: Case(["evaluate", str(prior_run()), "--folds", "100000"]),
    "evaluate-folds-0": lambda t: Case(["evaluate", str(prior_run()), "--folds", "0"]),
    "estimate-batch-size-0": lambda t: _estimate("--batch-size", "0"),
    "estimate-d-model-not-divisible": lambda t: _estimate("--d-model", "15"),
    "estimate-yaml-string-for-float": lambda t: _estimate_config(t, "train:\n  lr: fast\n"),
    "estimate-n-genes-0": lambda t: _estimate("--n-genes", "0"),
    "estimate-bad-budget": lambda t: _estimate("--budget", "lots"),
    "train-nproc-0": lambda t: _train(t, "--nproc", "0"),
    "train-nproc-negative": lambda t: _train(t, "--nproc", "-1"),
    "experiment-seeds-0": lambda t: _experiment(t, "--seeds", "0"),
    "experiment-first-seed-negative": lambda t: _experiment(t, "--first-seed", "-1"),
    "experiment-jobs-0": lambda t: _experiment(t, "--jobs", "0"),
    "experiment-out-under-a-file": lambda t: _experiment(t, out=_user_file(t, "afile") / "study"),
    "experiment-out-other-study": _experiment_other_study,
    "yaml-device-cuda-missing": lambda t: _train(t, "--config", str(_user_file(t, "cfg.yaml", "train:\n  device: cuda:99\n"))),
    # 5. input data classes
    "data-fifo": lambda t: _train(t, data=fifo(t, "cells.h5ad")),
    "config-fifo": lambda t: _train(t, "--config", str(fifo(t, "cfg.yaml"))),
    "config-directory": lambda t: _train(t, "--config", str(t)),
    "prior-fifo": lambda t: _train(t, "--genes", "hvg+prior", "--prior", str(fifo(t, "prior.csv"))),
    "prior-directory": lambda t: _train(t, "--genes", "hvg+prior", "--prior", str(t)),
    "embed-data-fifo": lambda t: infer(t, "embed", data=fifo(t, "cells.h5ad")),
    "embed-data-directory": lambda t: infer(t, "embed", data=t),
    "grn-chip-fifo": lambda t: infer(t, "grn", "--score", "--chip", _chip(t, "fifo")),
    "bool-x": lambda t: _train(t, data=edited_h5ad(t, "b.h5ad", _bool_x)),
    "fractional-counts": lambda t: _train(t, data=edited_h5ad(t, "f.h5ad", _fractional_counts)),
    "nan-in-layer": lambda t: _train(t, "--layer", "counts", data=edited_h5ad(t, "l.h5ad", _nan_in_layer)),
    "inf-in-raw": lambda t: _train(t, "--layer", "raw", data=edited_h5ad(t, "r.h5ad", _raw_with_inf)),
    "embed-nan-input": lambda t: infer(t, "embed", edit=_set(np.nan)),
    "impute-inf-input": lambda t: infer(t, "impute", edit=_set(np.inf)),
    "grn-negative-input": lambda t: infer(t, "grn", edit=_set(-1.0)),
    "embed-bool-x": lambda t: infer(t, "embed", edit=_bool_x),
    "impute-fractional-counts": lambda t: infer(t, "impute", edit=_fractional_counts),
    "evaluate-data-nan": lambda t: Case(["evaluate", str(prior_run()), "--data", str(edited_h5ad(t, "n.h5ad", _set(np.nan)))]),
    # 6. run directory integrity
    "evaluate-heldout-missing": lambda t: _heldout(t, "missing"),
    "evaluate-heldout-edited": lambda t: _heldout(t, "edited"),
    "embed-heldout-missing": _embed_without_heldout,
}
