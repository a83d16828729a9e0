"""Errors a user can cause. The CLI prints their message and exits non-zero; nothing else is caught."""

from __future__ import annotations


class EyefuseError(Exception):
    """Base class for every error caused by input, options or files (not by a bug)."""


class DataError(EyefuseError):
    """An annotation file or dataset is malformed: names the file, row and column."""

    def __init__(
        self, message: str, *, file: object = None, row: int | None = None, column: str | None = None
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.file, self.row, self.column = file, row, column
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(EyefuseError):
    """A configuration key, value or command-line option is invalid."""


class CheckpointError(EyefuseError):
    """A checkpoint or exported model is missing, incomplete or incompatible."""


class MissingExtraError(EyefuseError):
    """An optional dependency (a pip extra such as `export` or `serve`) is not installed."""
