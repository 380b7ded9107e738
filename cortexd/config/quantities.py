"""Resource quantities of cortex.yaml's `compute` section: cpu in cores, mem in bytes, gpu in GPUs.

Cortex took its syntax from Kubernetes resource quantities, so we follow those rules
(suffixes are case-sensitive; `k` is kilo; `Ki` is 1024), with two kindnesses for users:
`K` is accepted as kilo because Cortex's own docs write `K`, and memory values with a
suffix that Kubernetes would read very differently from what the user meant (Docker's
`512m`, `1g`, `1GB`) are rejected with a suggestion instead of silently meaning
0.512 bytes.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, DecimalException

CPU_ACCEPTED = 'cores as a number (2, 0.5) or a string ("1", "0.5", "200m" = 0.2 cores)'
GPU_ACCEPTED = "whole GPUs as an integer (1, 2) or a share of one GPU as a number below 1 (0.25, 0.5)"
MEM_ACCEPTED = (
    'bytes as an integer (134217728), a number with an exponent ("129e6"), or a number with a '
    'suffix: K M G T P E (powers of 1000) or Ki Mi Gi Ti Pi Ei (powers of 1024), e.g. "512Mi", "1G"'
)

# The largest quantity Kubernetes represents; anything above is certainly a typo.
_MAX_BYTES = 2**63 - 1

_CPU_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<milli>m)?$")
_MEM_RE = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>[A-Za-z]+)|[eE](?P<exp>[+-]?[0-9]+))?$"
)

_MEM_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


# Kubernetes' sub-unit suffixes: valid for cpu, nonsense for memory.
_FRACTION_SUFFIXES: dict[str, int] = {"m": 1000, "u": 10**6, "n": 10**9}


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def parse_cpu(value: object) -> float:
    """Cores requested: 2 -> 2.0, 0.5 -> 0.5, "1" -> 1.0, "200m" -> 0.2. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {CPU_ACCEPTED}, got {_describe(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be > 0 cores, got {value}; expected {CPU_ACCEPTED}")
        return float(value)
    text = value.strip()
    match = _CPU_RE.match(text)
    if match is None:
        hint = ' ("m" is milli and lowercase)' if text.endswith("M") else ""
        raise ValueError(f"expected {CPU_ACCEPTED}, got {_describe(value)}{hint}")
    cores = Decimal(match["num"])
    if match["milli"]:
        cores /= 1000
    if cores <= 0:
        raise ValueError(f"must be > 0 cores, got {_describe(value)}")
    return float(cores)


def parse_gpu(value: object) -> float:
    """GPUs requested: 0, 1, 2 (whole GPUs) or a share of one card, 0 < x < 1. Raises ValueError.

    A share above 1 (1.5) is refused: a replica either shares one card or owns whole ones.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected {GPU_ACCEPTED}, got {_describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be >= 0 GPUs, got {value}")
    if value > 1 and value != int(value):
        raise ValueError(
            f"{value} is neither a whole number of GPUs nor a share of one; "
            f"use {math.floor(value)} or {math.ceil(value)} GPUs, or a share below 1"
        )
    return float(value)


def _mem_suffix_hint(number: str, suffix: str) -> str:
    """A suggestion for a suffix that is not a Kubernetes memory suffix (or means milli)."""
    stem = suffix[:-1] if suffix.lower().endswith("b") and len(suffix) > 1 else suffix
    if suffix.lower() in ("ib", "b"):
        return f'; write plain bytes: "{number}"'
    if stem.lower().endswith("i"):
        unit = stem[:-1].upper()
        if unit in ("K", "M", "G", "T", "P", "E"):
            return f'; did you mean "{number}{unit}i"?'
    unit = stem.upper()
    if unit in ("K", "M", "G", "T", "P", "E"):
        return f'; did you mean "{number}{unit}" or "{number}{unit}i"?'
    return ""


def parse_mem(value: object) -> int:
    """Bytes requested: 1000 -> 1000, "1G" -> 10**9, "1Gi" -> 2**30, "129e6" -> 129000000.

    Fractional bytes round up, as Kubernetes does. Raises ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {MEM_ACCEPTED}, got {_describe(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be > 0 bytes, got {value}")
        if value > _MAX_BYTES:
            raise ValueError(f"must be at most {_MAX_BYTES} bytes, got {value}")
        return math.ceil(Decimal(value))
    text = value.strip()
    match = _MEM_RE.match(text)
    if match is None:
        raise ValueError(f"expected {MEM_ACCEPTED}, got {_describe(value)}")
    suffix = match["suffix"] or ""
    if suffix not in _MEM_SUFFIXES:
        if suffix in _FRACTION_SUFFIXES:
            # Kubernetes reads "512m" as 0.512 bytes; a user who writes it means megabytes.
            hint = f' ("{text}" would mean {match["num"]}/{_FRACTION_SUFFIXES[suffix]} of a byte'
            hint += f'; did you mean "{match["num"]}M" or "{match["num"]}Mi"?)' if suffix == "m" else ")"
        else:
            hint = _mem_suffix_hint(match["num"], suffix)
        raise ValueError(f'unknown memory suffix "{suffix}" in "{text}"{hint}; expected {MEM_ACCEPTED}')
    try:
        amount = Decimal(match["num"]) * _MEM_SUFFIXES[suffix]
        if match["exp"] is not None:
            amount = amount.scaleb(int(match["exp"]))
    except (DecimalException, ValueError):
        raise ValueError(f"{_describe(value)} is out of range; expected {MEM_ACCEPTED}") from None
    if amount <= 0:
        raise ValueError(f"must be > 0 bytes, got {_describe(value)}")
    if amount > _MAX_BYTES:
        raise ValueError(f"must be at most {_MAX_BYTES} bytes, got {_describe(value)}")
    return math.ceil(amount)


DURATION_ACCEPTED = 'a duration as Go writes it: a number and a unit (h, m, s, ms), e.g. "60s", "5m", "1m30s", "250ms"'
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: dict[str, Decimal] = {
    "ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "μs": Decimal("1e-6"),
    "ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600),
}


def parse_duration(value: object) -> float:
    """Seconds of a Go duration string, as Cortex parsed its duration keys: "1m30s" -> 90.0.

    "0" alone is zero; a bare number other than 0 is refused (Go refuses it: the unit is
    what says whether 60 means seconds or minutes). Raises ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {DURATION_ACCEPTED}, got {_describe(value)}")
    text = str(value).strip()
    if text in ("0", "+0", "-0", "0.0"):
        return 0.0
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {_describe(value)}")
    body = text[1:] if text.startswith("+") else text
    at = 0
    total = Decimal(0)
    while at < len(body):
        match = _DURATION_PART_RE.match(body, at)
        if match is None:
            hint = (f' (a unit is needed: "{text}s", "{text}ms" or "{text}m"?)'
                    if re.fullmatch(r"[0-9.]+", body) else "")
            raise ValueError(f"expected {DURATION_ACCEPTED}, got {_describe(value)}{hint}")
        total += Decimal(match[1]) * _DURATION_UNITS[match[2]]
        at = match.end()
    if not body:
        raise ValueError(f"expected {DURATION_ACCEPTED}, got {_describe(value)}")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest Go-style text for a duration in seconds: 300 -> "5m", 90 -> "1m30s", 0.1 -> "100ms"."""
    if seconds == 0:
        return "0s"
    if not float(seconds).is_integer():
        millis = Decimal(str(seconds)) * 1000
        return f"{millis.normalize():f}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


SURGE_ACCEPTED = 'a number of replicas (5) or a share of the desired replicas ("25%")'
_SURGE_RE = re.compile(r"^([0-9]+)(%?)$")


def parse_surge(value: object) -> str:
    """A max_surge / max_unavailable value as text: 5 -> "5", "25%" -> "25%". Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {SURGE_ACCEPTED}, got {_describe(value)}")
    text = str(value).strip()
    match = _SURGE_RE.match(text)
    if match is None:
        raise ValueError(f"expected {SURGE_ACCEPTED}, got {_describe(value)}")
    number = int(match[1])
    if match[2] and number > 100:
        raise ValueError(f"a percentage must be at most 100%, got {_describe(value)}")
    return f"{number}{match[2]}"
