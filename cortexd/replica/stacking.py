"""Running the samples of several requests through a model as one batch, and splitting the
outputs back: the ONNX and TensorFlow side of server-side batching.

Each request's payload has already become its own feed dict (input name -> array with the
batch axis first: `to_array` adds the axis to a single sample, so one sample is 1 row and a
request that sent k samples is k rows). Requests whose feeds agree on everything but the
number of rows (same input names, dtypes and trailing dimensions) are concatenated along
axis 0 and run once; each gets its own rows of every output back, exactly the arrays it
would have got alone. Requests that cannot be stacked with others (a different trailing
shape, inputs that disagree on their row count) run alone.

When a stacked run is refused as a payload problem (the inputs passed our checks but not
the model's own), or an output does not have one row per input row, nobody's request is
blamed for the others': the group falls back to one run per request, so each request gets
its own answer or its own 400.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from cortexd.replica.predictors import PayloadError

Feeds = dict[str, Any]  # input name -> numpy array
Arrays = dict[str, Any]  # output name -> numpy array
# What a request gets: its outputs, or the exception its run raised (PayloadError: its 400).
Outcome = "Arrays | BaseException"


class StackedModel(Protocol):
    """What a model client offers for stacking (ONNXClient and TensorFlowClient have these)."""

    def to_inputs(self, payload: Any) -> Feeds: ...  # raises PayloadError when it does not fit

    def run_arrays(self, feeds: Feeds) -> Arrays: ...  # raises PayloadError when the model refuses


def _log(message: str) -> None:
    sys.stderr.write(f"batching: {message}\n")
    sys.stderr.flush()


def rows_of(feeds: Feeds) -> int | None:
    """The number of rows (samples) in a feed dict, or None when its inputs disagree or one
    of them has no first axis."""
    rows = {arr.shape[0] if getattr(arr, "ndim", 0) else None for arr in feeds.values()}
    if len(rows) != 1:
        return None
    (count,) = rows
    return count


def stack_key(feeds: Feeds) -> tuple[Any, ...]:
    """Requests with the same key can be concatenated along axis 0."""
    return tuple(sorted((name, arr.dtype.str, arr.shape[1:]) for name, arr in feeds.items()))


def groups(all_feeds: list[Feeds]) -> list[list[int]]:
    """Indexes of requests that stack together, each group in request order; requests that
    stack with nothing are groups of one."""
    by_key: dict[tuple[Any, ...], list[int]] = {}
    out: list[list[int]] = []
    for i, feeds in enumerate(all_feeds):
        if not feeds or rows_of(feeds) is None:
            out.append([i])
            continue
        key = stack_key(feeds)
        group = by_key.get(key)
        if group is None:
            group = by_key[key] = []
            out.append(group)
        group.append(i)
    return out


def _alone(model: StackedModel, feeds: Feeds) -> Any:
    try:
        return model.run_arrays(feeds)
    except BaseException as exc:  # a PayloadError is this request's 400; anything else its 500
        return exc


def run_stacked(model: StackedModel, all_feeds: list[Feeds]) -> list[Any]:
    """One outcome per feed dict, in order: its output arrays, or the exception its run raised."""
    import numpy as np

    outcomes: list[Any] = [None] * len(all_feeds)
    for group in groups(all_feeds):
        if len(group) == 1:
            outcomes[group[0]] = _alone(model, all_feeds[group[0]])
            continue
        counts = [rows_of(all_feeds[i]) or 0 for i in group]
        total = sum(counts)
        names = list(all_feeds[group[0]])
        stacked = {name: np.concatenate([all_feeds[i][name] for i in group], axis=0) for name in names}
        try:
            outputs = model.run_arrays(stacked)
        except PayloadError:
            outputs = None  # which request's fault? run them one by one to tell
        except BaseException as exc:  # the model itself failed: every request of the run fails
            for i in group:
                outcomes[i] = exc
            continue
        if outputs is not None:
            bad = [n for n, arr in outputs.items() if getattr(arr, "ndim", 0) == 0 or arr.shape[0] != total]
            if bad:
                _log(f"output {bad[0]!r} does not have one row per sample ({total} samples stacked); "
                     "running the requests of this batch one by one")
                outputs = None
        if outputs is None:
            for i in group:
                outcomes[i] = _alone(model, all_feeds[i])
            continue
        at = 0
        for i, count in zip(group, counts, strict=True):
            outcomes[i] = {name: arr[at : at + count] for name, arr in outputs.items()}
            at += count
    return outcomes
