"""Per-API request counters and latency quantiles for `cortexd get` (p50/p99).

A fixed log-bucket histogram: each bucket is 4 % wider than the one before, from 10 µs to
one hour, so `observe` is one log and one list increment (O(1), no allocation) and a
quantile is reported within about 2 % of the true value, however many requests came.
Figures run since the daemon started, the same population as the request counters beside
them. Used from the event loop only, so there is no lock.
"""

from __future__ import annotations

import math
from typing import Any

MIN_SECONDS = 1e-5           # below: bucket 0
MAX_SECONDS = 3600.0         # above: the last bucket
GROWTH = 1.04                # bucket width ratio; the reported value is the bucket's geometric middle
_INV_LOG_GROWTH = 1.0 / math.log(GROWTH)
N_BUCKETS = int(math.ceil(math.log(MAX_SECONDS / MIN_SECONDS) * _INV_LOG_GROWTH)) + 2


def bucket_index(seconds: float) -> int:
    """Bucket 0 holds [0, MIN); bucket i >= 1 holds [MIN * G**(i-1), MIN * G**i); the last catches the rest."""
    if seconds < MIN_SECONDS:
        return 0
    index = int(math.log(seconds / MIN_SECONDS) * _INV_LOG_GROWTH) + 1
    return index if index < N_BUCKETS else N_BUCKETS - 1


def bucket_middle(index: int) -> float:
    """A representative value (seconds) for bucket `index`."""
    if index == 0:
        return MIN_SECONDS / 2
    factor: float = GROWTH ** (index - 0.5)  # a positive base: a float (typeshed says Any)
    return MIN_SECONDS * factor


class LatencyStats:
    """Requests by status class, and a latency histogram of the successful (2xx) ones.

    Only 2xx answers go into the quantiles: a 503 shed at once or a 400 for a bad payload
    would otherwise make the model look faster than it is. Errors are counted beside them.
    """

    __slots__ = ("requests", "ok", "client_errors", "server_errors", "_buckets", "_count", "_min", "_max")

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.client_errors = 0
        self.server_errors = 0
        self._buckets = [0] * N_BUCKETS
        self._count = 0
        self._min = math.inf
        self._max = -math.inf

    def observe(self, seconds: float, code: int = 200) -> None:
        """Count one answered request with HTTP status `code` that took `seconds`."""
        self.requests += 1
        if code < 300:
            if code >= 200:
                self.ok += 1
                self._record(seconds)
        elif code >= 500:
            self.server_errors += 1
        elif code >= 400:
            self.client_errors += 1

    def _record(self, seconds: float) -> None:
        if not seconds >= 0.0:     # negative or NaN: a clock oddity, not a latency
            return
        self._buckets[bucket_index(seconds)] += 1
        self._count += 1
        if seconds < self._min:
            self._min = seconds
        if seconds > self._max:
            self._max = seconds

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) of 2xx latencies in milliseconds (nearest rank), None before any."""
        if self._count == 0:
            return None
        rank = max(1, math.ceil(q * self._count))
        seen = 0
        value = self._max
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                value = bucket_middle(index)
                break
        # The exact extremes are known: never report a value outside them.
        value = min(max(value, self._min), self._max)
        return value * 1000.0

    def snapshot(self) -> dict[str, Any]:
        """The `metrics` object of `cortexd get --json`."""
        p50 = self.quantile(0.5)
        p99 = self.quantile(0.99)
        return {
            "requests": self.requests,
            "2xx": self.ok,
            "4xx": self.client_errors,
            "5xx": self.server_errors,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
        }
