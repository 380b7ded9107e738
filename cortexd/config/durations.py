"""Durations in cortex.yaml (`batch_interval: 10ms`), written as Cortex wrote them: Go's
time.ParseDuration syntax, a number with a unit, or several ("1m30s").

A bare number is refused rather than guessed: Cortex never accepted one, and whether 2 means
seconds or milliseconds is exactly the mistake a unit prevents.
"""

from __future__ import annotations

import math
import re

DURATION_ACCEPTED = 'a duration with a unit: "10ms", "0.5s", "250us", "1m30s" (units ns, us, ms, s, m, h)'

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Seconds: "10ms" -> 0.01, "0.5s" -> 0.5, "1m30s" -> 90.0. Raises ValueError saying why."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        hint = f'; write "{value}s" for seconds or "{value}ms" for milliseconds' if not isinstance(value, bool) else ""
        return _fail(f"expected {DURATION_ACCEPTED}, got a number without a unit ({shown}){hint}")
    if not isinstance(value, str):
        return _fail(f"expected {DURATION_ACCEPTED}, got {type(value).__name__}")
    text = value.strip()
    at, seconds = 0, 0.0
    while at < len(text):
        match = _PART.match(text, at)
        if match is None:
            return _fail(f'expected {DURATION_ACCEPTED}, got "{value}"')
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    if at == 0:
        return _fail(f'expected {DURATION_ACCEPTED}, got "{value}"')
    if not math.isfinite(seconds):
        return _fail(f'"{value}" is too long')
    return seconds


def _fail(message: str) -> float:
    raise ValueError(message)


def format_duration(seconds: float) -> str:
    """The short form messages show: 0.002 -> "2ms", 1.5 -> "1.5s", 0.00025 -> "250us"."""
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"
