"""Cortex projects run unchanged (issue 8): requirements.txt, project files, AWS-style models.

Real daemons (tests/daemon_harness.py), real pip against the index pip's configuration names,
and a real S3-compatible server (moto's ThreadedMotoServer) on 127.0.0.1. The AWS settings
reach the predictors the way they do under systemd: in the daemon's environment, which
replicas inherit (docs/aws.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cortexd.cli import requirements_lines
from cortexd.daemon.deploy.envs import MARKER
from tests.daemon_harness import REPO, Client, Daemon, write_project
from tests.modelgen import linear_labels, onnx_linear

# Small, pure-Python, no dependencies, and neither cortexd nor its tests depend on it.
PACKAGE = "inflection"
MISSING_PACKAGE = "cortexd-test-no-such-package-7f3a9c"
FROM_S3_EXAMPLE = os.path.join(REPO, "examples", "reference-iris", "from-s3")
# A first start builds an environment with pip: allow for a slow index and a busy machine.
BUILD_TIMEOUT_S = 300.0


# ---------------------------------------------------------------- helpers


@dataclass
class Startup:
    seconds: float  # from starting `cortexd serve` to every API live
    deploy_seconds: float  # to the watched API's first replica being started: all but the replica's own load
    seen: list[tuple[str, str | None]]  # (status, reason) of the watched API, as they changed


def start_until_live(daemon: Daemon, api: str, timeout: float = BUILD_TIMEOUT_S) -> Startup:
    """Start the daemon and poll `get` until every API is live; fail at once on `error`."""
    seen: list[tuple[str, str | None]] = []
    deployed: float | None = None
    started = time.monotonic()
    daemon.start(wait_live=False)
    deadline = started + timeout
    while time.monotonic() < deadline:
        views = daemon.get()["apis"]
        watched = next(v for v in views if v["name"] == api)
        pair = (watched["status"], watched["reason"])
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if deployed is None and watched["replicas"]:
            deployed = time.monotonic() - started
        if any(v["status"].startswith("error") for v in views):
            raise AssertionError(f"an API failed while starting: {views}\n{daemon.stderr()}")
        if all(v["status"] == "live" for v in views):
            live = time.monotonic() - started
            return Startup(live, live if deployed is None else deployed, seen)
        time.sleep(0.05)
    raise AssertionError(f"not live after {timeout}s; seen {seen}\n{daemon.stderr()}")


def wait_until(daemon: Daemon, api: str, status: str, timeout: float = BUILD_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = daemon.get(api)
        if view["status"] == status:
            return view
        time.sleep(0.1)
    raise AssertionError(f"{api} not {status} after {timeout}s: {view}\n{daemon.stderr()}")


def tree(root: str) -> dict[str, bytes]:
    """Every file under root with its content: what 'the project was not modified' compares."""
    files: dict[str, bytes] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify datagram waiting on sock, oldest first (non-blocking)."""
    messages: list[str] = []
    sock.setblocking(False)
    while len(messages) < 10_000:  # bounded; a daemon sends a few per second
        try:
            messages.append(sock.recv(65536).decode())
        except BlockingIOError:
            break
    return messages


def env_marker(prefix: str) -> str:
    return os.path.join(prefix, MARKER)


def count(text: str, needle: str) -> int:
    return text.count(needle)


def requirements_yaml(deployment: str, apis: list[str]) -> str:
    return f"- kind: deployment\n  name: {deployment}\n" + "".join(
        f"- kind: api\n  name: {name}\n  python:\n    predictor: words.py\n  compute:\n    cpu: 100m\n" for name in apis
    )


WORDS = f"""\
    import sys

    import {PACKAGE}  # from the project's requirements.txt, not from cortexd's environment


    def predict(sample, metadata):
        return {{"plural": {PACKAGE}.pluralize(sample["word"]), "prefix": sys.prefix}}
"""


# ---------------------------------------------------------------- requirements.txt


@pytest.mark.slow
def test_requirements_env_is_built_once_reused_on_restart_and_rebuilt_when_changed(tmp_path: Any) -> None:
    assert importlib.util.find_spec(PACKAGE) is None, f"{PACKAGE} must not be in cortexd's environment"
    project = write_project(
        str(tmp_path / "project"), requirements_yaml("words", ["words"]),
        {"words.py": WORDS, "requirements.txt": f"{PACKAGE}\n"},
    )
    base = str(tmp_path / "d")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))

    # First start: the env is built off the loop while `get` says why the API is not up yet,
    # and systemd is asked for more time than TimeoutStartSec while pip runs.
    first_daemon = Daemon(project, base, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        first = start_until_live(first_daemon, "words")
        assert ("creating", "installing requirements") in first.seen, first.seen
        sent = notifications(notify)
        # READY=1 once the configuration is applied, not when every API is live (a slow build
        # must not hold the unit in `activating`); the build still asks for more time.
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in sent), sent
        ready = next(m for m in sent if m.startswith("READY=1"))
        assert "creating" in ready, sent
        answer = first_daemon.client().post("/words/words", {"word": "octopus"}).json()
        assert answer["plural"] == "octopi"
        first_prefix = answer["prefix"]
        assert os.path.realpath(first_prefix).startswith(os.path.realpath(os.path.join(base, "state", "envs")))
        marker_mtime = os.stat(env_marker(first_prefix)).st_mtime_ns
    finally:
        assert first_daemon.stop() == 0
        notify.close()

    # Restart on the same state: the env is found by its key; no venv, no pip.
    daemon = Daemon(project, base)
    try:
        restart = start_until_live(daemon, "words")
        assert ("creating", "installing requirements") not in restart.seen, restart.seen
        log = daemon.stderr()  # both runs: the harness appends
        assert count(log, f"Successfully installed {PACKAGE}") == 1, log
        assert count(log, "requirements: creating environment") == 1, log
        assert os.stat(env_marker(first_prefix)).st_mtime_ns == marker_mtime
        assert daemon.client().post("/words/words", {"word": "ox"}).json() == {"plural": "oxen", "prefix": first_prefix}
        print(f"\nfirst start (env build) {first.seconds:.2f} s to live, "
              f"{first.deploy_seconds:.2f} s to the replica's start; "
              f"restart with the cached env {restart.seconds:.2f} s / {restart.deploy_seconds:.2f} s")

        # A changed file: reload builds a new env and rolls the API onto it.
        with open(os.path.join(project, "requirements.txt"), "w") as handle:
            handle.write(f"{PACKAGE}==0.5.1\n")
        out = daemon.cli("reload", timeout=BUILD_TIMEOUT_S)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "words: replaced" in out.stdout, out.stdout
        second_prefix = daemon.client().post("/words/words", {"word": "mouse"}).json()["prefix"]
        assert second_prefix != first_prefix and os.path.isfile(env_marker(second_prefix))
        assert daemon.get("words")["version"] == 2

        # A failed install on reload: pip's reason is reported, the old version keeps serving.
        with open(os.path.join(project, "requirements.txt"), "w") as handle:
            handle.write(f"{PACKAGE}==0.5.1\n{MISSING_PACKAGE}==1.0\n")
        out = daemon.cli("reload", timeout=BUILD_TIMEOUT_S)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "words: failed" in out.stdout and f"No matching distribution found for {MISSING_PACKAGE}" in out.stdout
        view = daemon.get("words")
        assert view["status"] == "live" and view["version"] == 2, view
        assert "still serving version 2" in view["last_error"], view
        assert f"No matching distribution found for {MISSING_PACKAGE}" in view["last_error"], view
        assert daemon.client().post("/words/words", {"word": "child"}).json() == {
            "plural": "children", "prefix": second_prefix,
        }
        assert daemon.client().get("/healthz").status == 200
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_a_package_that_does_not_exist_puts_the_apis_in_error_with_pips_reason(tmp_path: Any) -> None:
    project = write_project(
        str(tmp_path / "project"), requirements_yaml("broken", ["first", "second"]),
        {"words.py": WORDS, "requirements.txt": f"{MISSING_PACKAGE}==1.0\n"},
    )
    daemon = Daemon(project, str(tmp_path / "d"))
    try:
        daemon.start(wait_live=False)
        for api in ("first", "second"):
            view = wait_until(daemon, api, "error")
            for field in ("reason", "last_error"):
                assert f"No matching distribution found for {MISSING_PACKAGE}" in view[field], view
            assert "installing requirements" not in view["reason"]
        client = daemon.client()
        assert client.get("/healthz").status == 200  # the daemon itself stays up
        assert client.get("/readyz").status == 503
        answer = client.post("/broken/first", {"word": "cat"})
        assert answer.status == 503 and "error" in answer.json()["status"], answer.body

        # Fixing the file and reloading brings the APIs up: nothing was left half-built.
        with open(os.path.join(project, "requirements.txt"), "w") as handle:
            handle.write(f"{PACKAGE}\n")
        out = daemon.cli("reload", timeout=BUILD_TIMEOUT_S)
        assert out.returncode == 0, out.stdout + out.stderr
        assert client.post("/broken/second", {"word": "person"}).json()["plural"] == "people"
    finally:
        assert daemon.stop() == 0


# ---------------------------------------------------------------- S3 on loopback, project files


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[Any, dict[str, str]]]:
    """moto's S3 server on 127.0.0.1, a client for it, and the AWS_* settings daemons get."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Nothing from this machine's ~/.aws may leak in.
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)  # the harness passes os.environ on to the daemon
        for name, value in settings.items():
            patch.setenv(name, value)
        yield boto3.client("s3", endpoint_url=endpoint), settings
    server.stop()


AWS_YAML = """\
- kind: deployment
  name: aws

- kind: api
  name: bucket
  python:
    predictor: bucket_predictor.py
    config:
      bucket: models
      key: weights/weights.json

- kind: api
  name: files
  python:
    predictor: files_predictor.py

- kind: api
  name: s3-onnx
  onnx:
    model: s3://models/onnx/linear.onnx
"""

BUCKET_PREDICTOR = """\
    import json

    import boto3


    class PythonPredictor:
        def __init__(self, config):
            s3 = boto3.client("s3")  # endpoint and credentials: the AWS_* variables, as on AWS
            s3.download_file(config["bucket"], config["key"], "weights.json")
            with open("weights.json") as handle:
                self.weights = json.load(handle)
            self.endpoint = s3.meta.endpoint_url

        def predict(self, payload):
            score = sum(w * x for w, x in zip(self.weights, payload["x"]))
            return {"score": score, "endpoint": self.endpoint}
"""

FILES_PREDICTOR = """\
    import os

    with open("data/labels.txt") as handle:  # a file of the project, by relative path
        LABELS = handle.read().split()


    def predict(sample, metadata):
        os.makedirs("scratch", exist_ok=True)
        with open("scratch/last.txt", "w") as handle:  # a new file in the working directory
            handle.write(sample["note"])
        with open("data/history.log", "a") as handle:  # and an existing project file, edited
            handle.write(sample["note"] + "\\n")
        with open("scratch/last.txt") as handle:
            read_back = handle.read()
        return {
            "labels": LABELS,
            "cwd": os.getcwd(),
            "scratch": os.path.abspath("scratch/last.txt"),
            "read_back": read_back,
        }
"""


@pytest.fixture(scope="module")
def aws_daemon(s3: tuple[Any, dict[str, str]], tmp_path_factory: Any) -> Iterator[tuple[Daemon, str, dict[str, bytes]]]:
    client, settings = s3
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="weights/weights.json", Body=json.dumps([1.0, 2.0, 3.0]).encode())
    root = tmp_path_factory.mktemp("aws")
    model = onnx_linear(str(root / "linear.onnx"))
    client.upload_file(model, "models", "onnx/linear.onnx")
    project = write_project(
        str(root / "project"), AWS_YAML,
        {
            "bucket_predictor.py": BUCKET_PREDICTOR,
            "files_predictor.py": FILES_PREDICTOR,
            "data/labels.txt": "setosa versicolor virginica\n",
            "data/history.log": "kept as the user wrote it\n",
        },
    )
    before = tree(project)
    daemon = Daemon(project, str(root / "d"), env=settings).start(timeout=120)
    try:
        yield daemon, project, before
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_a_predictor_downloads_its_model_with_boto3_from_an_s3_compatible_store(
    aws_daemon: tuple[Daemon, str, dict[str, bytes]], s3: tuple[Any, dict[str, str]],
) -> None:
    daemon, _project, _before = aws_daemon
    answer = daemon.client().post("/aws/bucket", {"x": [1, 1, 1]})
    assert answer.status == 200, answer.body
    assert answer.json() == {"score": 6.0, "endpoint": s3[1]["AWS_ENDPOINT_URL"]}


@pytest.mark.slow
def test_the_daemons_own_s3_model_download_honours_the_same_settings(
    aws_daemon: tuple[Daemon, str, dict[str, bytes]],
) -> None:
    daemon, _project, _before = aws_daemon
    answer = daemon.client().post("/aws/s3-onnx", {"input": [[1.0, 2.0, 3.0, 4.0]]})
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["label"] == linear_labels([[1.0, 2.0, 3.0, 4.0]])
    assert os.path.isdir(os.path.join(daemon.state_dir, "models", "s3"))


@pytest.mark.slow
def test_a_predictor_reads_project_files_by_relative_path_and_writes_only_its_copy(
    aws_daemon: tuple[Daemon, str, dict[str, bytes]],
) -> None:
    daemon, project, before = aws_daemon
    client = daemon.client()
    for note in ("first", "second"):
        answer = client.post("/aws/files", {"note": note})
        assert answer.status == 200, answer.body
        result = answer.json()
        assert result["labels"] == ["setosa", "versicolor", "virginica"]
        assert result["read_back"] == note
    cwd = os.path.realpath(result["cwd"])
    assert cwd != os.path.realpath(project)
    assert cwd.startswith(os.path.realpath(daemon.state_dir) + os.sep)  # the version's snapshot
    with open(result["scratch"]) as handle:
        assert handle.read() == "second"
    with open(os.path.join(cwd, "data", "history.log")) as handle:
        assert handle.read() == "kept as the user wrote it\nfirst\nsecond\n"
    # Not one byte of the user's folder changed: no scratch file, no edit, no __pycache__.
    assert tree(project) == before


# ---------------------------------------------------------------- the Cortex example, unchanged


@pytest.mark.slow
def test_the_cortex_iris_example_serves_unchanged_from_an_s3_compatible_bucket(
    s3: tuple[Any, dict[str, str]], tmp_path: Any,
) -> None:
    """examples/reference-iris/from-s3: Cortex's own files; only AWS_ENDPOINT_URL says where the bucket is."""
    client, settings = s3
    client.create_bucket(Bucket="cortex-examples")
    project = str(tmp_path / "project")
    shutil.copytree(FROM_S3_EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "model.pkl"))
    before = tree(project)
    upload = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "reference-iris", "train.py"),
         "-o", str(tmp_path / "model.pkl"), "--upload", "s3://cortex-examples/sklearn/iris-classifier/model.pkl"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **settings}, check=False,
    )
    assert upload.returncode == 0, upload.stderr

    base = str(tmp_path / "d")
    first_daemon = Daemon(project, base, env=settings)
    try:
        first = start_until_live(first_daemon, "classifier")
        assert ("creating", "installing requirements") in first.seen, first.seen
        with open(os.path.join(project, "sample.json")) as handle:
            sample = json.load(handle)
        assert first_daemon.client().post("/iris/classifier", sample).json() == "setosa"
    finally:
        assert first_daemon.stop() == 0

    daemon = Daemon(project, base, env=settings)
    try:
        restart = start_until_live(daemon, "classifier")
        assert ("creating", "installing requirements") not in restart.seen, restart.seen
        assert count(daemon.stderr(), "requirements: creating environment") == 1
        out = daemon.cli("predict", "classifier", os.path.join(project, "sample.json"))
        assert out.returncode == 0 and json.loads(out.stdout) == "setosa", out.stdout + out.stderr
        virginica = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
        assert Client(daemon.port).post("/iris/classifier", virginica).json() == "virginica"
        # One setosa before the restart (kept in the state's SQLite), one after, one virginica.
        assert daemon.get("classifier")["tracker"]["total"]["counts"] == {"setosa": 2, "virginica": 1}
        print(f"\nreference iris from S3: first start (env build) {first.seconds:.2f} s to live, "
              f"{first.deploy_seconds:.2f} s to the replica's start; restart with the cached env "
              f"{restart.seconds:.2f} s / {restart.deploy_seconds:.2f} s")
    finally:
        assert daemon.stop() == 0
    assert tree(project) == before  # model.pkl was downloaded into the snapshot, not here


# ---------------------------------------------------------------- cortexd validate


@pytest.mark.parametrize(
    ("problems", "lines"),
    [
        ([], []),
        ([(3, "invalid requirement 'x=1'")], ["requirements.txt:3: invalid requirement 'x=1'"]),
        ([(0, "cannot read it"), (7, "no such option")],
         ["requirements.txt: cannot read it", "requirements.txt:7: no such option"]),
    ],
)
def test_requirements_lines_are_located_like_config_errors(problems: list[tuple[int, str]], lines: list[str]) -> None:
    assert requirements_lines(problems) == lines


VALID_YAML = """\
- kind: deployment
  name: check
- kind: api
  name: words
  python:
    predictor: words.py
"""


def validate(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortexd", "validate", path], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_reports_requirements_lines_pip_cannot_parse(tmp_path: Any) -> None:
    project = write_project(
        str(tmp_path / "project"),
        VALID_YAML.replace("predictor: words.py", "predictor: words.py\n  replicas: 2"),
        {"words.py": WORDS, "requirements.txt": f"# fine\n{PACKAGE}\nnumpy=1.26\n--no-such-option\n"},
    )
    out = validate(project)
    assert out.returncode == 2, out.stdout + out.stderr
    headline, *lines = out.stdout.splitlines()
    assert "December 2019 dialect" in headline  # which dialect the file was read as comes first
    assert lines[0].startswith("cortex.yaml:") and "replicas" in lines[0], lines
    assert lines[1].startswith("requirements.txt:3: invalid requirement 'numpy=1.26'"), lines
    assert "did you mean '=='?" in lines[1]
    assert lines[2] == "requirements.txt:4: no such option in a requirements file: --no-such-option", lines
    assert len(lines) == 3
    assert out.stderr.startswith("3 errors in "), out.stderr


def test_validate_passes_a_project_whose_requirements_parse(tmp_path: Any) -> None:
    project = write_project(
        str(tmp_path / "project"), VALID_YAML, {"words.py": WORDS, "requirements.txt": f"{PACKAGE}>=0.5\n"},
    )
    out = validate(project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("requirements.txt: valid")
    only_requirements = write_project(
        str(tmp_path / "bad"), VALID_YAML, {"words.py": WORDS, "requirements.txt": "numpy==\n"},
    )
    out = validate(os.path.join(only_requirements, "cortex.yaml"))
    assert out.returncode == 2 and out.stdout.splitlines()[1].startswith("requirements.txt:1: "), out.stdout
    assert out.stderr.startswith("1 error in "), out.stderr
