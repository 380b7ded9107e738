"""Model sources: local paths, http(s) from a loopback server, s3 from moto's real server."""

from __future__ import annotations

import http.server
import io
import os
import sys
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from cortexd.models import (
    ModelFetchError,
    cache_key,
    display_url,
    entry_name,
    fetch_model,
    file_url_path,
    format_bytes,
    is_stale_partial,
    progress_due,
    unpack_local_zip,
)


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def leftovers(cache: Any) -> list[str]:
    """Every path under the cache: used to show a failed fetch left nothing behind."""
    return sorted(os.path.relpath(os.path.join(d, n), cache) for d, ds, fs in os.walk(cache) for n in ds + fs)


# ---------------------------------------------------------------- pure helpers


def test_cache_key_changes_with_the_validators() -> None:
    a = cache_key("http://h/m.onnx", {"etag": '"1"', "last-modified": None, "length": 10})
    assert a == cache_key("http://h/m.onnx", {"length": 10, "last-modified": None, "etag": '"1"'})
    assert a != cache_key("http://h/m.onnx", {"etag": '"2"', "last-modified": None, "length": 10})
    assert a != cache_key("http://h/other.onnx", {"etag": '"1"', "last-modified": None, "length": 10})


@pytest.mark.parametrize(
    "url_path, expected",
    [
        ("/models/iris.onnx", "iris.onnx"),
        ("/models/saved/", "saved"),
        ("/a%20b.zip", "a_b.zip"),
        ("/", "model"),
        ("/..", "model"),
        ("models/v1/model.zip", "model.zip"),
    ],
)
def test_entry_name(url_path: str, expected: str) -> None:
    assert entry_name(url_path) == expected


@pytest.mark.parametrize(
    "done, total, last_done, last_at, now, due",
    [
        (5, 100, 0, 0.0, 0.5, False),   # quick: nothing between start and end lines
        (15, 100, 5, 0.0, 2.5, True),   # passed 10 % and 2 s went by
        (15, 100, 5, 0.0, 1.0, False),  # passed 10 % but too soon
        (18, 100, 12, 0.0, 3.0, False),  # still within the same 10 %
        (11, 100, 10, 0.0, 10.0, True),  # 10 s heartbeat whatever the progress
        (10, None, 0, 0.0, 4.9, False),  # unknown size: every 5 s
        (10, None, 0, 0.0, 5.0, True),
        (10, 0, 0, 0.0, 5.0, True),  # a 0 length counts as unknown
    ],
)
def test_progress_due(done: int, total: int | None, last_done: int, last_at: float, now: float, due: bool) -> None:
    assert progress_due(done, total, last_done, last_at, now) is due


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:secret@host:8443/m.onnx?X-Amz-Signature=abc", "https://host:8443/m.onnx?..."),
        ("http://host/m.onnx", "http://host/m.onnx"),
    ],
)
def test_display_url_hides_credentials(url: str, shown: str) -> None:
    assert display_url(url) == shown


@pytest.mark.parametrize("n, text", [(None, "size unknown"), (512, "512 B"), (2048, "2.0 KiB"), (3 << 30, "3.0 GiB")])
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("mtime, now, stale", [(0.0, 3601.0, True), (0.0, 3599.0, False)])
def test_is_stale_partial(mtime: float, now: float, stale: bool) -> None:
    assert is_stale_partial(mtime, now) is stale


# ---------------------------------------------------------------- local sources


def test_local_sources(tmp_path: Any) -> None:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    model = project / "models" / "m.onnx"
    model.write_bytes(b"x")
    log, cache = Logs(), str(tmp_path / "cache")
    assert fetch_model("models/m.onnx", str(project), cache, log) == str(model)
    assert fetch_model(str(model), "/elsewhere", cache, log) == str(model)
    assert fetch_model(f"file://{model}", "/elsewhere", cache, log) == str(model)
    assert fetch_model("file://localhost" + str(model), "/elsewhere", cache, log) == str(model)
    assert fetch_model("file://models/m.onnx", str(project), cache, log) == str(model)
    assert file_url_path("file:///a%20b/c.onnx", "/p") == "/a b/c.onnx"
    with pytest.raises(ModelFetchError, match=r"models/nope.onnx: model not found at .*project/models/nope.onnx"):
        fetch_model("models/nope.onnx", str(project), cache, log)
    with pytest.raises(ModelFetchError, match="unsupported scheme 'gs'"):
        fetch_model("gs://bucket/m.onnx", str(project), cache, log)
    assert not os.path.exists(cache)  # local models are never copied


def test_unpack_local_zip_next_to_it_and_again_when_it_changes(tmp_path: Any) -> None:
    archive = tmp_path / "m.zip"
    archive.write_bytes(zip_bytes({"1/saved_model.pb": b"v1"}))
    first = unpack_local_zip(str(archive))
    assert os.path.dirname(first) == str(tmp_path)
    assert open(os.path.join(first, "1", "saved_model.pb"), "rb").read() == b"v1"
    assert unpack_local_zip(str(archive)) == first
    archive.write_bytes(zip_bytes({"1/saved_model.pb": b"version 2"}))
    second = unpack_local_zip(str(archive))
    assert second != first and open(os.path.join(second, "1", "saved_model.pb"), "rb").read() == b"version 2"


# ---------------------------------------------------------------- http(s) from a loopback server


class ModelServer(http.server.ThreadingHTTPServer):
    """Serves one body; tests change it and choose how the response misbehaves."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelHandler)
        self.body = b""
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.mode = "ok"  # ok | truncated | chunked-cut | 404
        self.gets = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ModelHandler(http.server.BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.gets += 1
        if srv.mode == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if srv.etag:
            self.send_header("ETag", srv.etag)
        if srv.last_modified:
            self.send_header("Last-Modified", srv.last_modified)
        if srv.mode == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = srv.body[: len(srv.body) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
            self.wfile.write(b"%x\r\n" % len(half))  # announces a chunk that never comes
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(srv.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if srv.mode == "truncated":
            self.wfile.write(srv.body[: len(srv.body) // 2])  # then the connection closes
        else:
            self.wfile.write(srv.body)
        self.close_connection = True


@pytest.fixture()
def server() -> Iterator[ModelServer]:
    srv = ModelServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def test_http_download_is_cached_and_fetched_again_when_changed(server: ModelServer, tmp_path: Any) -> None:
    cache, log = str(tmp_path / "cache"), Logs()
    server.body, server.etag = b"model version 1" * 1000, '"v1"'
    url = server.base + "/models/iris.onnx"
    first = fetch_model(url, "/project", cache, log)
    assert first.startswith(os.path.join(cache, "http")) and os.path.basename(first) == "iris.onnx"
    assert open(first, "rb").read() == server.body
    assert "downloading (14.6 KiB)" in log.text() and "downloaded 14.6 KiB" in log.text()

    mtime = os.stat(first).st_mtime_ns
    log.lines.clear()
    assert fetch_model(url, "/project", cache, log) == first
    assert os.stat(first).st_mtime_ns == mtime and "cached" in log.text() and "downloading" not in log.text()

    server.body, server.etag = b"model version 2", '"v2"'
    second = fetch_model(url, "/project", cache, log)
    assert second != first and open(second, "rb").read() == b"model version 2"
    assert open(first, "rb").read().startswith(b"model version 1")  # a running replica's copy stays whole


def test_http_last_modified_is_a_validator(server: ModelServer, tmp_path: Any) -> None:
    cache, log = str(tmp_path / "cache"), Logs()
    server.body, server.last_modified = b"abc", "Wed, 21 Oct 2015 07:28:00 GMT"
    url = server.base + "/m.onnx"
    first = fetch_model(url, "/p", cache, log)
    assert fetch_model(url, "/p", cache, log) == first and "cached" in log.lines[-1]
    server.body, server.last_modified = b"abd", "Wed, 21 Oct 2015 07:29:00 GMT"
    assert open(fetch_model(url, "/p", cache, log), "rb").read() == b"abd"


def test_http_without_validators_is_keyed_by_content(server: ModelServer, tmp_path: Any) -> None:
    cache, log = str(tmp_path / "cache"), Logs()
    server.body = b"same bytes"
    url = server.base + "/m.onnx"
    first = fetch_model(url, "/p", cache, log)
    assert fetch_model(url, "/p", cache, log) == first
    assert "same content as the cached copy" in log.text()
    server.body = b"other bytes"
    second = fetch_model(url, "/p", cache, log)
    assert second != first and open(second, "rb").read() == b"other bytes"
    assert not [n for n in os.listdir(os.path.join(cache, "http")) if n.startswith(".partial-")]


@pytest.mark.parametrize("mode, message", [
    ("truncated", r"m.onnx: download truncated: got 5000 of 10000 bytes"),
    ("chunked-cut", r"m.onnx: the connection closed mid-download, after 4.9 KiB"),
])
def test_http_cut_download_leaves_nothing(server: ModelServer, tmp_path: Any, mode: str, message: str) -> None:
    cache = tmp_path / "cache"
    server.body, server.etag, server.mode = b"x" * 10000, '"v1"', mode
    with pytest.raises(ModelFetchError, match=message):
        fetch_model(server.base + "/m.onnx", "/p", str(cache), Logs())
    assert leftovers(cache) == ["http"]
    server.mode = "ok"  # the next try starts afresh and succeeds
    path = fetch_model(server.base + "/m.onnx", "/p", str(cache), Logs())
    assert open(path, "rb").read() == server.body


def test_http_errors(server: ModelServer, tmp_path: Any) -> None:
    server.mode = "404"
    with pytest.raises(ModelFetchError, match=r"http://127.0.0.1:\d+/missing.onnx: HTTP 404"):
        fetch_model(server.base + "/missing.onnx", "/p", str(tmp_path), Logs())
    with pytest.raises(ModelFetchError, match="http://127.0.0.1:1/m.onnx: .*refused"):
        fetch_model("http://127.0.0.1:1/m.onnx", "/p", str(tmp_path), Logs())


def test_http_zip_is_unpacked(server: ModelServer, tmp_path: Any) -> None:
    cache, log = str(tmp_path / "cache"), Logs()
    server.body, server.etag = zip_bytes({"1/saved_model.pb": b"pb", "1/variables/v.index": b"ix"}), '"z1"'
    folder = fetch_model(server.base + "/exports/bert.zip", "/p", cache, log)
    assert os.path.basename(folder) == "bert"
    assert open(os.path.join(folder, "1", "saved_model.pb"), "rb").read() == b"pb"
    assert os.listdir(os.path.dirname(folder)) == ["bert"]  # the archive itself is not kept
    assert "unpacked 2 files" in log.text()
    assert fetch_model(server.base + "/exports/bert.zip", "/p", cache, log) == folder


def test_http_bad_zip_leaves_nothing(server: ModelServer, tmp_path: Any) -> None:
    cache = tmp_path / "cache"
    server.body, server.etag = b"not a zip", '"b"'
    with pytest.raises(ModelFetchError, match="not a valid zip file"):
        fetch_model(server.base + "/m.zip", "/p", str(cache), Logs())
    assert leftovers(cache) == ["http"]


def test_stale_partials_are_cleaned_fresh_ones_kept(server: ModelServer, tmp_path: Any) -> None:
    root = tmp_path / "cache" / "http"
    (root / ".partial-old").mkdir(parents=True)
    (root / ".partial-old" / "m.onnx").write_bytes(b"half")
    os.utime(root / ".partial-old" / "m.onnx", (0, 0))
    os.utime(root / ".partial-old", (0, 0))
    (root / ".partial-busy").mkdir()  # another fetch in progress right now
    server.body, server.etag = b"m", '"1"'
    fetch_model(server.base + "/m.onnx", "/p", str(tmp_path / "cache"), Logs())
    names = os.listdir(root)
    assert ".partial-old" not in names and ".partial-busy" in names


# ---------------------------------------------------------------- s3 from moto's server on loopback


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket="models")
        client.create_bucket(Bucket="empty")
        yield client
    server.stop()


def test_s3_object_is_cached_and_fetched_again_when_changed(s3: Any, tmp_path: Any) -> None:
    cache, log = str(tmp_path / "cache"), Logs()
    s3.put_object(Bucket="models", Key="onnx/iris.onnx", Body=b"iris v1")
    first = fetch_model("s3://models/onnx/iris.onnx", "/p", cache, log)
    assert first.startswith(os.path.join(cache, "s3")) and open(first, "rb").read() == b"iris v1"
    assert "downloading 1 object(s) (7 B)" in log.text()
    log.lines.clear()
    assert fetch_model("s3://models/onnx/iris.onnx", "/p", cache, log) == first
    assert "cached" in log.text() and "downloading" not in log.text()
    s3.put_object(Bucket="models", Key="onnx/iris.onnx", Body=b"iris v2")
    second = fetch_model("s3://models/onnx/iris.onnx", "/p", cache, log)
    assert second != first and open(second, "rb").read() == b"iris v2"


@pytest.mark.parametrize("url", ["s3://models/saved/bert", "s3://models/saved/bert/"])
def test_s3_folder_downloads_everything_under_it(s3: Any, tmp_path: Any, url: str) -> None:
    for key, body in {
        "saved/bert/1/saved_model.pb": b"pb",
        "saved/bert/1/variables/variables.index": b"ix",
        "saved/bert/1/variables/": b"",  # a console's folder marker
        "saved/bert-other/x": b"not under the prefix",
    }.items():
        s3.put_object(Bucket="models", Key=key, Body=body)
    folder = fetch_model(url, "/p", str(tmp_path / "cache"), Logs())
    assert os.path.basename(folder) == "bert"
    assert leftovers(folder) == ["1", "1/saved_model.pb", "1/variables", "1/variables/variables.index"]


def test_s3_zip_is_unpacked(s3: Any, tmp_path: Any) -> None:
    s3.put_object(Bucket="models", Key="zips/model.zip", Body=zip_bytes({"saved_model.pb": b"pb"}))
    folder = fetch_model("s3://models/zips/model.zip", "/p", str(tmp_path / "cache"), Logs())
    assert os.path.basename(folder) == "model" and os.listdir(folder) == ["saved_model.pb"]


@pytest.mark.parametrize("url, message", [
    ("s3://models/nothing/here.onnx",
     r"s3://models/nothing/here.onnx: no object at this key, and no objects under s3://models/nothing/here.onnx/"),
    ("s3://empty/", r"s3://empty/: no object at this key, and no objects under the bucket"),
    ("s3://no-such-bucket/m.onnx", r"s3://no-such-bucket/m.onnx: NoSuchBucket: The specified bucket does not exist"),
    ("s3:///m.onnx", r"no bucket name"),
])
def test_s3_errors_leave_nothing(s3: Any, tmp_path: Any, url: str, message: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelFetchError, match=message):
        fetch_model(url, "/p", str(cache), Logs())
    assert [p for p in leftovers(cache) if p != "s3"] == []


def test_s3_without_boto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ModelFetchError, match=r"install cortexd\[s3\]"):
        fetch_model("s3://models/m.onnx", "/p", str(tmp_path), Logs())
