"""Finding the photographs an annotation names: the image folder at or below a base folder (known
sub-folders first, then a search a few levels deep), existence checks through one directory listing
per folder, and the missing images collected and reported together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eyefuse.data.layouts import OIA_SPLITS
from eyefuse.errors import DataError

SEARCH_DEPTH = 3
_TEST_FOLDERS = {name.lower() for name, source in OIA_SPLITS if source != "train"}


class FileIndex:
    """Existence checks through one directory listing per folder (7,000 stat calls are slow on
    network file systems; a listing is one call)."""

    def __init__(self) -> None:
        self._listings: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        parent = path.parent
        if parent not in self._listings:
            try:
                self._listings[parent] = frozenset(e.name for e in os.scandir(parent) if e.is_file())
            except OSError:
                self._listings[parent] = frozenset()
        return path.name in self._listings[parent]


def find_image_dir(base: Path, probes: Sequence[str], preferred: Sequence[str]) -> Path | None:
    """The folder at or below `base` holding any of the `probes` file names: `preferred`
    sub-folders first, then `base` itself, then a breadth-first search (hidden and test-set folders
    skipped, as they hold other patients' images)."""
    files = FileIndex()

    def holds(d: Path) -> bool:
        return d.is_dir() and any(files.exists(d / p) for p in probes)

    for rel in preferred:
        if holds(base / rel):
            return base / rel
    if holds(base):
        return base
    level = [base]
    for _ in range(SEARCH_DEPTH):
        nxt: list[Path] = []
        for d in level:
            try:
                children = sorted(e.path for e in os.scandir(d) if e.is_dir())
            except OSError:
                continue
            for c in map(Path, children):
                if c.name.startswith(".") or c.name.lower() in _TEST_FOLDERS:
                    continue
                if holds(c):
                    return c
                nxt.append(c)
        level = nxt
    return None


@dataclass
class MissingImages:
    """Image files named by the annotation that do not exist (reported together)."""

    items: list[tuple[Path, int, str, Path]] = field(default_factory=list)

    def add(self, table_path: Path, row: int, column: str, image: Path) -> None:
        self.items.append((table_path, row, column, image))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        file, row, column, image = self.items[0]
        more = f" ({len(self.items) - 1} more images are missing)" if len(self.items) > 1 else ""
        raise DataError(
            f"image {image} does not exist{more}; pass check_images=False to load the annotation anyway",
            file=file,
            row=row,
            column=column,
        )
