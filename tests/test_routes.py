"""Routing decisions of the proxy that need no daemon: TrafficSplitter choices, what of a
client's request reaches a predictor that takes query params and headers."""

from __future__ import annotations

import pytest

from cortexd.daemon.serving.access import DebugDecision, forwarded_query
from cortexd.daemon.serving.proxy import SplitRoute, forwarded_headers
from cortexd.tables import format_splitter

SPLIT = SplitRoute("ab", "/ab", (("a", 30), ("b", 70)), ("shadow",))


@pytest.mark.parametrize("draw, api", [(0.0, "a"), (0.2999, "a"), (0.3, "b"), (0.9999, "b")])
def test_a_splitter_chooses_by_weight(draw: float, api: str) -> None:
    assert SPLIT.choose(lambda: draw) == api


@pytest.mark.parametrize("query, debug, sent", [
    ("model=iris&n=2", "", "model=iris&n=2"),
    ("model=iris&debug=true", "debug=true", "model=iris&debug=true"),
    ("debug=true&x=1", "", "x=1"),  # refused: the predictor does not see it either
    ("", "", ""),
])
def test_query_params_reach_the_predictor_without_an_unallowed_debug(query: str, debug: str, sent: str) -> None:
    assert forwarded_query(query, DebugDecision(debug, None)) == sent


def test_hop_by_hop_headers_and_injected_lines_are_not_forwarded() -> None:
    lines = forwarded_headers([("X-Model", "iris"), ("Connection", "keep-alive"), ("Host", "h"),
                               ("Content-Length", "3"), ("X-Evil", "a\r\nX-Injected: 1"), ("Content-Type", "text/csv")])
    assert lines == b"X-Model: iris\r\nContent-Type: text/csv\r\n"


def test_splitter_table() -> None:
    view = {"name": "ab", "endpoint": "/ab", "apis": [
        {"api": "a", "weight": 30, "shadow": False, "status": "live"},
        {"api": "shadow", "weight": 0, "shadow": True, "status": "creating"}]}
    assert format_splitter(view).splitlines() == [
        "traffic splitter ab at /ab",
        "api      weight   status",
        "a        30 %     live",
        "shadow   shadow   creating",
    ]
