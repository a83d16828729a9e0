"""The preprocessing cache: each photograph is preprocessed once and kept as a uint8 `.npy` array.

Layout: `ROOT/<settings-hash>/<key[:2]>/<key>.npy`, where the key is the SHA-1 of the source file's
resolved path, size and modification time (so an edited or replaced photograph is preprocessed
again) and the settings hash covers every `PreprocessConfig` field plus `CACHE_FORMAT_VERSION` (so
changed settings never mix with old entries; `ROOT/<settings-hash>/settings.json` says which
settings a folder holds). Entries are written to a temporary file and renamed into place, so a
killed process never leaves a broken entry; an entry that is unreadable anyway (disk trouble, a
copy cut short) is recomputed, never trusted.

Decisions where the task left room:

- The field-of-view circle is not cached: training needs only the pixels, and predict / explain
  call `preprocess_image` directly, which returns the circle (Grad-CAM is drawn on the preprocessed
  image, which is what the model saw).
- Failures are not cached: a failed image is tried again by the next `prepare_images` (it is cheap,
  rare, and the file may have been fixed).
- Workers are started with `forkserver` (POSIX) or `spawn`, never `fork`: forking a process that
  already runs OpenCV or PyTorch thread pools can deadlock the children.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from eyefuse.config import PreprocessConfig
from eyefuse.data.preprocess import PreprocessError, preprocess_image
from eyefuse.errors import ConfigError
from eyefuse.utils.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

#: Bump when preprocessing changes its output for the same settings: old entries are then ignored.
CACHE_FORMAT_VERSION = 3  # 2: even crop side, bilinear under 2x, uint8 Graham downsample; 3: field of view
# on source block means with ellipse / cropped / extent fallbacks, large non-JPEG images box-reduced
#: Temporary files older than this (seconds) are left over by a killed run and removed by `prepare_images`.
STALE_TMP_SECONDS = 3600.0


def settings_dict(cfg: PreprocessConfig) -> dict[str, object]:
    """The preprocessing settings with canonical types (an int given for a float field hashes the
    same as the float), plus the cache format version."""
    hints = typing.get_type_hints(PreprocessConfig)
    values: dict[str, object] = {}
    for key, value in asdict(cfg).items():
        if hints.get(key) is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[key] = value
    return {"cache_format": CACHE_FORMAT_VERSION, "preprocess": values}


def settings_hash(cfg: PreprocessConfig) -> str:
    """16 hex digits identifying `cfg` (and the cache format)."""
    text = json.dumps(settings_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PreprocessCache:
    """Preprocessed photographs on disk, keyed by source file and settings.

    Picklable (DataLoader workers use `.load`). Several processes may fill the same cache at once:
    each entry is written atomically, and two processes computing the same entry write the same
    bytes.

    Args:
        root: the cache folder (created on the first write).
        cfg: preprocessing settings; entries for other settings live in other sub-folders.
    """

    def __init__(self, root: Path | str, cfg: PreprocessConfig):
        cfg.validate()
        self.root = Path(root)
        self.cfg = cfg
        self.settings_hash = settings_hash(cfg)
        self.dir = self.root / self.settings_hash
        self._settings_written = False

    def __repr__(self) -> str:
        return f"PreprocessCache({str(self.root)!r}, settings {self.settings_hash})"

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_settings_written"] = False  # another process checks again
        return state

    def key(self, path: Path | str) -> str:
        """SHA-1 of the resolved path, size and modification time (ns) of the source file."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise PreprocessError(p, "file not found") from None
        except OSError as e:
            raise PreprocessError(p, f"could not read file ({e.strerror or e})") from None
        ident = f"{p.resolve()}\n{st.st_size}\n{st.st_mtime_ns}"
        return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def entry_path(self, path: Path | str) -> Path:
        """Where the entry for the photograph `path` lives (whether or not it exists)."""
        key = self.key(path)
        return self.dir / key[:2] / f"{key}.npy"

    def contains(self, path: Path | str) -> bool:
        """Whether an entry exists for the current version of `path` (not checked for damage;
        `load` checks). False for a missing source file."""
        try:
            return self.entry_path(path).is_file()
        except PreprocessError:
            return False

    def load(self, path: Path | str) -> np.ndarray:
        """The preprocessed photograph (RGB uint8 `size x size x 3`), from the cache or computed
        with `preprocess_image` and stored.

        Raises:
            PreprocessError: the photograph cannot be preprocessed (not cached).
        """
        entry = self.entry_path(path)
        cached = self._read(entry, path)
        if cached is not None:
            return cached
        image, _ = preprocess_image(path, self.cfg)
        self._store(entry, image)
        return image

    def ensure(self, path: Path | str, notes: list[str] | None = None) -> bool:
        """Make sure a sound entry exists for `path`; True if it had to be computed. `notes` receives
        what did not stop preprocessing (corrupt JPEG data) when it is computed now.

        Raises:
            PreprocessError: the photograph cannot be preprocessed.
        """
        entry = self.entry_path(path)
        if self._read(entry, path) is not None:
            return False
        image, _ = preprocess_image(path, self.cfg, notes=notes)
        self._store(entry, image)
        return True

    def _read(self, entry: Path, source: Path | str) -> np.ndarray | None:
        try:
            arr = np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            log.warning("cache entry %s for %s is unreadable (%s); preprocessing again", entry, source, e)
            return None
        size = self.cfg.size
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != (size, size, 3):
            what = f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
            log.warning(
                "cache entry %s for %s holds %s, expected uint8 (%d, %d, 3); preprocessing again",
                entry,
                source,
                what,
                size,
                size,
            )
            return None
        return arr

    def _store(self, entry: Path, image: np.ndarray) -> None:
        if not self._settings_written:
            settings_file = self.dir / "settings.json"
            if not settings_file.is_file():
                atomic_write_json(settings_file, settings_dict(self.cfg))
            self._settings_written = True
        with atomic_open(entry, "wb") as f:
            np.save(f, np.ascontiguousarray(image), allow_pickle=False)

    def remove_stale_tmp(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Delete temporary files left by killed writers (older than `older_than` seconds, so that
        files being written right now by another process are left alone); returns how many."""
        if not self.dir.is_dir():
            return 0
        now = time.time()
        removed = 0
        for tmp in self.dir.glob("*/.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # another process removed or renamed it meanwhile
                continue
        return removed


# --- preparing many photographs -----------------------------------------------------------------


@dataclass
class PrepareResult:
    """What `prepare_images` did.

    Attributes:
        total: distinct photographs asked for.
        cached: already in the cache before this run.
        done: preprocessed and stored by this run.
        failed: `(path, reason)` of each photograph that could not be preprocessed.
        duplicates: paths listed more than once (processed once).
        notes: `(path, note)` of what did not stop preprocessing (corrupt JPEG data), for the
            photographs preprocessed by this run.
        stale_tmp_removed: temporary files of killed earlier runs that were deleted.
    """

    cache_dir: Path
    settings_hash: str
    total: int = 0
    cached: int = 0
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    stale_tmp_removed: int = 0

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def __str__(self) -> str:
        lines = [
            f"{self.total} images: {self.cached} already cached, {self.done} preprocessed, "
            f"{self.n_failed} failed (cache {self.cache_dir / self.settings_hash})"
        ]
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} path(s) listed more than once, preprocessed once")
        if self.stale_tmp_removed:
            lines.append(f"removed {self.stale_tmp_removed} temporary file(s) left by an interrupted run")
        for path, reason in self.failed[:10]:
            lines.append(f"  failed: {path}: {reason}")
        if self.n_failed > 10:
            lines.append(f"  ... and {self.n_failed - 10} more")
        return "\n".join(lines)


_worker_cache: PreprocessCache | None = None


def _init_worker(cache: PreprocessCache) -> None:
    global _worker_cache
    cv2.setNumThreads(1)  # one image per process: OpenCV's own threads would only oversubscribe
    _worker_cache = cache


def _prepare_one(path: str) -> tuple[str, bool, str | None, list[str]]:
    """(path, newly computed, failure reason or None, notes), in a worker or inline."""
    assert _worker_cache is not None
    notes: list[str] = []
    try:
        return path, _worker_cache.ensure(path, notes), None, notes
    except PreprocessError as e:
        return path, False, e.reason, notes


def _usable_cores() -> int:
    # The cores this process may run on (a container or `taskset` may allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _mp_context() -> multiprocessing.context.BaseContext:
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def prepare_images(
    paths: Iterable[Path | str],
    cfg: PreprocessConfig,
    cache_dir: Path | str,
    *,
    workers: int = 0,
    progress: bool = True,
) -> PrepareResult:
    """Preprocess every photograph not yet in the cache, in parallel.

    Each entry is stored by the process that computed it as soon as it is done, so a run that is
    killed and started again redoes nothing that was finished.

    Args:
        paths: photographs (duplicates are processed once and reported).
        cfg: preprocessing settings.
        cache_dir: the cache root (`PreprocessCache` layout).
        workers: processes; 0 = all cores this process may use, 1 = in this process.
        progress: show a tqdm progress bar.

    Returns:
        Counts (total, cached, done) and failures with reasons.
    """
    global _worker_cache
    cache = PreprocessCache(cache_dir, cfg)
    result = PrepareResult(cache_dir=Path(cache_dir), settings_hash=cache.settings_hash)
    if workers < 0:
        raise ConfigError(f"--workers (data.workers) must be 0 (all cores) or positive, not {workers}")

    unique: list[str] = []
    seen: set[str] = set()
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            result.duplicates.append(str(p))
            continue
        seen.add(key)
        unique.append(str(p))
    result.total = len(unique)
    result.stale_tmp_removed = cache.remove_stale_tmp()

    todo = [p for p in unique if not cache.contains(p)]
    result.cached = result.total - len(todo)
    n_workers = min(workers or _usable_cores(), len(todo))
    bar = tqdm(
        total=len(todo),
        disable=not progress or not todo,
        desc="preprocessing",
        unit="img",
        dynamic_ncols=True,
    )
    bar.set_postfix_str(f"{result.cached} already cached")
    outcomes: dict[str, tuple[bool, str | None, list[str]]] = {}
    try:
        if n_workers <= 1:
            previous = _worker_cache
            _worker_cache = cache
            try:
                for p in todo:
                    _, new, reason, notes = _prepare_one(p)
                    outcomes[p] = (new, reason, notes)
                    bar.update()
            finally:
                _worker_cache = previous
        else:
            chunksize = max(1, min(16, len(todo) // (n_workers * 8)))
            with _mp_context().Pool(n_workers, initializer=_init_worker, initargs=(cache,)) as pool:
                for p, new, reason, notes in pool.imap_unordered(_prepare_one, todo, chunksize=chunksize):
                    outcomes[p] = (new, reason, notes)
                    bar.update()
    finally:
        bar.close()

    for p in todo:  # report in input order, whatever order the workers finished in
        new, reason, notes = outcomes[p]
        result.notes += [(p, note) for note in notes]
        if reason is not None:
            result.failed.append((p, reason))
        elif new:
            result.done += 1
        else:  # another process stored it between `contains` and our turn
            result.cached += 1
    return result


def write_prepare_report(
    result: PrepareResult, path: Path | str, excluded: Sequence[tuple[str, str]] = ()
) -> None:
    """Write `path,status,reason` for every eye left out before preprocessing (status `excluded`,
    given by the caller), every photograph that failed (`failed`), every one used despite a problem
    such as corrupt JPEG data (`note`) and every duplicate listing (`duplicate`), atomically. A
    header-only file means none."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "status", "reason"])
        for p, reason in excluded:
            writer.writerow([p, "excluded", reason])
        for p, reason in result.failed:
            writer.writerow([p, "failed", reason])
        for p, note in result.notes:
            writer.writerow([p, "note", note])
        for p in result.duplicates:
            writer.writerow([p, "duplicate", "listed more than once; preprocessed once"])


__all__ = [
    "CACHE_FORMAT_VERSION",
    "PrepareResult",
    "PreprocessCache",
    "prepare_images",
    "settings_dict",
    "settings_hash",
    "write_prepare_report",
]
