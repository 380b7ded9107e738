"""Text tables for `cortexd get` and `cortexd gpus`, in the spirit of `cortex get`.

Columns are left-aligned and separated by three spaces, with a header row; trailing spaces
are stripped. The inputs are the `cortexd get --json` objects (docs/cli.md), so what the
table shows and what scripts read are the same data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cortexd.units import format_bytes

GAP = "   "
NONE = "-"

API_HEADERS = ["api", "status", "up-to-date", "requested", "requests", "2XX", "4XX", "5XX", "p50", "p99", "endpoint"]
REPLICA_HEADERS = ["replica", "pid", "state", "gpus", "cpu %", "memory", "restarts"]
REPLICA_GPU_MEMORY_HEADER = "gpu memory"  # shown when a replica of the API has a GPU
GPU_HEADERS = ["gpu", "name", "memory", "util", "replica", "api", "share", "gpu memory"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        lines.append(GAP.join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def format_apis(apis: Sequence[Mapping[str, Any]]) -> str:
    """One row per API (`cortexd get`)."""
    if not apis:
        return "no apis are deployed"
    return table(API_HEADERS, [_api_row(api) for api in apis])


def format_api(api: Mapping[str, Any]) -> str:
    """One API in detail (`cortexd get API`): its row, why it has that status (when the status
    has a reason: creating, compute unavailable), replicas, last error, tracker figures."""
    sections = [table(API_HEADERS, [_api_row(api)])]
    if api.get("reason"):
        sections.append(f"why: {api['reason']}")
    replicas = api.get("replicas") or []
    if replicas:
        with_gpu = any(r.get("gpu_mem_bytes") is not None for r in replicas)
        headers = REPLICA_HEADERS + [REPLICA_GPU_MEMORY_HEADER] if with_gpu else REPLICA_HEADERS
        rows = [_replica_row(r) + ([_gpu_memory(r.get("gpu_mem_bytes"), r.get("gpu_mem_limit"))] if with_gpu else [])
                for r in replicas]
        sections.append(table(headers, rows))
    else:
        sections.append("no replicas")
    if api.get("last_error"):
        at = f" ({api['last_error_at']})" if api.get("last_error_at") else ""
        sections.append(f"last error{at}: {api['last_error']}")
    tracker = api.get("tracker")
    if tracker:
        sections.append(format_tracker(tracker))
    batching = api.get("batching")
    if batching:  # server-side batching: the view holds BatchStats.summary() and the two settings
        from cortexd.daemon.observe.batch_stats import render_lines

        sections.append("\n".join(render_lines(batching, batching.get("max_batch_size"),
                                                batching.get("batch_interval_s"))))
    return "\n\n".join(sections)


def format_splitter(splitter: Mapping[str, Any]) -> str:
    """A TrafficSplitter: its endpoint, then each API with its weight (or "shadow") and status."""
    rows = [[str(r["api"]), "shadow" if r.get("shadow") else f"{r.get('weight', 0)} %", str(r.get("status", NONE))]
            for r in splitter.get("apis") or ()]
    head = f"traffic splitter {splitter.get('name')} at {splitter.get('endpoint')}"
    return head + "\n" + table(["api", "weight", "status"], rows)


def format_tracker(tracker: Mapping[str, Any]) -> str:
    """Class counts (classification) or count/min/max/mean (regression), total and last hour."""
    total = tracker.get("total") or {}
    hour = tracker.get("last_hour") or {}
    if tracker.get("model_type") == "classification":
        total_counts: Mapping[str, int] = total.get("counts") or {}
        hour_counts: Mapping[str, int] = hour.get("counts") or {}
        labels = list(total_counts) + [label for label in hour_counts if label not in total_counts]
        if not labels:
            return "tracker (classification): no predictions yet"
        # Most frequent first (the tracker already orders them so; re-sorting keeps the table
        # right for any input).
        labels.sort(key=lambda label: (-total_counts.get(label, 0), label))
        rows = [[label, str(total_counts.get(label, 0)), str(hour_counts.get(label, 0))] for label in labels]
        return table(["class", "total", "last hour"], rows)
    rows = [["count", str(total.get("count", 0)), str(hour.get("count", 0))]]
    for stat in ("min", "max", "mean"):
        rows.append([stat, _number(total.get(stat)), _number(hour.get(stat))])
    return table(["prediction", "total", "last hour"], rows)


def format_gpus(gpus: Sequence[Mapping[str, Any]], frameworks: Sequence[str] = ()) -> str:
    """`cortexd gpus`: one row per GPU and one per replica on it (its share and GPU memory),
    then one line per framework installed (`frameworks`, from cortexd.gpu_probe.describe).

    Each GPU: {"index", "name", "memory_used", "memory_total" (bytes), "utilization" (percent),
    "replicas": [{"id", "api", "share", "gpu_mem_bytes", "gpu_mem_limit"}]}; without
    "replicas", its "replica" (one id or None) is shown.
    """
    lines = [table(GPU_HEADERS, [row for gpu in gpus for row in _gpu_rows(gpu)])] if gpus else ["no GPUs found"]
    if frameworks:
        lines.append("\n".join(["frameworks:", *(f"  {line}" for line in frameworks)]))
    return "\n\n".join(lines)


def _gpu_rows(gpu: Mapping[str, Any]) -> list[list[str]]:
    memory = f"{human_bytes(gpu.get('memory_used'))} / {human_bytes(gpu.get('memory_total'))}"
    utilization = gpu.get("utilization")
    util = NONE if utilization is None else f"{utilization:.0f} %"
    card = [str(gpu.get("index", NONE)), str(gpu.get("name") or NONE), memory, util]
    replicas = gpu.get("replicas")
    if replicas is None:
        replica = gpu.get("replica")
        replicas = [{"id": replica, "api": gpu.get("api")}] if replica else []
    if not replicas:
        return [card + [NONE, NONE, NONE, NONE]]
    rows = []
    for n, rep in enumerate(replicas):
        share = rep.get("share")
        rows.append((card if n == 0 else [""] * len(card)) + [
            str(rep.get("id") or NONE),
            str(rep.get("api") or NONE),
            NONE if share is None else _share(share),
            _gpu_memory(rep.get("gpu_mem_bytes"), rep.get("gpu_mem_limit")),
        ])
    return rows


def _share(share: float) -> str:
    """1.0 -> "1", 0.25 -> "0.25" (at most three decimals)."""
    return f"{share:.3f}".rstrip("0").rstrip(".") or "0"


def _gpu_memory(used: int | None, limit: int | None) -> str:
    """"1.2 GiB", or "1.2 GiB / 6.0 GiB" against the replica's gpu_mem; "-" when unknown."""
    if used is None:
        return NONE
    return human_bytes(used) if not limit else f"{human_bytes(used)} / {human_bytes(limit)}"


def _api_row(api: Mapping[str, Any]) -> list[str]:
    metrics = api.get("metrics") or {}
    return [
        str(api.get("name", NONE)),
        str(api.get("status", NONE)),
        _count(api.get("ready")),
        _count(api.get("requested")),
        _count(metrics.get("requests")),
        _count(metrics.get("2xx")),
        _count(metrics.get("4xx")),
        _count(metrics.get("5xx")),
        latency(metrics.get("p50_ms")),
        latency(metrics.get("p99_ms")),
        str(api.get("endpoint", NONE)),
    ]


def _replica_row(replica: Mapping[str, Any]) -> list[str]:
    gpus = replica.get("gpus") or []
    cpu = replica.get("cpu_percent")
    share = replica.get("gpu_share")
    placed = ",".join(str(g) for g in gpus) if gpus else NONE
    if gpus and share is not None and share < 1:
        placed += f" ({_share(share)})"  # a share of the card
    return [
        str(replica.get("id", NONE)),
        _count(replica.get("pid")),
        str(replica.get("state", NONE)),
        placed,
        NONE if cpu is None else f"{cpu:.1f}",
        human_bytes(replica.get("rss_bytes")),
        _count(replica.get("restarts")),
    ]


def latency(ms: float | None) -> str:
    """"12.3 ms"; two decimals under a millisecond ("0.42 ms"); "-" when unknown."""
    if ms is None:
        return NONE
    return f"{ms:.2f} ms" if ms < 1 else f"{ms:.1f} ms"


def human_bytes(n: int | float | None) -> str:
    """Binary units: "512 B", "123.4 MiB"; "-" when unknown."""
    return format_bytes(n, none=NONE)


def _count(value: Any) -> str:
    return NONE if value is None else str(value)


def _number(value: float | None) -> str:
    return NONE if value is None else f"{value:.6g}"
