"""The figures a prediction tracker keeps, and how one prediction becomes a figure (pure).

Classification figures are label -> count; regression figures are [count, sum, min, max].
Used by the tracker (tracker.py) and its database (tracker_db.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CLASSIFICATION = "classification"
REGRESSION = "regression"
OTHER_LABEL = "other"
BUCKET_SECONDS = 60
HOUR_BUCKETS = 60            # "last hour" = the current minute bucket and the 59 before it
MAX_LABEL_CHARS = 200        # a longer label is cut, so one row cannot hold a whole document
WARN_INTERVAL_S = 60.0       # at most one "skipped" warning per API per interval
TOTALS_ONLY = -(2**62)      # unwritten deltas older than the hour: they only add to the totals

# Classification figures: label -> count.  Regression figures: [count, sum, min, max].
ClassFigures = dict[str, int]
RegFigures = list[float]
Figures = ClassFigures | RegFigures


class Skip(Exception):
    """A prediction that cannot be tracked; the message says why (for the warning)."""


@dataclass
class ApiTrack:
    model_type: str
    key: str | None
    since: float
    total: Figures
    minutes: dict[int, Figures]            # minute -> figures, last hour only (flushed part)
    pending: dict[int, Figures]            # minute -> observed since the last flush (the hot path writes only here)
    unwritten: dict[int, Figures] = field(default_factory=dict)   # flushed into memory, disk write failed
    labels: set[str] = field(default_factory=set)   # known labels (classification), bounded
    skipped: int = 0                       # predictions skipped since this process started
    skipped_unreported: int = 0
    last_warning: float = -math.inf


def empty(model_type: str) -> Figures:
    if model_type == CLASSIFICATION:
        return {}
    return [0, 0.0, math.inf, -math.inf]


def merge(model_type: str, into: Figures, delta: Figures) -> None:
    if model_type == CLASSIFICATION:
        assert isinstance(into, dict) and isinstance(delta, dict)
        for label, n in delta.items():
            into[label] = into.get(label, 0) + n
    else:
        assert isinstance(into, list) and isinstance(delta, list)
        into[0] += delta[0]
        into[1] += delta[1]
        if delta[2] < into[2]:
            into[2] = delta[2]
        if delta[3] > into[3]:
            into[3] = delta[3]


def public(model_type: str, figures: Figures) -> dict[str, Any]:
    """Figures as `cortexd get --json` shows them."""
    if model_type == CLASSIFICATION:
        assert isinstance(figures, dict)
        # Most frequent first, so tables and JSON read the same way.
        ordered = sorted(figures.items(), key=lambda item: (-item[1], item[0]))
        return {"counts": dict(ordered)}
    assert isinstance(figures, list)
    count = int(figures[0])
    if count == 0:
        return {"count": 0, "min": None, "max": None, "mean": None}
    return {"count": count, "min": figures[2], "max": figures[3], "mean": figures[1] / count}


def extract_value(prediction: Any, model_type: str, key: str | None) -> str | float:
    """The tracked value of one prediction: a label (classification) or a number (regression).

    Raises _Skip with the reason when the prediction cannot be tracked.
    """
    if key is not None:
        if not isinstance(prediction, dict):
            raise Skip(f"tracker.key is {key!r} but the prediction is a {type_name(prediction)}, not an object")
        if key not in prediction:
            raise Skip(f"the prediction has no key {key!r}")
        value = prediction[key]
    else:
        value = prediction
    if model_type == CLASSIFICATION:
        # bool is an int subclass; a True/False "class" is almost surely a mistake, so skip it.
        if isinstance(value, str):
            return value[:MAX_LABEL_CHARS]
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise Skip(f"classification tracks strings or integers, got {type_name(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise Skip("regression value is too large for a float") from None
        if not math.isfinite(number):
            raise Skip(f"regression tracks finite numbers, got {value!r}")
        return number
    raise Skip(f"regression tracks numbers, got {type_name(value)}")


def type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", float: "float", int: "integer"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def older_part(track: ApiTrack) -> Figures:
    """The total minus what the per-minute buckets hold (figures older than an hour)."""
    model_type = track.model_type
    if model_type == CLASSIFICATION:
        total = track.total
        assert isinstance(total, dict)
        older: ClassFigures = dict(total)
        for figures in track.minutes.values():
            assert isinstance(figures, dict)
            for label, n in figures.items():
                older[label] = older.get(label, 0) - n
        return {label: n for label, n in older.items() if n > 0}
    # Regression: count and sum subtract; min/max of the whole total are kept (they bound the part).
    total = track.total
    assert isinstance(total, list)
    reg: RegFigures = list(total)
    for figures in track.minutes.values():
        assert isinstance(figures, list)
        reg[0] -= figures[0]
        reg[1] -= figures[1]
    return reg if reg[0] > 0 else empty(REGRESSION)


def reg_row(row: Any) -> RegFigures:
    count, total, low, high = row
    return [int(count), float(total),
            math.inf if low is None else float(low), -math.inf if high is None else float(high)]


def bucket(buckets: dict[int, Figures], minute: int, model_type: str) -> Figures:
    figures = buckets.get(minute)
    if figures is None:
        figures = buckets[minute] = empty(model_type)
    return figures


def copy(figures: Figures) -> Figures:
    return dict(figures) if isinstance(figures, dict) else list(figures)
