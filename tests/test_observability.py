"""Observability through a real daemon: the tracker, /metrics, /readyz and `cortexd get`.

Every figure checked here is exact for the requests the
test sent, so a wrong count, a lost prediction or a counted skip fails the test.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortexd import cli
from tests.daemon_harness import Client, Daemon, wait_for, write_project

pytestmark = pytest.mark.slow

# The prediction is whatever the sample says under "out"; with "hold", the request stays in
# the replica until that file exists (so a test can keep requests in flight without sleeping).
ECHO = """\
    import os
    import time

    def predict(sample, metadata):
        hold = sample.get("hold")
        deadline = time.monotonic() + 120
        while hold and not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
        return sample["out"]   # no "out": KeyError, a 500
"""


def api_yaml(name: str, tracker: str = "", predictor: str = "echo.py", metadata: str = "") -> str:
    return (f"- kind: api\n  name: {name}\n  python:\n    predictor: {predictor}\n"
            f"{tracker}{metadata}  compute:\n    cpu: 100m\n")


def tracker_yaml(model_type: str, key: str | None = None) -> str:
    return f"  tracker:\n    model_type: {model_type}\n" + (f"    key: {key}\n" if key else "")


DEPLOYMENT = "- kind: deployment\n  name: obs\n"
TRACKED = {
    "cls": tracker_yaml("classification"),
    "cls-key": tracker_yaml("classification", "label"),
    "reg": tracker_yaml("regression"),
    "reg-key": tracker_yaml("regression", "value"),
    "plain": "",
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("observability")
    yaml_text = DEPLOYMENT + "".join(api_yaml(name, tracker) for name, tracker in TRACKED.items())
    project = write_project(str(base / "project"), yaml_text, {"echo.py": ECHO})
    d = Daemon(project, str(base / "daemon"), env={"CORTEXD_FAKE_GPUS": "1"}).start()
    yield d
    assert d.stop() == 0, d.stderr()


def post_all(d: Daemon, api: str, outs: list[Any]) -> list[int]:
    c = d.client()
    return [c.post(f"/obs/{api}", {"out": out}).status for out in outs]


def get_json(d: Daemon, api: str) -> dict[str, Any]:
    out = d.cli("get", api, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scrape(d: Daemon) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """/metrics parsed by prometheus-client: family types, and every sample by name and labels."""
    r = d.client().get("/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(r.body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- the tracker ----------------------------------------------------------------------------

# (api, predictions sent, figures expected in both "total" and "last_hour"). Every list mixes
# tracked values with ones the tracker must skip (booleans, floats for classification, strings
# for regression, a missing key, a non-object where a key is set): each request is still 200.
SEQUENCES = [
    ("cls", ["cat", "dog", "cat", 3, 3, "cat", True, False, 1.5, None, ["cat"], {"label": "cat"}],
     {"counts": {"cat": 3, "3": 2, "dog": 1}}),
    ("cls-key", [{"label": "a"}, {"label": "b"}, {"label": "a"}, {"label": 7, "p": 0.9},
                 "a", {"other": "a"}, {"label": False}, {"label": 0.5}, {"label": None}, [{"label": "a"}]],
     {"counts": {"a": 2, "b": 1, "7": 1}}),
    ("reg", [1, 2.5, -3, 10, "7", True, None, [1.0], {"value": 1}],
     {"count": 4, "min": -3.0, "max": 10.0, "mean": 2.625}),
    ("reg-key", [{"value": 4}, {"value": 6.5}, {"value": -1, "unit": "kg"}, {"value": "x"}, {"value": True},
                 {"v": 3}, 5, [{"value": 2}]],
     {"count": 3, "min": -1.0, "max": 6.5, "mean": 9.5 / 3}),
]


@pytest.mark.parametrize("api,outs,expected", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_tracker_figures_are_exact_and_skipped_values_still_answer_200(
        daemon: Daemon, api: str, outs: list[Any], expected: dict[str, Any]) -> None:
    assert post_all(daemon, api, outs) == [200] * len(outs)
    view = get_json(daemon, api)
    tracker = view["tracker"]
    model_type = "classification" if api.startswith("cls") else "regression"
    assert {"model_type", "total", "last_hour"} <= set(tracker)
    assert tracker["model_type"] == model_type
    assert tracker["total"] == expected
    assert tracker["last_hour"] == expected
    assert view["metrics"]["2xx"] == len(outs)


def test_untracked_api_has_no_tracker(daemon: Daemon) -> None:
    assert post_all(daemon, "plain", ["x"]) == [200]
    assert get_json(daemon, "plain")["tracker"] is None


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_series_are_exact_and_parse(daemon: Daemon, tmp_path) -> None:
    before = get_json(daemon, "plain")["metrics"]
    c = daemon.client()
    codes = [c.post("/obs/plain", {"out": 1}).status for _ in range(3)]
    codes += [c.post("/obs/plain", {"no-out": 1}).status for _ in range(2)]
    codes.append(c.post("/obs/plain", b"{not json").status)
    assert codes == [200, 200, 200, 500, 500, 400]

    # Two requests held in the replica's one slot: one in flight, one queued.
    gate = str(tmp_path / "release")
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(
        Client(daemon.port).post("/obs/plain", {"out": 1, "hold": gate}).status)) for _ in range(2)]
    for t in threads:
        t.start()

    def held() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        _, s = scrape(daemon)
        ok = (sample(s, "cortexd_inference_in_flight_requests", api="plain") == 1
              and sample(s, "cortexd_inference_queued_requests", api="plain") == 1)
        return s if ok else None

    during = wait_for(held, 20, 0.05, what="one request in flight and one queued")
    assert sample(during, "cortexd_inference_in_flight_requests", api="cls") == 0
    open(gate, "w").close()
    for t in threads:
        t.join(30)
    assert answers == [200, 200]

    types, s = scrape(daemon)
    assert types["cortexd_inference_requests"] == "counter"
    assert types["cortexd_inference_request_duration_seconds"] == "histogram"
    assert types["cortexd_inference_queue_duration_seconds"] == "histogram"
    n200 = before["2xx"] + 5
    assert sample(s, "cortexd_inference_requests_total", api="plain", code="200") == n200
    assert sample(s, "cortexd_inference_requests_total", api="plain", code="500") == before["5xx"] + 2
    assert sample(s, "cortexd_inference_requests_total", api="plain", code="400") == before["4xx"] + 1
    total = before["requests"] + 8
    for hist in ("cortexd_inference_request_duration_seconds", "cortexd_inference_queue_duration_seconds"):
        buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in s.items()
                          if name == hist + "_bucket" and dict(labels)["api"] == "plain"))
        assert len(buckets) > 5 and buckets[-1] == (float("inf"), total)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)   # cumulative
        assert sample(s, hist + "_count", api="plain") == total
        assert sample(s, hist + "_sum", api="plain") > 0                 # the queued request waited
    assert sample(s, "cortexd_inference_in_flight_requests", api="plain") == 0
    assert sample(s, "cortexd_inference_queued_requests", api="plain") == 0
    for api in TRACKED:
        assert sample(s, "cortexd_replicas", api=api, state="ready") == 1
        assert sample(s, "cortexd_replica_restarts_total", api=api) == 0

    # Tracker figures: the same numbers `get --json` shows.
    assert post_all(daemon, "cls", ["metric-label"]) == [200]
    assert post_all(daemon, "reg", [100]) == [200]
    _, s = scrape(daemon)
    counts = get_json(daemon, "cls")["tracker"]["total"]["counts"]
    assert counts["metric-label"] == 1
    for label, n in counts.items():
        assert sample(s, "cortexd_tracker_class_predictions_total", api="cls", **{"class": label}) == n
    reg = get_json(daemon, "reg")["tracker"]["total"]
    assert reg["max"] == 100
    assert sample(s, "cortexd_tracker_regression_predictions_total", api="reg") == reg["count"]
    for stat in ("min", "max", "mean"):
        assert sample(s, "cortexd_tracker_regression_value", api="reg", stat=stat) == pytest.approx(reg[stat])
    assert not any(name.startswith("cortexd_tracker") and dict(labels)["api"] == "plain" for name, labels in s)

    # CORTEXD_FAKE_GPUS=1: one 16 GiB GPU, idle.
    gpu = {"gpu": "0", "gpu_uuid": "GPU-fake-0"}
    assert sample(s, "cortexd_gpu_memory_total_bytes", **gpu) == 16 * 2**30
    assert sample(s, "cortexd_gpu_memory_used_bytes", **gpu) == 0
    assert sample(s, "cortexd_gpu_utilization", **gpu) == 0


# -- `cortexd get` ---------------------------------------------------------------------------


def test_get_table_shows_one_row_per_api(daemon: Daemon) -> None:
    for name in TRACKED:
        assert post_all(daemon, name, [1]) == [200]
    out = daemon.cli("get")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.match(r"^api\s{3,}status\s{3,}up-to-date\s{3,}requested\s{3,}requests\s{3,}2XX\s{3,}4XX\s{3,}5XX"
                    r"\s{3,}p50\s{3,}p99\s{3,}endpoint$", lines[0]), lines[0]
    views = {v["name"]: v for v in json.loads(daemon.cli("get", "--json").stdout)["apis"]}
    assert len(lines) == 1 + len(TRACKED)
    for name in TRACKED:
        m = views[name]["metrics"]
        row = rf"^{name}\s{{3,}}live\s{{3,}}1\s{{3,}}1\s{{3,}}\d+\s{{3,}}\d+\s{{3,}}\d+\s{{3,}}\d+\s{{3,}}" \
              rf"[\d.]+ ms\s{{3,}}[\d.]+ ms\s{{3,}}/obs/{name}$"
        assert any(re.match(row, line) for line in lines), (name, out.stdout)
        assert m["requests"] >= 1


def test_get_api_shows_replicas_and_tracker_tables(daemon: Daemon) -> None:
    assert post_all(daemon, "cls", ["table-a", "table-a", "table-b"]) == [200] * 3
    assert post_all(daemon, "reg", [0.5, 1.5]) == [200] * 2
    for api in ("cls", "reg"):
        view = get_json(daemon, api)
        out = daemon.cli("get", api)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        row = rf"^{api}\s{{3,}}live\s{{3,}}1\s{{3,}}1\s{{3,}}{view['metrics']['requests']}\s"
        assert re.search(row, text, re.M), text
        assert re.search(r"^replica\s{3,}pid\s{3,}state\s{3,}gpus\s{3,}cpu %\s{3,}memory\s{3,}restarts$", text, re.M)
        (rep,) = view["replicas"]
        assert re.search(rf"^{re.escape(rep['id'])}\s{{3,}}{rep['pid']}\s{{3,}}ready\s{{3,}}-\s{{3,}}[\d.]+"
                         rf"\s{{3,}}[\d.]+ (B|KiB|MiB|GiB)\s{{3,}}0$", text, re.M), text
        total, hour = view["tracker"]["total"], view["tracker"]["last_hour"]
        if api == "cls":
            assert re.search(r"^class\s{3,}total\s{3,}last hour$", text, re.M), text
            assert total["counts"]["table-a"] >= 2
            for label, n in total["counts"].items():
                assert re.search(rf"^{re.escape(label)}\s{{3,}}{n}\s{{3,}}{hour['counts'][label]}$", text, re.M), text
        else:
            assert re.search(r"^prediction\s{3,}total\s{3,}last hour$", text, re.M), text
            assert re.search(rf"^count\s{{3,}}{total['count']}\s{{3,}}{hour['count']}$", text, re.M), text
            for stat in ("min", "max", "mean"):
                assert re.search(rf"^{stat}\s{{3,}}{total[stat]:.6g}\s{{3,}}{hour[stat]:.6g}$", text, re.M), text


def test_get_watch_prints_frame_after_frame(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortexd", "get", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**daemon.env, "CORTEXD_RUNTIME_DIR": daemon.runtime_dir},
    )
    clear = b"\x1b[H\x1b[2J"
    data = b""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while data.count(clear) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    frames = data.split(clear)[1:]
    assert len(frames) >= 2, (data, proc.stderr.read() if proc.stderr else b"")
    for frame in frames[:2]:
        assert frame.startswith(b"api   ") and b"/obs/cls" in frame, frame


# -- persistence and removal -------------------------------------------------------------------


def _gone(d: Daemon, api: str) -> bool:
    try:
        d.get(api)
    except cli.Refused as exc:
        return "no API named" in str(exc)
    return False


def test_tracker_survives_a_restart_and_is_forgotten_when_the_api_is_removed(tmp_path) -> None:
    both = DEPLOYMENT + api_yaml("cls", TRACKED["cls"]) + api_yaml("reg", TRACKED["reg"])
    only_reg = DEPLOYMENT + api_yaml("reg", TRACKED["reg"])
    project = write_project(str(tmp_path / "p"), both, {"echo.py": ECHO})
    base = str(tmp_path / "d")
    d = Daemon(project, base).start()
    try:
        assert post_all(d, "cls", ["x", "y", "x"]) == [200] * 3
        assert post_all(d, "reg", [2, 4]) == [200] * 2
        before = {api: d.get(api)["tracker"] for api in ("cls", "reg")}
        assert before["cls"]["total"] == {"counts": {"x": 2, "y": 1}}
        assert before["reg"]["total"] == {"count": 2, "min": 2.0, "max": 4.0, "mean": 3.0}
    finally:
        assert d.stop() == 0, d.stderr()

    d = Daemon(project, base).start()    # the same --state-dir
    try:
        after = {api: d.get(api)["tracker"] for api in ("cls", "reg")}
        assert after == before
        assert post_all(d, "cls", ["y"]) == [200]
        assert d.get("cls")["tracker"]["total"] == {"counts": {"x": 2, "y": 2}}

        # Removed from cortex.yaml: the API and its figures go.
        with open(os.path.join(project, "cortex.yaml"), "w") as f:
            f.write(only_reg)
        out = d.cli("reload")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "cls: removed" in out.stdout
        wait_for(lambda: _gone(d, "cls"), 30, 0.1, what="cls to be removed")
        _, s = scrape(d)
        assert not [name for name, labels in s if dict(labels).get("api") == "cls"]
        assert d.get("reg")["tracker"] == after["reg"]       # the other API keeps its figures

        # Added again: it starts from zero.
        with open(os.path.join(project, "cortex.yaml"), "w") as f:
            f.write(both)
        out = d.cli("reload")
        assert out.returncode == 0, out.stdout + out.stderr
        assert d.get("cls")["tracker"]["total"] == {"counts": {}}
        assert post_all(d, "cls", ["z"]) == [200]
        assert d.get("cls")["tracker"]["total"] == {"counts": {"z": 1}}
    finally:
        assert d.stop() == 0, d.stderr()

    # The old rows were deleted on disk too, not only forgotten in memory.
    d = Daemon(project, base).start()
    try:
        assert d.get("cls")["tracker"]["total"] == {"counts": {"z": 1}}
        assert d.get("reg")["tracker"]["total"] == after["reg"]["total"]
    finally:
        assert d.stop() == 0, d.stderr()


# -- /readyz ---------------------------------------------------------------------------------

# init() consumes a gate file: each replica waits until the test creates one, then removes it,
# so the next replica (the replacement after a kill -9) waits for the test again.
GATED = """\
    import os
    import time

    def init(metadata):
        gate = metadata["gate"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                os.unlink(gate)
                return
            except FileNotFoundError:
                time.sleep(0.02)
        raise RuntimeError("the test never opened the gate")

    def predict(sample, metadata):
        return "ok"
"""


def readyz(d: Daemon) -> tuple[int, dict[str, Any]]:
    r = d.client().get("/readyz")
    return r.status, r.json()


def test_readyz_follows_creating_live_and_a_killed_replica(tmp_path) -> None:
    gate = str(tmp_path / "gate")
    yaml_text = DEPLOYMENT + api_yaml("gated", metadata=f"  metadata:\n    gate: {gate}\n", predictor="gated.py")
    project = write_project(str(tmp_path / "p"), yaml_text, {"gated.py": GATED})
    d = Daemon(project, str(tmp_path / "d")).start(wait_live=False)
    try:
        def not_ready(status: str) -> dict[str, Any] | None:
            code, body = readyz(d)
            entries = [e for e in body.get("not_ready", []) if e["api"] == "gated"]
            return body if code == 503 and entries and entries[0]["status"] == status else None

        body = wait_for(lambda: not_ready("creating"), 30, 0.05, what="readyz 503 naming gated as creating")
        assert body["ready"] is False and body["not_ready"][0]["ready"] == 0
        assert d.client().get("/healthz").status == 200
        # `creating` also covers preparing the version, before the replica process exists.
        wait_for(lambda: sample(scrape(d)[1], "cortexd_replicas", api="gated", state="starting") == 1, 30,
                 what="the replica to be starting")
        assert readyz(d)[0] == 503

        open(gate, "w").close()
        wait_for(lambda: readyz(d)[0] == 200, 30, 0.05, what="readyz 200")
        assert readyz(d)[1] == {"ready": True, "not_ready": []}
        assert d.client().post("/obs/gated", {}).status == 200
        (victim,) = d.replica_pids("gated")

        os.kill(victim, signal.SIGKILL)
        code, body = wait_for(lambda: (r := readyz(d))[0] == 503 and r, 30, 0.02, what="readyz 503 after the kill")
        assert [e["api"] for e in body["not_ready"]] == ["gated"]
        assert d.client().get("/healthz").status == 200
        # The replacement is held at the gate, so readiness stays 503 until the test opens it.
        wait_for(lambda: [p for p in d.replica_pids("gated") if p != victim], 30, what="a replacement process")
        assert readyz(d)[0] == 503 and not os.path.exists(gate)

        open(gate, "w").close()
        wait_for(lambda: readyz(d)[0] == 200, 30, 0.05, what="readyz 200 with the replacement")
        assert d.client().get("/healthz").status == 200
        assert d.client().post("/obs/gated", {}).status == 200
        _, s = scrape(d)
        assert sample(s, "cortexd_replica_restarts_total", api="gated") == 1
        assert sample(s, "cortexd_replicas", api="gated", state="ready") == 1
    finally:
        open(gate, "w").close()   # never leave a replica waiting
        assert d.stop() == 0, d.stderr()
