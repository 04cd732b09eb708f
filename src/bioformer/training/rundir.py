"""Run directories and the files around them: what a run holds, who may replace it, where
commands may write. The one place that decides "is this a run" and "may this path be written".

A run directory is marked at creation (`RUN_MARKER`); `train --overwrite` replaces only marked
directories and deletes only the run's own files. Outputs of embed / impute / grn never go onto
their input, into a run directory, or onto an existing file without --overwrite.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from bioformer.errors import BioformerError
from bioformer.training.checkpoint import TRAINING_STATE, atomic_write_json

RUN_MARKER = ".bioformer-run"  # written when `train` creates a run directory
HELDOUT_EDGES = "heldout_edges.csv"
# every file `train` writes; --overwrite deletes these and nothing else
RUN_FILES = (
    "config.yaml", "split.npz", "vocab.json", HELDOUT_EDGES, "metrics.csv", "model.safetensors", "summary.json",
    "curves.png", TRAINING_STATE, RUN_MARKER,
)
CHECKSUMMED = ("config.yaml", "split.npz", "vocab.json", HELDOUT_EDGES, "model.safetensors")  # summary.json "files"


def write_marker(out: Path) -> None:
    """Mark `out` as a directory bioformer created for a run (what --overwrite requires)."""
    if not (out / RUN_MARKER).is_file():
        atomic_write_json(out / RUN_MARKER, {"created_by": "bioformer train", "created": datetime.now(timezone.utc).isoformat()})


def is_run_dir(path: Path) -> bool:
    """A directory bioformer marked as a run, or one holding a run's config and weights (older runs)."""
    return path.is_dir() and ((path / RUN_MARKER).is_file() or ((path / "config.yaml").is_file() and (path / "model.safetensors").is_file()))


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` is a directory this process may write."""
    parent = _first_existing(path.parent)
    if not parent.is_dir():
        raise BioformerError(f"cannot create {flag} {path}: {parent} is a file; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BioformerError(f"cannot write {flag} {path}: {parent} is not writable; choose another {flag}")


def check_out_dir(out: Path, overwrite: bool = False) -> None:
    """Refuse an --out that cannot hold a new run, before any work: a file, a place that cannot
    be created or written, or a directory holding files unless `overwrite` and bioformer marked
    it as a run (a directory that merely holds a config.yaml is never replaced)."""
    if out.exists() and not out.is_dir():
        raise BioformerError(f"--out {out} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            if (out / "summary.json").exists():
                raise BioformerError(f"--out {out} already holds a finished run; pass --overwrite to replace it, or choose another --out")
            raise BioformerError(
                f"--out {out} already holds an unfinished run (no summary.json); pass --resume {out} to continue it, "
                "--overwrite to start it over, or choose another --out"
            )
        if not (out / RUN_MARKER).is_file():
            raise BioformerError(
                f"--out {out} holds files and was not created by bioformer train (no {RUN_MARKER} marker); --overwrite only "
                "replaces directories bioformer marked as runs: choose another --out, or delete it yourself"
            )
    check_writable_parent(out / "x", "--out")


def remove_run_files(out: Path) -> None:
    """Delete the files `train` writes in `out` (and only those)."""
    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)


def check_new_file(path: str | Path, flag: str, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse an output path that is an input, lies in a run directory (never, even with
    `overwrite`), or exists already (unless `overwrite`); its directory must be writable."""
    path = Path(path).expanduser()
    res = path.resolve()
    for src in inputs:
        src = Path(src).expanduser()
        if src.exists() and res == src.resolve():
            raise BioformerError(f"{flag} {path} is the input file {src}; the input is never modified, even with --overwrite: pass another path")
    for d in (res.parent, *res.parent.parents):
        if is_run_dir(d):
            raise BioformerError(f"{flag} {path} is inside the run directory {d}; run files are never written here, even with --overwrite: pass a path outside it")
    if path.is_dir():
        raise BioformerError(f"{flag} {path} is a directory; pass a file path")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise BioformerError(f"{flag} {path} exists and is not a regular file; pass another path")
        if not overwrite:
            raise BioformerError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another path")
    check_writable_parent(path, flag)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_hashes(out: Path) -> dict[str, str]:
    """sha256 of the run files that define what a run scores (summary.json's "files")."""
    return {f: sha256_file(out / f) for f in CHECKSUMMED if (out / f).is_file()}
