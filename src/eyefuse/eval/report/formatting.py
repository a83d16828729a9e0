"""Numbers and context values as the report prints them: one place, so the HTML, the Markdown and
the terminal table show the same digits."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eyefuse import ODIR_LABEL_NAMES
from eyefuse.eval.metrics import to_jsonable


def num(value: Any, digits: int = 4) -> str:
    """A metric value for a table: fixed decimals, integers as they are, None/NaN as n/a."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
    return str(value)


def ci(interval: Mapping[str, Any] | None, n_boot: int, digits: int = 3) -> str:
    """`[lo, hi]`, with `(used/n)` appended when some resamples had the metric undefined."""
    if not interval or interval.get("lo") is None or interval.get("hi") is None:
        return "n/a"
    text = f"[{interval['lo']:.{digits}f}, {interval['hi']:.{digits}f}]"
    used = interval.get("n_used")
    if used is not None and n_boot and used < n_boot:
        text += f" ({used}/{n_boot})"
    return text


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal, None as n/a."""
    return "n/a" if value is None else f"{100 * value:.1f} %"


def label_title(label: str) -> str:
    """`D (Diabetes ...)` for an ODIR label, the bare name otherwise."""
    long = ODIR_LABEL_NAMES.get(label)
    return f"{label} ({long})" if long else label


def split_name(value: Any) -> str | None:
    """A split name from a context entry that is a name or a dict with `name`."""
    if isinstance(value, Mapping):
        value = value.get("name")
    return None if value is None else str(value)


def boot_count(evaluation: Mapping[str, Any]) -> int:
    """The number of bootstrap resamples behind the evaluation's intervals (0: none)."""
    return int(evaluation["bootstrap"].get("n") or 0)


def ci_level(evaluation: Mapping[str, Any]) -> str:
    """`95% CI` for the evaluation's bootstrap alpha."""
    alpha = evaluation["bootstrap"].get("alpha", 0.05)
    return f"{100 * (1 - alpha):g}% CI"


def bootstrap_short(evaluation: Mapping[str, Any]) -> str:
    """The bootstrap in a few words, for the subtitle and the terminal."""
    n = boot_count(evaluation)
    if n <= 0:
        return "no bootstrap (no CIs)"
    return f"bootstrap {n} resamples, seed {evaluation['bootstrap'].get('seed')}"


def paths_to_str(obj: Any) -> Any:
    """`obj` with every `Path` (at any depth of mappings and sequences) as a string."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: paths_to_str(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [paths_to_str(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as (dotted key, leaf value) pairs, in insertion order; empty dicts kept."""
    if isinstance(obj, Mapping) and (obj or not prefix):
        out: list[tuple[str, Any]] = []
        for key, value in obj.items():
            out.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, obj)]


def context_value(value: Any) -> str | tuple[str, ...]:
    """A context leaf as text; a list of strings stays a sequence (rendered as bullets)."""
    if isinstance(value, Mapping) and not value:
        return "(empty)"
    if isinstance(value, list | tuple):
        if not value:
            return "(none)"
        if all(isinstance(v, str) for v in value):
            return tuple(str(v) for v in value)
        if all(isinstance(v, int | float | np.integer | np.floating) or v is None for v in value):
            return ", ".join("n/a" if v is None else str(context_value(v)) for v in value)
        return json.dumps(to_jsonable(value), default=str)
    if isinstance(value, float | np.floating):
        return f"{value:.6g}" if math.isfinite(value) else "n/a"
    return num(value)
