"""Tests for eyefuse.data.cache: hits and misses, corrupt entries, interrupted runs, parallel prepare."""

from __future__ import annotations

import csv
import json
import os
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import eyefuse.data.cache as cache_mod
from eyefuse.config import PreprocessConfig
from eyefuse.data.cache import (
    CACHE_FORMAT_VERSION,
    PreprocessCache,
    prepare_images,
    settings_hash,
    write_prepare_report,
)
from eyefuse.data.preprocess import PreprocessError, preprocess_image
from eyefuse.errors import ConfigError

CFG = PreprocessConfig(size=64)


def fundus_jpeg(path: Path, seed: int = 0, w: int = 240, h: int = 180) -> Path:
    """A small photograph: textured orange disc on black, written as JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = 0.45 * h
    d = np.hypot(xx - w / 2, yy - h / 2)
    texture = rng.normal(0, 8, (h, w)).astype(np.float32)
    img = (
        np.array([200, 100, 40], np.float32) * (1 - 0.3 * (d / r) ** 2)[..., None] + texture[..., None]
    ) * (np.clip(r - d + 0.5, 0, 1)[..., None])
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8)[..., ::-1])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


class CountingPreprocess:
    """Stands in for `preprocess_image` in the cache module, counting calls; can fail on call n."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls: list[str] = []
        self.interrupt_on = interrupt_on

    def __call__(self, path, cfg, notes=None):
        self.calls.append(str(path))
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        return preprocess_image(path, cfg, notes=notes)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingPreprocess:
    counter = CountingPreprocess()
    monkeypatch.setattr(cache_mod, "preprocess_image", counter)
    return counter


def test_second_load_hits_the_cache(tmp_path: Path, counting: CountingPreprocess) -> None:
    src = fundus_jpeg(tmp_path / "img" / "1_left.jpg")
    cache = PreprocessCache(tmp_path / "cache", CFG)
    assert not cache.contains(src)
    first = cache.load(src)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, preprocess_image(src, CFG)[0])
    assert cache.contains(src)
    second = cache.load(src)
    assert np.array_equal(first, second)
    assert len(counting.calls) == 1
    entry = cache.entry_path(src)
    assert entry.parent.parent == tmp_path / "cache" / settings_hash(CFG)
    assert entry.parent.name == entry.stem[:2] and entry.suffix == ".npy"
    settings = json.loads((cache.dir / "settings.json").read_text())
    assert settings["cache_format"] == CACHE_FORMAT_VERSION and settings["preprocess"]["size"] == 64


def test_changed_settings_or_source_miss(tmp_path: Path, counting: CountingPreprocess) -> None:
    src = fundus_jpeg(tmp_path / "a.jpg")
    PreprocessCache(tmp_path / "cache", CFG).load(src)
    other = PreprocessCache(tmp_path / "cache", PreprocessConfig(size=64, enhance="none"))
    assert not other.contains(src)
    other.load(src)
    assert len(counting.calls) == 2 and other.dir != PreprocessCache(tmp_path / "cache", CFG).dir
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the photograph was replaced
    assert not PreprocessCache(tmp_path / "cache", CFG).contains(src)
    PreprocessCache(tmp_path / "cache", CFG).load(src)
    assert len(counting.calls) == 3


def test_settings_hash_is_canonical() -> None:
    assert settings_hash(PreprocessConfig(graham_sigma=10)) == settings_hash(
        PreprocessConfig(graham_sigma=10.0)
    )
    assert settings_hash(PreprocessConfig()) != settings_hash(PreprocessConfig(margin=0.05))
    assert settings_hash(PreprocessConfig()) != settings_hash(PreprocessConfig(mask=False))


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "wrong shape", "wrong dtype", "pickled object", "empty"]
)
def test_damaged_entry_is_recomputed(tmp_path: Path, counting: CountingPreprocess, damage: str) -> None:
    src = fundus_jpeg(tmp_path / "a.jpg")
    cache = PreprocessCache(tmp_path / "cache", CFG)
    good = cache.load(src)
    entry = cache.entry_path(src)
    if damage == "garbage":
        entry.write_bytes(b"\x00not an npy file" * 10)
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:1000])
    elif damage == "wrong shape":
        np.save(entry, np.zeros((32, 32, 3), np.uint8))
    elif damage == "wrong dtype":
        np.save(entry, good.astype(np.float32))
    elif damage == "pickled object":
        np.save(entry, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        entry.write_bytes(b"")
    assert np.array_equal(cache.load(src), good)
    assert len(counting.calls) == 2
    assert np.array_equal(np.load(entry, allow_pickle=False), good)  # the entry was repaired


def test_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = fundus_jpeg(tmp_path / "a.jpg")
    cache = PreprocessCache(tmp_path / "cache", CFG)

    def killed_mid_write(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        cache.load(src)
    monkeypatch.undo()
    assert not cache.contains(src)
    assert not [p for p in cache.dir.rglob("*") if p.is_file() and p.name != "settings.json"]
    # A writer killed by a signal cannot clean up; its temporary file is never taken for an entry.
    entry = cache.entry_path(src)
    (entry.parent / f".{entry.name}.abc123.tmp").write_bytes(b"\x93NUMPY partial")
    assert not cache.contains(src)
    assert cache.load(src).shape == (64, 64, 3)


def test_failures_raise_and_are_not_cached(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("no photograph here")
    cache = PreprocessCache(tmp_path / "cache", CFG)
    with pytest.raises(PreprocessError, match="not an image"):
        cache.load(bad)
    assert not cache.contains(bad)
    with pytest.raises(PreprocessError, match="file not found"):
        cache.load(tmp_path / "missing.jpg")
    assert not cache.contains(tmp_path / "missing.jpg")


def test_cache_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    src = fundus_jpeg(tmp_path / "a.jpg")
    cache = PreprocessCache(tmp_path / "cache", CFG)
    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(clone.load(src), cache.load(src))


def test_invalid_settings_or_workers_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preprocess.enhance"):
        PreprocessCache(tmp_path, PreprocessConfig(enhance="bogus"))
    with pytest.raises(ConfigError, match="workers"):
        prepare_images([], CFG, tmp_path, workers=-1)


def test_interrupted_prepare_resumes_with_the_remainder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [fundus_jpeg(tmp_path / "img" / f"{i}.jpg", seed=i) for i in range(5)]
    interrupted = CountingPreprocess(interrupt_on=3)
    monkeypatch.setattr(cache_mod, "preprocess_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(paths, CFG, tmp_path / "cache", workers=1, progress=False)
    cache = PreprocessCache(tmp_path / "cache", CFG)
    assert [cache.contains(p) for p in paths] == [True, True, False, False, False]
    for p in paths[:2]:  # what was stored is whole
        assert cache.load(p).shape == (64, 64, 3)
    assert not list(cache.dir.rglob("*.tmp"))

    resumed = CountingPreprocess()
    monkeypatch.setattr(cache_mod, "preprocess_image", resumed)
    result = prepare_images(paths, CFG, tmp_path / "cache", workers=1, progress=False)
    assert (result.total, result.cached, result.done, result.failed) == (5, 2, 3, [])
    assert resumed.calls == [str(p) for p in paths[2:]]
    again = prepare_images(paths, CFG, tmp_path / "cache", workers=1, progress=False)
    assert (again.cached, again.done) == (5, 0) and len(resumed.calls) == 3


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    cache = PreprocessCache(tmp_path / "cache", CFG)
    (cache.dir / "ab").mkdir(parents=True)
    old = cache.dir / "ab" / ".abcd.npy.x1.tmp"
    fresh = cache.dir / "ab" / ".abce.npy.x2.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    long_ago = time.time() - 2 * cache_mod.STALE_TMP_SECONDS
    os.utime(old, (long_ago, long_ago))
    result = prepare_images([], CFG, tmp_path / "cache", workers=1, progress=False)
    assert result.stale_tmp_removed == 1
    assert not old.exists() and fresh.exists()  # a file being written right now is left alone


def test_parallel_prepare_reports_failures_and_duplicates(tmp_path: Path) -> None:
    good = [fundus_jpeg(tmp_path / "img" / f"{i}.jpg", seed=i) for i in range(3)]
    bad = tmp_path / "img" / "notes.jpg"
    bad.write_text("not a photograph")
    missing = tmp_path / "img" / "missing.jpg"
    paths = [good[0], bad, good[1], missing, good[2], good[0]]
    result = prepare_images(paths, CFG, tmp_path / "cache", workers=2, progress=False)
    assert (result.total, result.cached, result.done) == (5, 0, 3)
    assert result.failed == [(str(bad), "not an image (could not decode)"), (str(missing), "file not found")]
    assert result.duplicates == [str(good[0])]
    text = str(result)
    assert "3 preprocessed" in text and "2 failed" in text and "notes.jpg" in text
    cache = PreprocessCache(tmp_path / "cache", CFG)
    for p in good:
        assert np.array_equal(cache.load(p), preprocess_image(p, CFG)[0])

    report = tmp_path / "prepare_report.csv"
    write_prepare_report(result, report)
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"path": str(bad), "status": "failed", "reason": "not an image (could not decode)"},
        {"path": str(missing), "status": "failed", "reason": "file not found"},
        {"path": str(good[0]), "status": "duplicate", "reason": "listed more than once; preprocessed once"},
    ]
    rerun = prepare_images(paths, CFG, tmp_path / "cache", workers=2, progress=False)
    assert (rerun.cached, rerun.done, len(rerun.failed)) == (3, 0, 2)


def test_corrupt_jpeg_data_is_used_and_listed_as_a_note_in_the_report(tmp_path: Path) -> None:
    good = fundus_jpeg(tmp_path / "img" / "good.jpg", seed=1)
    data = bytearray(fundus_jpeg(tmp_path / "img" / "src.jpg", seed=2).read_bytes())
    mid = (data.index(b"\xff\xda") + len(data)) // 2
    data[mid : mid + 6] = b"\xff\xd5\xff\xd3\x00\xff"  # stray restart markers: libjpeg warns, decodes
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.write_bytes(bytes(data))
    result = prepare_images([good, corrupt], CFG, tmp_path / "cache", workers=1, progress=False)
    assert (result.done, result.failed) == (2, [])
    assert [p for p, _ in result.notes] == [str(corrupt)]
    assert result.notes[0][1].startswith("corrupt JPEG data")
    report = tmp_path / "prepare_report.csv"
    write_prepare_report(result, report, excluded=[("eye.jpg", "not a fundus photograph")])
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["status"]) for r in rows] == [("eye.jpg", "excluded"), (str(corrupt), "note")]
