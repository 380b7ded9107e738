"""Quantities as people read them: the one byte formatter (binary units)."""

from __future__ import annotations


def format_bytes(n: int | float | None, none: str = "-", decimals: int = 1) -> str:
    """"512 B", "1.5 KiB", "123.4 MiB", "2.0 GiB" (tables); with decimals=0, "300 MiB"
    (messages); `none` when unknown."""
    if n is None:
        return none
    value = float(n)
    if abs(value) < 1024:
        return f"{int(value)} B"
    unit = "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024:
            break
    return f"{value:.{decimals}f} {unit}"
