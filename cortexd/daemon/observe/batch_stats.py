"""Batch sizes of one API over the last minutes, for `cortexd get API`.

The queue reports every batch it sends (`record`); `summary` gives the average size and the
distribution over the window, and why batches were sent (full, interval passed, a replica
freed up). Counts live in fixed time slots (10 s by default) so a record is a couple of dict
increments and old slots fall off whole; the window is therefore exact to one slot. The
clock is the caller's (`now`, any monotonic seconds), so this is table-tested.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WINDOW_S = 300.0
DEFAULT_SLOT_S = 10.0

# Why a batch was sent, as the batcher names it, and how `render_lines` says it.
TRIGGER_WORDS = {"full": "full", "interval": "interval passed", "freed": "replica freed"}


def size_bucket(size: int) -> int:
    """Power-of-two bucket of a batch size: 1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, 9-16 -> 4 ..."""
    return (size - 1).bit_length()


def bucket_label(bucket: int) -> str:
    if bucket == 0:
        return "1"
    low, high = 2 ** (bucket - 1) + 1, 2**bucket
    return str(high) if low == high else f"{low}-{high}"


@dataclass
class _Slot:
    index: int  # floor(time / slot_s)
    batches: int = 0
    requests: int = 0
    wait_s: float = 0.0  # summed over requests: arrival to the batch being sent
    sizes: dict[int, int] = field(default_factory=dict)  # bucket -> batches
    triggers: dict[str, int] = field(default_factory=dict)


class BatchStats:
    """Batches of one API over the last `window_s` seconds."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, slot_s: float = DEFAULT_SLOT_S) -> None:
        if slot_s <= 0 or window_s < slot_s:
            raise ValueError(f"need 0 < slot_s <= window_s, got slot {slot_s}, window {window_s}")
        self.window_s = window_s
        self.slot_s = slot_s
        self._slots: deque[_Slot] = deque()

    def record(self, size: int, now: float, trigger: str | None = None, wait_s: float = 0.0) -> None:
        """One batch of `size` requests sent at `now`; `wait_s`: its requests' waits, summed."""
        index = int(now // self.slot_s)
        slots = self._slots
        if not slots or slots[-1].index != index:
            slots.append(_Slot(index))
            self._expire(now)
        slot = slots[-1]
        slot.batches += 1
        slot.requests += size
        slot.wait_s += wait_s
        bucket = size_bucket(size)
        slot.sizes[bucket] = slot.sizes.get(bucket, 0) + 1
        if trigger is not None:
            slot.triggers[trigger] = slot.triggers.get(trigger, 0) + 1

    def _expire(self, now: float) -> None:
        # A slot is kept while any part of it lies inside the window (now - window_s, now].
        oldest = int((now - self.window_s) // self.slot_s)
        slots = self._slots
        while slots and slots[0].index < oldest:
            slots.popleft()

    def summary(self, now: float) -> dict[str, Any]:
        """{"window_s", "batches", "requests", "average_size", "average_wait_ms", "sizes", "triggers"}:
        sizes maps bucket labels ("1", "2", "3-4", ...) to batch counts, smallest first."""
        self._expire(now)
        batches = requests = 0
        wait_s = 0.0
        sizes: dict[int, int] = {}
        triggers: dict[str, int] = {}
        for slot in self._slots:
            batches += slot.batches
            requests += slot.requests
            wait_s += slot.wait_s
            for bucket, n in slot.sizes.items():
                sizes[bucket] = sizes.get(bucket, 0) + n
            for trigger, n in slot.triggers.items():
                triggers[trigger] = triggers.get(trigger, 0) + n
        return {
            "window_s": self.window_s,
            "batches": batches,
            "requests": requests,
            "average_size": round(requests / batches, 2) if batches else None,
            "average_wait_ms": round(wait_s / requests * 1000.0, 3) if requests else None,
            "sizes": {bucket_label(b): sizes[b] for b in sorted(sizes)},
            "triggers": {t: triggers[t] for t in sorted(triggers)},
        }


def render_lines(
    summary: dict[str, Any], max_batch_size: int | None = None, interval_s: float | None = None
) -> list[str]:
    """The summary as `cortexd get API` prints it (two or three lines)."""
    setting = ""
    if max_batch_size is not None and interval_s is not None:
        setting = f" (max_batch_size {max_batch_size}, batch_interval {interval_s * 1000:g}ms)"
    minutes = f"{summary['window_s'] / 60:g} min"
    batches = summary["batches"]
    if not batches:
        return [f"batching{setting}: no batches in the last {minutes}"]
    lines = [
        f"batching{setting}: {batches} batches, {summary['requests']} requests in the last {minutes}; "
        f"average size {summary['average_size']:g}, average wait {summary['average_wait_ms']:g} ms"
    ]
    sizes = "  ".join(f"{label}: {n * 100 / batches:.0f}%" for label, n in summary["sizes"].items())
    lines.append(f"  batch sizes  {sizes}")
    if summary["triggers"]:
        why = "  ".join(
            f"{TRIGGER_WORDS.get(t, t)}: {n * 100 / batches:.0f}%" for t, n in summary["triggers"].items()
        )
        lines.append(f"  sent because {why}")
    return lines
