"""Byte counts as people read them, in the two forms cortexd writes: binary units with a
space for tables and logs ("1.5 GiB"), and cortex.yaml's own quantities for messages about
what a user configured ("1.5Gi", as they would write compute.mem)."""

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
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        unit = larger
        if abs(value) < 1024:
            break
    return f"{value:.{decimals}f} {unit}"


def format_quantity(n: int) -> str:
    """As cortex.yaml writes sizes: 1073741824 -> "1Gi", 1610612736 -> "1.5Gi", 100 -> "100"."""
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= size:
            text = f"{n / size:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{n}"
