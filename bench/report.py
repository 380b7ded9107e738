"""Turning bench runs into the table, the ratios cortexd/ceiling and the targets of issue 7.

Pure functions over the rows bench/run.py collects (plain dicts, as written to the JSON),
so a saved results file can be re-rendered: `python -m bench.report bench/results/X.json`.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

Row = dict[str, Any]

# Issue 7's targets (tiny model, 1 replica, no tracker unless said).
THROUGHPUT_RATIO_MIN = 0.6      # c=8: cortexd req/s >= 0.6 x ceiling
P50_EXTRA_MS_MAX = 0.3          # c=1: cortexd p50 <= ceiling p50 + 0.3 ms
TRACKER_COST_MAX = 0.05         # the tracker costs <= 5 % throughput (c=8)
TARGET_MODEL = "tiny"
TRACKER_CONCURRENCY = 8

# Issue 14's targets for server-side batching (1 replica, ONNX, batchable models).
BATCH_MLP_SPEEDUP_MIN = 2.5     # mlp c=32: batched req/s >= 2.5 x unbatched
BATCH_P50_EXTRA_MS = 0.3        # c=1: batched p50 <= unbatched p50 + batch_interval + 0.3 ms


def label(row: Row) -> str:
    if row["server"] != "cortexd":
        return row["server"]
    if row.get("section") == "batching":
        kind = "py" if row.get("predictor") == "python" else "onnx"
        return f"{kind} " + (f"batch {row['batching']}" if row.get("batching") else "unbatched")
    return f"cortexd {row['replicas']}r" + (" +tracker" if row.get("tracker") else "")


def is_batching(row: Row) -> bool:
    return row.get("section") == "batching"


def progress_line(row: Row) -> str:
    return (f"  {row['model']:<5} {label(row):<19} c={row['concurrency']:<3} {row['rps']:>8.0f} req/s  "
            f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  errors {row['errors']}  "
            f"cpu {row['cpu_s_per_1k']} s/1k req"
            + (f"  batch {row['avg_batch']}" if row.get("avg_batch") is not None else ""))


def limit_line(r: Row) -> str:
    return (f"  {r['model']:<5} {'limit (' + r['loop'] + ')':<19} {r['calls_per_s']:>14.0f} calls/s  "
            f"p50 {r['p50_ms'] * 1000:.1f} us  p99 {r['p99_ms'] * 1000:.1f} us")


def _find(runs: list[Row], model: str, server: str, c: int, replicas: int | None = None,
          tracker: bool | None = None) -> Row | None:
    for r in runs:
        if r["model"] != model or r["server"] != server or r["concurrency"] != c or is_batching(r):
            continue
        if replicas is not None and r.get("replicas") != replicas:
            continue
        if tracker is not None and bool(r.get("tracker")) != tracker:
            continue
        return r
    return None


def ratios(runs: list[Row]) -> list[Row]:
    """For every run that is not the ceiling: its figures relative to the ceiling's, same model and c."""
    out = []
    for r in runs:
        if r["server"] == "ceiling" or is_batching(r):
            continue
        base = _find(runs, r["model"], "ceiling", r["concurrency"])
        if base is None or not base["rps"]:
            continue
        out.append({
            "model": r["model"],
            "server": label(r),
            "concurrency": r["concurrency"],
            "rps_ratio": round(r["rps"] / base["rps"], 3),
            "p50_extra_ms": round(r["p50_ms"] - base["p50_ms"], 3),
            "cpu_ratio": round(r["cpu_s_per_1k"] / base["cpu_s_per_1k"], 2)
            if r.get("cpu_s_per_1k") and base.get("cpu_s_per_1k") else None,
        })
    return out


def _target(name: str, value: float | None, limit: float, ok: bool | None, detail: str) -> Row:
    return {"name": name, "value": value, "limit": limit, "ok": ok, "detail": detail}


def tracker_summary(pairs: list[dict[str, Row]], c: int) -> Row:
    """The tracker A/B (bench/run.py): the cost is 1 - median(with) / median(without).

    Medians of each side rather than per-pair ratios: on this machine one run's figure
    hardly predicts the next one's (bench/README.md), so pairing adds noise, not precision.
    """
    without = statistics.median(p["without"]["rps"] for p in pairs) if pairs else None
    with_ = statistics.median(p["with"]["rps"] for p in pairs) if pairs else None
    return {
        "concurrency": c,
        "rounds": pairs,
        "costs": [round(1.0 - p["with"]["rps"] / p["without"]["rps"], 4) for p in pairs if p["without"]["rps"]],
        "cost": round(1.0 - with_ / without, 4) if without and with_ is not None else None,
        "rps_without": without,
        "rps_with": with_,
        "cpu_s_per_1k_root_without": (
            statistics.median(p["without"]["cpu_s_per_1k_root"] for p in pairs) if pairs else None
        ),
        "cpu_s_per_1k_root_with": statistics.median(p["with"]["cpu_s_per_1k_root"] for p in pairs) if pairs else None,
    }


def tracker_line(ab: Row) -> str:
    return (f"  tracker A/B ({TARGET_MODEL}, 1 replica, c={ab['concurrency']}, {len(ab['rounds'])} "
            f"alternating rounds): cost {_fmt(ab['cost'], '+.1%')} ({_fmt(ab['rps_with'], '.0f')} vs "
            f"{_fmt(ab['rps_without'], '.0f')} req/s, "
            f"medians; single pairs: {' '.join(format(x, '+.0%') for x in ab['costs'])}); daemon CPU "
            f"{_fmt(ab['cpu_s_per_1k_root_without'], '.3f')} -> {_fmt(ab['cpu_s_per_1k_root_with'], '.3f')} s/1k req"
            + _in_process(ab))


def _in_process(ab: Row) -> str:
    ip = ab.get("in_process")
    base = ab.get("cpu_s_per_1k_root_without")
    if not ip or not base:
        return ""
    # s per 1k requests = ms per request; the daemon is the busiest process at c=8, so its
    # CPU per request bounds the throughput and the tracker's share of it is the expected cost.
    share = ip["cost_us"] / (base * 1000.0)
    return (f"\n  tracker in process: {ip['cost_us']:.1f} us per request (parse the answer, count its label) "
            f"= {share:.1%} of the daemon's CPU per request above")


def targets(runs: list[Row], tracker_ab: Row | None = None) -> list[Row]:
    m = TARGET_MODEL
    out = []
    ceil8 = _find(runs, m, "ceiling", 8)
    cx8 = _find(runs, m, "cortexd", 8, 1, False)
    if ceil8 and cx8 and ceil8["rps"]:
        ratio = cx8["rps"] / ceil8["rps"]
        out.append(_target("c=8 throughput >= 0.6 x ceiling", round(ratio, 3), THROUGHPUT_RATIO_MIN,
                           ratio >= THROUGHPUT_RATIO_MIN,
                           f"{cx8['rps']:.0f} vs {ceil8['rps']:.0f} req/s"))
    else:
        out.append(_target("c=8 throughput >= 0.6 x ceiling", None, THROUGHPUT_RATIO_MIN, None, "not measured"))
    ceil1 = _find(runs, m, "ceiling", 1)
    cx1 = _find(runs, m, "cortexd", 1, 1, False)
    if ceil1 and cx1:
        extra = cx1["p50_ms"] - ceil1["p50_ms"]
        out.append(_target("c=1 p50 <= ceiling p50 + 0.3 ms", round(extra, 3), P50_EXTRA_MS_MAX,
                           extra <= P50_EXTRA_MS_MAX,
                           f"{cx1['p50_ms']:.3f} vs {ceil1['p50_ms']:.3f} ms"))
    else:
        out.append(_target("c=1 p50 <= ceiling p50 + 0.3 ms", None, P50_EXTRA_MS_MAX, None, "not measured"))
    tr8 = _find(runs, m, "cortexd", 8, 1, True)
    if tracker_ab and tracker_ab.get("cost") is not None:
        cost = tracker_ab["cost"]
        out.append(_target("tracker costs <= 5 % throughput (c=8)", round(cost, 3), TRACKER_COST_MAX,
                           cost <= TRACKER_COST_MAX,
                           f"the tracker A/B: {tracker_ab['rps_with']:.0f} with vs {tracker_ab['rps_without']:.0f} "
                           f"req/s without, medians of {len(tracker_ab['rounds'])} runs each"))
    elif cx8 and tr8 and cx8["rps"]:
        cost = 1.0 - tr8["rps"] / cx8["rps"]
        out.append(_target("tracker costs <= 5 % throughput (c=8)", round(cost, 3), TRACKER_COST_MAX,
                           cost <= TRACKER_COST_MAX,
                           f"{tr8['rps']:.0f} with vs {cx8['rps']:.0f} req/s without"))
    else:
        out.append(_target("tracker costs <= 5 % throughput (c=8)", None, TRACKER_COST_MAX, None, "not measured"))
    c32 = [r for r in runs if r["server"] == "cortexd" and r.get("replicas") == 1 and r["concurrency"] == 32
           and not is_batching(r)]
    if c32:
        errors = sum(r["errors"] for r in c32)
        out.append(_target("no errors at c=32, 1 replica", errors, 0, errors == 0,
                           ", ".join(f"{r['model']} {label(r)}: {r['errors']}" for r in c32)))
    else:
        out.append(_target("no errors at c=32, 1 replica", None, 0, None, "not measured"))
    return out


def _batch_pair(runs: list[Row], model: str, predictor: str, c: int) -> tuple[Row | None, Row | None]:
    """(unbatched, batched) rows of the batching section."""
    found: dict[bool, Row] = {}
    for r in runs:
        if is_batching(r) and r["model"] == model and r.get("predictor") == predictor and r["concurrency"] == c:
            found.setdefault(bool(r.get("batching")), r)
    return found.get(False), found.get(True)


def _interval_ms(setting: str) -> float:
    from cortexd.config.quantities import parse_duration

    return parse_duration(setting.partition("/")[2]) * 1000.0


def batching_targets(runs: list[Row]) -> list[Row]:
    """Issue 14's targets, on the ONNX cells of the batching section."""
    out = []
    off, on = _batch_pair(runs, "mlp", "onnx", 32)
    if off and on and off["rps"]:
        ratio = on["rps"] / off["rps"]
        out.append(_target("mlp c=32 batched >= 2.5 x unbatched req/s", round(ratio, 2), BATCH_MLP_SPEEDUP_MIN,
                           ratio >= BATCH_MLP_SPEEDUP_MIN, f"{on['rps']:.0f} vs {off['rps']:.0f} req/s"))
    else:
        out.append(_target("mlp c=32 batched >= 2.5 x unbatched req/s", None, BATCH_MLP_SPEEDUP_MIN, None,
                           "not measured"))
    for model in ("tiny", "mlp"):
        off, on = _batch_pair(runs, model, "onnx", 1)
        name = f"{model} c=1 batched p50 <= unbatched p50 + batch_interval + 0.3 ms"
        if off and on:
            limit = _interval_ms(on["batching"]) + BATCH_P50_EXTRA_MS
            extra = on["p50_ms"] - off["p50_ms"]
            out.append(_target(name, round(extra, 3), round(limit, 3), extra <= limit,
                               f"{on['p50_ms']:.3f} vs {off['p50_ms']:.3f} ms"))
        else:
            out.append(_target(name, None, BATCH_P50_EXTRA_MS, None, "not measured"))
    off, on = _batch_pair(runs, "tiny", "onnx", 32)
    if off and on and off["rps"]:
        ratio = on["rps"] / off["rps"]
        out.append(_target("tiny c=32 batched not slower than unbatched", round(ratio, 2), 1.0, ratio >= 1.0,
                           f"{on['rps']:.0f} vs {off['rps']:.0f} req/s"))
    else:
        out.append(_target("tiny c=32 batched not slower than unbatched", None, 1.0, None, "not measured"))
    rows = [r for r in runs if is_batching(r)]
    if rows:
        errors = sum(r["errors"] for r in rows)
        out.append(_target("no errors in the batching cells", errors, 0, errors == 0,
                           f"{len(rows)} cells, {sum(r['requests'] for r in rows)} requests"))
    return out


def render_batching(runs: list[Row]) -> list[str]:
    rows = [r for r in runs if is_batching(r)]
    if not rows:
        return []
    setting = next((r["batching"] for r in rows if r.get("batching")), "?")
    lines = ["", f"server-side batching (1 replica, batchable models; batched = max_batch_size/batch_interval "
                 f"{setting}; x off = req/s / the same predictor unbatched; batch = average batch size)"]
    head = (f"  {'model':<5} {'server':<19} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
            f"{'cpu':>6} {'x off':>6} {'+p50':>7} {'batch':>6}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    block = None
    for r in rows:
        if block is not None and block != (r["model"], r["concurrency"]):
            lines.append("")
        block = (r["model"], r["concurrency"])
        off, _ = _batch_pair(runs, r["model"], r.get("predictor", "onnx"), r["concurrency"])
        ratio = r["rps"] / off["rps"] if r.get("batching") and off and off["rps"] else None
        extra = r["p50_ms"] - off["p50_ms"] if r.get("batching") and off else None
        lines.append(
            f"  {r['model']:<5} {label(r):<19} {r['concurrency']:>3} {r['rps']:>8.0f} {r['p50_ms']:>8.3f} "
            f"{r['p99_ms']:>8.3f} {r['errors']:>6} {_fmt(r.get('cpu_s_per_1k'), '.3f'):>6} "
            f"{_fmt(ratio, '.2f'):>6} {_fmt(extra, '+.3f'):>7} {_fmt(r.get('avg_batch'), '.1f'):>6}"
        )
    tg = batching_targets(runs)
    lines += ["", "targets (issue 14; ONNX, 1 replica)"]
    for t in tg:
        verdict = "n/a " if t["ok"] is None else ("PASS" if t["ok"] else "FAIL")
        lines.append(f"  {verdict}  {t['name']}: {_fmt(t['value'], 'g')} ({t['detail']})")
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(results: Row) -> str:
    lines = []
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    lines.append(f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores; load average before the run "
                 f"{' '.join(f'{x:.2f}' for x in machine.get('loadavg_at_start', []))}")
    lines.append(f"wrk: {settings.get('wrk_threads', 1)} thread, POST JSON, keep-alive; "
                 f"{settings.get('rounds', 1)} rounds of {settings.get('duration_s')}s per server and concurrency, "
                 "interleaved across servers, medians shown; "
                 f"onnxruntime intra-op threads = {settings.get('intra_op_threads', 1)} everywhere")
    if results.get("limit"):
        lines.append("")
        lines.append("limit (onnxruntime in process, one sample per call)")
        lines.append(f"  {'model':<5} {'loop':<9} {'calls/s':>9} {'p50 us':>8} {'p99 us':>8}")
        for r in results["limit"]:
            lines.append(f"  {r['model']:<5} {r['loop']:<9} {r['calls_per_s']:>9.0f} {r['p50_ms'] * 1000:>8.1f} "
                         f"{r['p99_ms'] * 1000:>8.1f}")
    all_runs = results.get("runs", [])
    runs = [r for r in all_runs if not is_batching(r)]
    if runs:
        rat = {(x["model"], x["server"], x["concurrency"]): x for x in results.get("ratios", ratios(runs))}
        lines.append("")
        lines.append("HTTP (wrk); cpu = CPU seconds per 1,000 requests summed over the server's processes; "
                     "x ceil = req/s / the ceiling's, +p50 = p50 - the ceiling's (ms)")
        head = (f"  {'model':<5} {'server':<19} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
                f"{'cpu':>6} {'x ceil':>7} {'+p50':>7}")
        lines.append(head)
        lines.append("  " + "-" * (len(head) - 2))
        block = None
        for r in runs:
            if block is not None and block != (r["model"], r["concurrency"]):
                lines.append("")
            block = (r["model"], r["concurrency"])
            x = rat.get((r["model"], label(r), r["concurrency"]), {})
            lines.append(
                f"  {r['model']:<5} {label(r):<19} {r['concurrency']:>3} {r['rps']:>8.0f} {r['p50_ms']:>8.3f} "
                f"{r['p99_ms']:>8.3f} {r['errors']:>6} {_fmt(r.get('cpu_s_per_1k'), '.3f'):>6} "
                f"{_fmt(x.get('rps_ratio'), '.2f'):>7} {_fmt(x.get('p50_extra_ms'), '+.3f'):>7}"
            )
    lines += render_batching(all_runs)
    if results.get("tracker_ab"):
        lines.append("")
        lines.append(tracker_line(results["tracker_ab"]).strip())
    tg = results.get("targets") or (targets(runs, results.get("tracker_ab")) if runs else [])
    if tg:
        lines.append("")
        lines.append(f"targets (issue 7; {TARGET_MODEL} model, 1 replica)")
        for t in tg:
            verdict = "n/a " if t["ok"] is None else ("PASS" if t["ok"] else "FAIL")
            lines.append(f"  {verdict}  {t['name']}: {_fmt(t['value'], 'g')} ({t['detail']})")
    seq = results.get("sequential")
    if seq:
        lines.append("")
        lines.append(f"sequential round trip through the proxy ({seq['predictor']}, {seq['requests']} requests, "
                     f"one keep-alive connection): p50 {seq['p50_ms']:.3f} ms, p90 {seq['p90_ms']:.3f} ms, "
                     f"p99 {seq['p99_ms']:.3f} ms")
    if machine.get("loadavg_at_end"):
        lines.append("")
        lines.append(f"elapsed {results.get('elapsed_s', 0):.0f}s; load average at the end "
                     f"{' '.join(f'{x:.2f}' for x in machine['loadavg_at_end'])} (the bench's own processes included)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    for path in argv:
        with open(path) as f:
            print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
