"""The security suite end to end: a real `cortexd serve`, real replicas, real HTTP, and a
second local user (created with useradd when the tests run as root; those tests skip else).

Covered here: folders planted by another user and symlink tricks refused at start with the
message; a non-root daemon's default folders private; log/database/snapshot modes under
umask 000; a zip-bomb model and a redirect to ftp:// refused (the API in `error`, with the
limit); NaN, bytes, Response objects, 431 and 414 through the proxy. Debug, API keys, TLS and
CORS through the HTTP app are at the end, skipped until the app calls serving/access.py.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import REPO, Daemon, QuietFiles, free_port, http_server, wait_for, write_project
from tests.test_security_fs import OTHER_USER, other_user, sticky_shared

pytestmark = pytest.mark.slow


YAML = """\
- kind: deployment
  name: sec

- kind: api
  name: answers
  python:
    predictor: answers.py

- kind: api
  name: lenient
  python:
    predictor: answers.py
  nan_as_null: true
"""

PREDICTOR = """\
import math


class Made:
    # What starlette.responses.Response looks like to cortexd (Starlette is not needed).
    def __init__(self, body, status_code, media_type, headers):
        self.body, self.status_code = body, status_code
        self.raw_headers = [(b"content-type", media_type.encode())] + [
            (k.encode(), v.encode()) for k, v in headers.items()]

    @property
    def headers(self):
        return {k.decode(): v.decode() for k, v in self.raw_headers}


def predict(sample, metadata):
    kind = sample.get("kind")
    if kind == "nan":
        return {"scores": [0.5, float("nan")]}
    if kind == "inf":
        return [math.inf]
    if kind == "bytes":
        return bytes(range(256))
    if kind == "str":
        return "setosa"
    if kind == "response":
        return Made(b"a,b\\n1,2\\n", 201, "text/csv", {"X-Model-Version": "7"})
    return sample
"""


def project(root: Any) -> str:
    return write_project(str(root), YAML, {"answers.py": PREDICTOR})


def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made request head; (status, headers, body) of the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    assert conn.sock is not None
    conn.sock.sendall(head)
    resp = http.client.HTTPResponse(conn.sock, method="GET")
    resp.begin()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


# ---------------------------------------------------------------- honest answers


@pytest.fixture(scope="module")
def answers_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("answers")
    daemon = Daemon(project(base / "project"), str(base)).start()
    yield daemon
    daemon.stop()


def test_nan_and_infinity_are_a_500_that_says_where(answers_daemon: Daemon) -> None:
    client = answers_daemon.client()
    resp = client.post("/sec/answers", {"kind": "nan"})
    assert resp.status == 500
    assert resp.json() == {"error": 'prediction is not valid JSON: NaN at prediction["scores"][1]'}
    resp = client.post("/sec/answers", {"kind": "inf"})
    assert resp.status == 500 and "Infinity at prediction[0]" in resp.json()["error"]
    log = answers_daemon.cli("logs", "answers").stdout
    assert "prediction is not valid JSON: NaN" in log
    lenient = client.post("/sec/lenient", {"kind": "nan"})  # the API's documented option
    assert lenient.status == 200 and lenient.json() == {"scores": [0.5, None]}


def test_bytes_go_out_raw_as_octet_stream(answers_daemon: Daemon) -> None:
    resp = answers_daemon.client().post("/sec/answers", {"kind": "bytes"})
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.body == bytes(range(256))  # every byte as it was: nothing replaced by U+FFFD
    sample = os.path.join(answers_daemon.base, "bytes.json")
    with open(sample, "w") as f:
        json.dump({"kind": "bytes"}, f)
    out = subprocess.run([sys.executable, "-m", "cortexd", "predict", "answers", sample], capture_output=True,
                         timeout=60, env={**answers_daemon.env, "CORTEXD_RUNTIME_DIR": answers_daemon.runtime_dir})
    assert out.returncode == 0 and out.stdout == bytes(range(256)), out  # `cortexd predict` too
    assert resp.headers["access-control-allow-origin"] == "*"


def test_a_str_stays_a_json_string_in_the_seed_dialect(answers_daemon: Daemon) -> None:
    resp = answers_daemon.client().post("/sec/answers", {"kind": "str"})
    assert (resp.status, resp.body, resp.headers["content-type"]) == (200, b'"setosa"', "application/json")


def test_a_response_object_passes_through(answers_daemon: Daemon) -> None:
    resp = answers_daemon.client().post("/sec/answers", {"kind": "response"})
    assert resp.status == 201
    assert resp.headers["content-type"] == "text/csv"
    assert resp.headers["x-model-version"] == "7"
    assert resp.body == b"a,b\n1,2\n"


def test_json_answers_are_unchanged(answers_daemon: Daemon) -> None:
    resp = answers_daemon.client().post("/sec/answers", {"x": [1, 2.5]})
    assert (resp.status, resp.json(), resp.headers["content-type"]) == (200, {"x": [1, 2.5]}, "application/json")


def test_too_large_headers_are_431_and_a_too_long_url_414(answers_daemon: Daemon) -> None:
    port = answers_daemon.port
    status, _, body = raw_request(port, b"GET /sec/answers?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and b"URL is too long" in body
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(10))
    status, _, body = raw_request(port, b"GET /sec/answers HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status == 431 and b"headers are too large" in body
    # A body over the limit is still 413, with its own words.
    assert answers_daemon.client().get("/healthz").status == 200


# ---------------------------------------------------------------- modes under umask 000


def modes(root: str) -> dict[str, int]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and not stat.S_ISSOCK(st.st_mode):
                found[os.path.relpath(path, root)] = stat.S_IMODE(st.st_mode)
    return found


def start_under_umask(daemon: Daemon, umask: int) -> None:
    old = os.umask(umask)
    try:
        daemon.start()
    finally:
        os.umask(old)


def test_logs_database_and_snapshots_are_private_under_umask_000(tmp_path: Any) -> None:
    """Folders made as an operator (or systemd) would, everything in them made by cortexd."""
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"))
    for folder in (daemon.runtime_dir, daemon.state_dir, daemon.log_dir):
        os.makedirs(folder, mode=0o750)
    start_under_umask(daemon, 0)
    try:
        client = daemon.client()
        assert client.post("/sec/answers?debug=true", {"secret": "hunter2"}).status == 200
        log_path = os.path.join(daemon.log_dir, "answers.log")
        wait_for(lambda: "hunter2" in open(log_path).read(), 10, what="the debug line")
        state, logs = modes(daemon.state_dir), modes(daemon.log_dir)
        assert logs == {"answers.log": 0o640, "lenient.log": 0o640}
        for name in ("tracker.db", "tracker.db-wal", "tracker.db-shm"):
            assert state.get(name, 0o640) == 0o640, name
        assert "tracker.db" in state
        snapshot_files = {k: v for k, v in state.items() if k.startswith("snapshots/")}
        assert snapshot_files
        for name, mode in snapshot_files.items():
            is_dir = os.path.isdir(os.path.join(daemon.state_dir, name))
            assert mode == (0o750 if is_dir else 0o640), f"{name}: {mode:04o}"
        socket_dirs = [d for d in os.listdir("/tmp") + os.listdir(daemon.runtime_dir)
                       if d.startswith(("cortexd-r-", "r-"))]
        assert socket_dirs
        for pid in daemon.replica_pids("answers"):
            sock = _socket_of(pid)
            assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    finally:
        daemon.stop()


def _socket_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    return args[args.index(b"--socket") + 1].decode()


def test_folders_cortexd_creates_under_umask_000_are_private(tmp_path: Any) -> None:
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"))
    os.makedirs(daemon.base, mode=0o755)  # the harness would make it 0777 under umask 000 (and be refused)
    start_under_umask(daemon, 0)
    try:
        for folder in (daemon.runtime_dir, daemon.state_dir, daemon.log_dir):
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750, folder
        assert modes(daemon.log_dir) == {"answers.log": 0o640, "lenient.log": 0o640}
    finally:
        daemon.stop()


# ---------------------------------------------------------------- another local user


def test_a_runtime_folder_planted_by_another_user_is_refused_at_start(tmp_path: Any) -> None:
    uid, gid = other_user()
    shared = sticky_shared(tmp_path)
    planted = shared / "run"
    planted.mkdir()
    planted.chmod(0o777)
    os.chown(planted, uid, gid)
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"))
    daemon.runtime_dir = str(planted)
    code = _start_expecting_refusal(daemon)
    err = daemon.stderr()
    assert code != 0
    assert f"{planted} belongs to {OTHER_USER}" in err and f"rm -r {planted}" in err
    assert os.listdir(planted) == []  # nothing of root's was put where the other user can reach it


def test_a_log_folder_symlinked_by_another_user_is_refused_at_start(tmp_path: Any) -> None:
    uid, gid = other_user()
    shared = sticky_shared(tmp_path)
    victim = tmp_path / "victim"  # root's folder the other user would like root to write into
    victim.mkdir(mode=0o750)
    link = shared / "log"
    link.symlink_to(victim)
    os.lchown(link, uid, gid)
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"))
    daemon.log_dir = str(link)
    code = _start_expecting_refusal(daemon)
    assert code != 0
    assert f"{link} is a symbolic link made by {OTHER_USER}" in daemon.stderr()
    assert os.listdir(victim) == []


def _start_expecting_refusal(daemon: Daemon) -> int:
    os.makedirs(daemon.base, exist_ok=True)
    with open(daemon.stderr_path, "ab") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "cortexd", "serve", "--config", os.path.join(daemon.project, "cortex.yaml"),
             "--host", "127.0.0.1", "--port", str(daemon.port), "--runtime-dir", daemon.runtime_dir,
             "--state-dir", daemon.state_dir, "--log-dir", daemon.log_dir],
            stdout=err, stderr=err, env=daemon.env, cwd=daemon.base, timeout=60,
        )
    return proc.returncode


def test_replica_sockets_never_go_to_a_predictable_folder(tmp_path: Any) -> None:
    """The runtime folder's path is too long for sockets, as in the issue: the sockets go to a
    new 0700 folder with an unpredictable name, not to the old /tmp/cortexd-<uid>-<hash>, which
    another user created first here."""
    uid, gid = other_user()
    import hashlib

    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"))
    assert len(daemon.runtime_dir) > 31  # pytest's folders are long enough for this
    old_path = f"/tmp/cortexd-0-{hashlib.sha256(daemon.runtime_dir.encode()).hexdigest()[:12]}"
    os.makedirs(old_path, exist_ok=True)
    os.chown(old_path, uid, gid)
    os.chmod(old_path, 0o777)
    try:
        daemon.start()
        try:
            sockets = [_socket_of(pid) for pid in daemon.replica_pids("answers")]
            folder = os.path.dirname(sockets[0])
            st = os.stat(folder)
            assert folder != old_path and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
            assert os.listdir(old_path) == []
            assert daemon.client().post("/sec/answers", {"x": 1}).status == 200
        finally:
            daemon.stop()
        assert not os.path.exists(folder)  # removed at stop
    finally:
        shutil.rmtree(old_path, ignore_errors=True)


def _can_run_python_as(uid: int, gid: int) -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "import sanic"], user=uid, group=gid, extra_groups=[],
                              capture_output=True, cwd="/", timeout=60).returncode == 0
    except PermissionError:
        return False


def test_a_non_root_daemons_default_folders_are_private(tmp_path: Any) -> None:
    uid, gid = other_user()
    if not _can_run_python_as(uid, gid):
        pytest.skip(f"{sys.executable} (or its packages) cannot be run by {OTHER_USER} here")
    top = tempfile.mkdtemp(prefix="cortexd-sec-")  # outside root's 0700 pytest folder
    try:
        os.chmod(top, 0o755)
        home = os.path.join(top, "home")
        os.mkdir(home)
        os.chown(home, uid, gid)
        proj = project(os.path.join(top, "project"))
        for folder, _dirs, files in os.walk(top):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        ours = ("XDG_", "CORTEXD_", "STATE_", "RUNTIME_", "LOGS_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        env.update(HOME=home, USER=OTHER_USER, PYTHONPATH=REPO)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cortexd", "serve", "--config", os.path.join(proj, "cortex.yaml"),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=home, user=uid, group=gid, extra_groups=[], umask=0o022,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        state = os.path.join(home, ".local", "state", "cortexd")
        try:
            wait_for(lambda: proc.poll() is None and os.path.exists(os.path.join(state, "run", "control.sock")), 60,
                     what="the daemon's control socket")
            for folder in (state, os.path.join(state, "run"), os.path.join(state, "log")):
                st = os.stat(folder)
                mode = stat.S_IMODE(st.st_mode)
                assert st.st_uid == uid and mode & 0o007 == 0, f"{folder}: {mode:04o}"
            wait_for(lambda: os.path.exists(os.path.join(state, "log", "answers.log")), 60, what="the API's log")
            assert stat.S_IMODE(os.stat(os.path.join(state, "log", "answers.log")).st_mode) == 0o640
            assert stat.S_IMODE(os.stat(os.path.join(state, "tracker.db")).st_mode) == 0o640
            assert not os.path.exists(f"/tmp/cortexd-{uid}")
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        assert proc.returncode == 0, err.decode(errors="replace")
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------- model sources


class _Quiet(QuietFiles):
    def do_GET(self) -> None:
        if self.path == "/to-ftp/model.onnx":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/model.onnx")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture()
def model_server(tmp_path: Any) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf, zf.open("model.onnx", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(80):
            f.write(chunk)  # 80 MiB of zeros in about 80 KiB
    with http_server(functools.partial(_Quiet, directory=str(served))) as url:
        yield url


def test_a_zip_bomb_model_and_a_redirect_to_ftp_put_their_api_in_error(tmp_path: Any, model_server: str) -> None:
    yaml = f"""\
    - kind: deployment
      name: sec

    - kind: api
      name: bomb
      onnx:
        model: {model_server}/bomb.zip

    - kind: api
      name: ftp
      onnx:
        model: {model_server}/to-ftp/model.onnx

    - kind: api
      name: answers
      python:
        predictor: answers.py
    """
    proj = write_project(str(tmp_path / "project"), yaml, {"answers.py": PREDICTOR})
    daemon = Daemon(proj, str(tmp_path / "d")).start(wait_live=False)
    try:
        bomb = daemon.wait_status("bomb", "error", 60)
        reason = bomb["reason"] or bomb["last_error"] or ""
        assert "times its size" in reason and "80.0 MiB" in reason and "--max-model-unpack-ratio" in reason
        ftp = daemon.wait_status("ftp", "error", 60)
        assert "only redirects to http:// and https:// are followed" in (ftp["reason"] or ftp["last_error"] or "")
        daemon.wait_status("answers", "live", 60)  # the others serve on
        models = os.path.join(daemon.state_dir, "models")
        unpacked = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(models) for f in fs)
        assert unpacked < (1 << 20)  # nothing of the 80 MiB was written
    finally:
        daemon.stop()


# ---------------------------------------------------------------- through the HTTP app (wiring pending)


def test_refused_debug_is_answered_without_logging(tmp_path: Any) -> None:
    # Tests speak loopback only: `--debug-from none` makes loopback a refused address.
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"), args=["--debug-from", "none"]).start()
    try:
        resp = daemon.client().post("/sec/answers?debug=true", {"secret": "hunter2"})
        assert resp.status == 200 and resp.json() == {"secret": "hunter2"}
        assert resp.headers["x-cortexd-debug"].startswith("refused")
        sample = tmp_path / "sample.json"
        sample.write_text('{"visible": "via-cli"}')
        assert daemon.cli("predict", "answers", str(sample), "--debug").returncode == 0
        log = wait_for(lambda: (t := daemon.cli("logs", "answers").stdout) and "via-cli" in t and t, 10)
        assert "hunter2" not in log
    finally:
        daemon.stop()


def test_api_keys(tmp_path: Any) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("a" * 32 + "\n")
    keys.chmod(0o600)
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"), args=["--api-keys", str(keys)]).start()
    try:
        client = daemon.client()
        assert client.post("/sec/answers", {"x": 1}).status == 401
        assert client.request("POST", "/sec/answers", '{"x": 1}', {"Authorization": "Bearer " + "a" * 32}).status == 200
        assert client.request("GET", "/sec/answers", None, {"X-API-Key": "a" * 32}).status == 200
        assert client.get("/healthz").status == 200
        assert client.get("/metrics").status == 401 and client.get("/readyz").status == 401
        keys.write_text("b" * 32 + "\n")
        assert daemon.cli("reload").returncode == 0
        assert client.request("POST", "/sec/answers", '{"x": 1}', {"X-API-Key": "a" * 32}).status == 401
        assert client.request("POST", "/sec/answers", '{"x": 1}', {"X-API-Key": "b" * 32}).status == 200
    finally:
        daemon.stop()


def test_tls(tmp_path: Any) -> None:
    from tests.test_security_access import self_signed

    cert, key = self_signed(tmp_path)
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"), args=["--tls-cert", cert, "--tls-key", key])
    daemon.start()
    try:
        context = ssl.create_default_context(cafile=cert)
        conn = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=context, timeout=30)
        conn.request("POST", "/sec/answers", body=json.dumps({"x": 1}), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"x": 1}
        conn.close()
    finally:
        daemon.stop()


def test_cors_on_endpoints_only(tmp_path: Any) -> None:
    daemon = Daemon(project(tmp_path / "project"), str(tmp_path / "d"),
                    args=["--cors-origins", "https://app.example.com"]).start()
    try:
        client = daemon.client()
        pre = client.request("OPTIONS", "/sec/answers", None, {
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key"})
        assert pre.status == 204
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert pre.headers["access-control-allow-headers"] == "content-type, x-api-key"
        other = client.request("POST", "/sec/answers", '{"x": 1}', {"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        for path in ("/metrics", "/readyz", "/healthz"):
            resp = client.request("GET", path, None, {"Origin": "https://app.example.com"})
            assert not any(h.startswith("access-control-") for h in resp.headers), path
    finally:
        daemon.stop()



def test_a_second_daemon_on_the_same_runtime_folder_is_refused(answers_daemon: Daemon, tmp_path: Any) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "cortexd", "serve", "--config", os.path.join(answers_daemon.project, "cortex.yaml"),
         "--host", "127.0.0.1", "--port", str(free_port()), "--runtime-dir", answers_daemon.runtime_dir,
         "--state-dir", str(tmp_path / "s"), "--log-dir", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=60, env=answers_daemon.env)
    assert second.returncode == 1 and "another cortexd is running" in second.stderr, second.stderr
    assert answers_daemon.client().post("/sec/answers", {"kind": "json"}).status == 200  # the first one serves on


# ---------------------------------------------------------------- bounded configuration


def alias_bomb() -> str:
    """~600 bytes of YAML whose aliases expand to 9**9 nodes."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        levels.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "  metadata:\n" + "".join(f"    {line}\n" for line in levels)


@pytest.mark.parametrize("bad", ["bomb", "oversize", "1001 apis"])
def test_reload_refuses_an_unbounded_config_and_the_old_one_keeps_serving(tmp_path: Any, bad: str) -> None:
    path = os.path.join(project(tmp_path / "project"), "cortex.yaml")
    daemon = Daemon(os.path.dirname(path), str(tmp_path / "d")).start()
    try:
        good = open(path).read()
        if bad == "bomb":
            text = good.replace("  nan_as_null: true\n", "  nan_as_null: true\n" + alias_bomb())
        elif bad == "oversize":
            text = good + "#" + "x" * (1 << 20) + "\n"
        else:
            text = good + "".join(f"\n- kind: api\n  name: a{i}\n  python:\n    predictor: answers.py\n"
                                  for i in range(1001))
        with open(path, "w") as f:
            f.write(text)
        proc = daemon.cli("reload")
        assert proc.returncode != 0
        said = proc.stdout + proc.stderr
        assert {"bomb": "expand to more than 100,000 nodes", "oversize": "1,048,576 bytes",
                "1001 apis": "at most 1,000 APIs"}[bad] in said, said
        # the running version is untouched and serves
        assert daemon.client().post("/sec/answers", {"kind": "x"}).status == 200
        assert daemon.get("answers")["status"] == "live" and daemon.get("answers")["version"] == 1
    finally:
        assert daemon.stop() == 0, daemon.stderr()
