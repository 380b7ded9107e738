"""The V2 cells' tables and the cortexd / MLServer comparison (issue 17): pure functions over
the rows bench/v2.py collects (as written to its JSON), so a saved run renders again:

    .venv/bin/python -m bench.v2_report bench/results/v2-<time>.json
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

Row = dict[str, Any]

CELLS = ("own-json", "v2-json", "v2-binary", "v2-grpc")
COMPARED = ("v2-json", "v2-binary", "v2-grpc")  # the cells MLServer can serve at all
REST_CELLS = ("v2-json", "v2-binary")
MLSERVER_RATIO_MIN = 3.0  # issue 17: cortexd's V2 REST >= 3x MLServer's req/s
# The MLServer configurations the target is judged against: as MLServer ships, with 0 or 1
# inference workers (bench/mlserver_peer.py). mlserver-lean (no gzip, no metrics) is shown
# beside them, not judged: cortexd keeps its metrics on.
TARGET_PEERS = ("mlserver", "mlserver-w1")


def summarise(cell: str, rounds: list[Row]) -> Row:
    """A measured cell: medians over its rounds, errors summed."""
    row: Row = {"cell": cell, "status": "measured", "rounds": rounds}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k", "client_cpu_s_per_1k"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            row[key] = round(statistics.median(values), 4)
    row["errors"] = sum(r["errors"] for r in rounds)
    return row


def _cell(rows: list[Row], cell: str) -> Row | None:
    return next((r for r in rows if r["cell"] == cell), None)


def _rps(row: Row | None) -> float | None:
    return row["rps"] if row and row["status"] == "measured" and row.get("rps") else None


def _why(row: Row | None) -> str:
    if row is None:
        return "not run"
    return row["status"] + (f" ({row['reason']})" if row.get("reason") else "")


def comparison(targets: dict[str, list[Row]], base: str = "cortexd") -> list[Row]:
    """Per compared cell: cortexd's req/s, each MLServer peer's, and cortexd / peer."""
    peers = [t for t in targets if t.startswith("mlserver")]
    if base not in targets or not peers:
        return []
    out = []
    for cell in COMPARED:
        mine = _cell(targets[base], cell)
        entry: Row = {"cell": cell, base: _rps(mine) or _why(mine), "ratios": {}}
        for peer in peers:
            theirs = _cell(targets[peer], cell)
            entry[peer] = _rps(theirs) or _why(theirs)  # req/s, or why there is none
            a, b = _rps(mine), _rps(theirs)
            entry["ratios"][peer] = round(a / b, 3) if a and b else None
        out.append(entry)
    return out


def mlserver_target(targets: dict[str, list[Row]], base: str = "cortexd") -> Row | None:
    """Issue 17's target, like for like: cortexd's v2-json req/s over the best MLServer
    configuration's v2-json req/s (the REST cell both serve with the same body). Also the best
    REST cell of each side (cortexd: JSON or binary; MLServer serves no binary)."""
    peers = [t for t in targets if t in TARGET_PEERS]
    if base not in targets or not peers:
        return None
    mine = _rps(_cell(targets[base], "v2-json"))
    best_peer = max(peers, key=lambda p: _rps(_cell(targets[p], "v2-json")) or 0.0)
    theirs = _rps(_cell(targets[best_peer], "v2-json"))
    ratio = round(mine / theirs, 3) if mine and theirs else None
    best_mine = max((_rps(_cell(targets[base], c)) or 0.0 for c in REST_CELLS), default=0.0)
    best_theirs = max((_rps(_cell(targets[p], c)) or 0.0 for p in peers for c in REST_CELLS), default=0.0)
    return {"ratio": ratio, "ok": None if ratio is None else ratio >= MLSERVER_RATIO_MIN,
            "cortexd_rps": mine, "mlserver_rps": theirs, "mlserver_config": best_peer,
            "best_rest_ratio": round(best_mine / best_theirs, 3) if best_mine and best_theirs else None}


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else str(value)


def _short(value: Any) -> str:
    """req/s, or the status alone (the reason is listed under the table)."""
    return _fmt(value, ".0f") if isinstance(value, int | float) else str(value).split(" (")[0]


def render(results: Row) -> str:
    targets: dict[str, list[Row]] = results["targets"]
    lines = [f"V2 cells: {results['model']}, c={results['concurrency']}, {results['rounds']} rounds of "
             f"{results['duration_s']}s, interleaved across {', '.join(targets)}, medians"]
    for name, rows in targets.items():
        meta = results.get("servers", {}).get(name)
        lines += ["", f"target {name}" + (f" ({meta})" if meta else "")]
        lines.append(f"  {'cell':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
                     f"{'cpu s/1k':>9} {'client cpu':>10}")
        for row in sorted(rows, key=lambda r: CELLS.index(r["cell"]) if r["cell"] in CELLS else 99):
            if row["status"] != "measured":
                lines.append(f"  {row['cell']:<10} {_why(row)}")
                continue
            client = row.get("client_cpu_s_per_1k")
            lines.append(f"  {row['cell']:<10} {row['rps']:>8.0f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                         f"{row['errors']:>6} {_fmt(row.get('cpu_s_per_1k'), '.3f'):>9} "
                         f"{'' if client is None else f'{client:.3f}':>10}")
    table = comparison(targets)
    if table:
        peers = list(table[0]["ratios"])
        lines += ["", "cortexd / MLServer (req/s, medians; x = cortexd / that MLServer)"]
        lines.append(f"  {'cell':<10} {'cortexd':>9} " + " ".join(f"{p:>13} {'x':>6}" for p in peers))
        for entry in table:
            cols = [f"{_short(entry[p]):>13} {_fmt(entry['ratios'][p], '.2f') if entry['ratios'][p] else '-':>6}"
                    for p in peers]
            lines.append(f"  {entry['cell']:<10} {_short(entry['cortexd']):>9} " + " ".join(cols))
        lines.append("  own-json: n/a for MLServer (it serves V2 only)")
        for entry in table:  # the reasons, too long for the columns
            for p in ["cortexd", *peers]:
                if isinstance(entry[p], str):
                    lines.append(f"  {entry['cell']}, {p}: {entry[p]}")
    goal = mlserver_target(targets)
    if goal:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[goal["ok"]]
        lines += ["", f"  {verdict}  cortexd V2 REST >= {MLSERVER_RATIO_MIN:g}x MLServer's req/s (v2-json, same body, "
                      f"the faster shipped config: {goal['mlserver_config']}): {_fmt(goal['ratio'], '.2f')} "
                      f"({_fmt(goal['cortexd_rps'], '.0f')} vs {_fmt(goal['mlserver_rps'], '.0f')} req/s)",
                  f"        best REST cell each side (cortexd JSON or binary; MLServer JSON): "
                  f"{_fmt(goal['best_rest_ratio'], '.2f')}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.v2_report bench/results/v2-<time>.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
