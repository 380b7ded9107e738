"""The GPU checks scripts/device-check.sh runs: cortexd from this checkout on the GPU machine.

Steps, each recorded in device-check.json under --out (with a log beside it):
  inventory   NVML's devices and per-process readings; each framework's probe (cortexd.gpu_probe)
  sharing     two APIs with gpu: 0.5 on the one card, both serving a PyTorch predictor on CUDA;
              a third asking 0.5 is `compute unavailable`; `cortexd gpus`
  accounting  each replica's GPU memory from NVML (its process tree) against torch's own reading
  gpu_oom     the in-replica limit refuses an allocation past gpu_mem (torch's memory fraction);
              a replica that lifts it and allocates past gpu_mem is stopped with the reason,
              and the other API on the card keeps serving
  throughput  a PyTorch MLP on the GPU, unbatched vs server-side batched

--fake runs the same steps here, over the fake NVML (CORTEXD_FAKE_GPUS=1, pretend per-process
memory written by the predictor) and PyTorch on the CPU: it tests the script, not the GPU.
Every wait is bounded; steps past the time budget are recorded as skipped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# after sys.path has the repository (the script runs without an installed cortexd)
from cortexd import cli, gpu_probe  # noqa: E402  (see above)
from cortexd.daemon.fleet.gpu_memory import process_tree  # noqa: E402  (see above)
from cortexd.daemon.fleet.gpus import open_nvml  # noqa: E402  (see above)

MiB = 1024**2
GPU_MEM_MIB = 8192  # the gpu_mem of the API that is made to go past it
SAMPLE = [0.01 * i for i in range(256)]

PREDICTOR = '''\
    """A PyTorch MLP on the replica's GPU (CPU without one) that can be told to take memory."""
    import os

    import torch

    OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    held = []
    pretend = [0]


    class PythonPredictor:
        def __init__(self, config):
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Linear(256, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
                torch.nn.Linear(4096, 10)).to(self.device).eval()
            self.allocate(int(config.get("base_mib", 512)))

        def allocate(self, mib):
            if self.device.type == "cuda":
                held.append(torch.empty(mib << 20, dtype=torch.uint8, device=self.device))
                torch.cuda.synchronize()
            else:  # fake mode: what NVML would see, through the fake's per-process files
                pretend[0] += mib << 20
                folder = os.environ.get("CORTEXD_FAKE_GPU_PROC_DIR")
                if folder:
                    path = os.path.join(folder, str(os.getpid()))
                    with open(path + ".tmp", "w") as f:
                        f.write(str(pretend[0]))
                    os.replace(path + ".tmp", path)

        def state(self):
            cuda = self.device.type == "cuda"
            return {"pid": os.getpid(), "device": str(self.device),
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "device_name": torch.cuda.get_device_name(0) if cuda else None,
                    "torch_allocated": torch.cuda.memory_allocated() if cuda else pretend[0],
                    "torch_reserved": torch.cuda.memory_reserved() if cuda else pretend[0]}

        def predict(self, payload):
            if isinstance(payload, dict):
                if "allocate_mib" in payload:
                    if payload.get("bypass") and self.device.type == "cuda":
                        torch.cuda.set_per_process_memory_fraction(1.0, 0)  # lift cortexd's limit
                    try:
                        self.allocate(int(payload["allocate_mib"]))
                        error = None
                    except OOM as exc:
                        error = str(exc).splitlines()[0][:300]
                    return {"allocated": error is None, "error": error, **self.state()}
                return self.state()
            batch = payload if isinstance(payload[0], list) else [payload]
            with torch.inference_mode():
                x = torch.tensor(batch, dtype=torch.float32, device=self.device)
                classes = self.model(x).argmax(1).tolist()
            return classes if isinstance(payload[0], list) else classes[0]
'''


class Check:
    def __init__(self, out: str, fake: bool, budget_s: float) -> None:
        self.out, self.fake = out, fake
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, Any] = {"fake": fake, "steps": {}}
        self.log_file = open(os.path.join(out, "device-check.log"), "a")
        self.work = tempfile.mkdtemp(prefix="cortexd-device-check-")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO) if p)}
        if fake:
            proc_dir = os.path.join(self.work, "fake-gpu-procs")
            os.makedirs(proc_dir)
            self.env.update(CORTEXD_FAKE_GPUS="1", CORTEXD_FAKE_GPU_MEM="141Gi", CORTEXD_FAKE_GPU_PROC_DIR=proc_dir)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runtime = ""

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def step(self, name: str, fn: Callable[[], dict[str, Any]], needs_s: float) -> None:
        if time.monotonic() + needs_s > self.deadline:
            self.results["steps"][name] = {"ok": None, "skipped": "out of time"}
            self.log(f"== {name}: skipped, out of time")
            return
        self.log(f"== {name}")
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # one step's failure is a finding; the others still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.monotonic() - started, 1)
        self.results["steps"][name] = result
        self.log(f"== {name}: {json.dumps(result)[:2000]}")
        self.save()

    def save(self) -> None:
        with open(os.path.join(self.out, "device-check.json"), "w") as f:
            json.dump(self.results, f, indent=2)

    # -- the daemon

    def start(self, yaml_text: str) -> None:
        self.stop()
        project = tempfile.mkdtemp(dir=self.work)
        with open(os.path.join(project, "cortex.yaml"), "w") as f:
            f.write(textwrap.dedent(yaml_text))
        with open(os.path.join(project, "torch_probe.py"), "w") as f:
            f.write(textwrap.dedent(PREDICTOR))
        base = tempfile.mkdtemp(dir=self.work)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.runtime = os.path.join(base, "run")
        self.stderr_path = os.path.join(base, "daemon.log")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "cortexd", "serve", "--config", os.path.join(project, "cortex.yaml"),
             "--host", "127.0.0.1", "--port", str(self.port), "--runtime-dir", self.runtime,
             "--state-dir", os.path.join(base, "state"), "--log-dir", os.path.join(base, "log")],
            stdout=open(self.stderr_path, "ab"), stderr=subprocess.STDOUT, env=self.env, cwd=base)
        self.wait(lambda: os.path.exists(os.path.join(self.runtime, "control.sock")), 30, "the control socket")

    def stop(self) -> None:
        if self.daemon is None:
            return
        self.daemon.terminate()
        try:
            self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
        with open(self.stderr_path, errors="replace") as f:
            self.log_file.write("---- daemon log (last 200 lines)\n" + "".join(f.readlines()[-200:]) + "----\n")
        self.daemon = None

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.daemon.returncode}) waiting for {what}")
            try:
                value = cond()
                if value:
                    return value
            except (OSError, cli.Refused):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}")

    def get(self, api: str) -> dict[str, Any]:
        view: dict[str, Any] = cli.call(self.runtime, {"cmd": "get", "api": api})
        return view

    def live(self, api: str) -> Callable[[], bool]:
        return lambda: bool(self.get(api)["status"] == "live")

    def cortexd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cortexd", *args], capture_output=True, text=True, timeout=120,
                              env={**self.env, "CORTEXD_RUNTIME_DIR": self.runtime})

    def post(self, path: str, body: Any, conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            if own:
                conn.close()


# --------------------------------------------------------------------------- steps


def inventory(c: Check) -> dict[str, Any]:
    nvml = open_nvml(c.env)
    gpus = [vars(g) for g in nvml.gpus()]
    by_device = nvml.process_gpu_memory_by_device()
    frameworks = gpu_probe.probe_frameworks(env=c.env, timeout=90)
    return {"ok": bool(gpus), "nvml": gpus, "nvml_reason": nvml.unavailable_reason(),
            "process_readings": {str(k): len(v) for k, v in by_device.items()},
            "frameworks": [gpu_probe.describe(r) for r in frameworks]}


SHARING_YAML = f"""\
    - kind: deployment
      name: dc
    - kind: api
      name: half-a
      python: {{predictor: torch_probe.py}}
      compute: {{cpu: 0.25, gpu: 0.5, gpu_mem: {GPU_MEM_MIB}Mi}}
    - kind: api
      name: half-b
      python: {{predictor: torch_probe.py}}
      compute: {{cpu: 0.25, gpu: 0.5}}
    - kind: api
      name: half-c
      python: {{predictor: torch_probe.py}}
      compute: {{cpu: 0.25, gpu: 0.5}}
"""


def sharing(c: Check) -> dict[str, Any]:
    c.start(SHARING_YAML)
    for api in ("half-a", "half-b"):
        c.wait(c.live(api), 180, f"{api} live")
    third = c.wait(lambda: (v := c.get("half-c"))["status"] == "compute unavailable" and v, 30, "half-c refused")
    states = {api: c.post(f"/dc/{api}", {"state": True})[1] for api in ("half-a", "half-b")}
    predictions = {api: c.post(f"/dc/{api}", SAMPLE) for api in ("half-a", "half-b")}
    table = c.cortexd("gpus").stdout
    c.log("cortexd gpus:\n" + table)
    want = "cpu" if c.fake else "cuda:0"
    same_card = len({s["cuda_visible_devices"] for s in states.values()}) == 1
    ok = (all(s["device"] == want for s in states.values()) and same_card
          and all(status == 200 for status, _ in predictions.values())
          and "needs 0.5 of a GPU per replica" in (third["reason"] or ""))
    return {"ok": ok, "states": states, "third": {"status": third["status"], "reason": third["reason"]},
            "gpus_table": table, "gpus_json": json.loads(c.cortexd("gpus", "--json").stdout or "null")}


def accounting(c: Check) -> dict[str, Any]:
    nvml = open_nvml(c.env)
    by_device = nvml.process_gpu_memory_by_device()
    out: dict[str, Any] = {}
    for api in ("half-a", "half-b"):
        state = c.post(f"/dc/{api}", {"state": True})[1]
        pids = process_tree(state["pid"])
        nvml_bytes = sum(used for per_pid in by_device.values() for pid, used in per_pid.items() if pid in pids)
        view = c.get(api)["replicas"][0]
        daemon_view = view.get("gpu_mem_bytes")  # None until the daemon reads replicas' GPU memory
        out[api] = {"nvml_mib": round(nvml_bytes / MiB), "torch_reserved_mib": round(state["torch_reserved"] / MiB),
                    "overhead_mib": round((nvml_bytes - state["torch_reserved"]) / MiB),
                    "daemon_view_mib": None if daemon_view is None else round(daemon_view / MiB)}
    # NVML sees at least what torch reserved (plus the CUDA context), never less
    return {"ok": all(v["nvml_mib"] >= v["torch_reserved_mib"] > 0 for v in out.values()), **out}


def gpu_oom(c: Check) -> dict[str, Any]:
    result: dict[str, Any] = {}
    over = GPU_MEM_MIB + 4096
    if not c.fake:  # the in-replica limit: torch's memory fraction refuses it
        _, refused = c.post("/dc/half-a", {"allocate_mib": over})
        result["in_replica_limit"] = {"allocated": refused["allocated"], "error": refused["error"]}
    before = c.get("half-a")["replicas"][0]["pid"]
    _, lifted = c.post("/dc/half-a", {"allocate_mib": over, "bypass": True})
    result["bypassed_allocation"] = lifted["allocated"]

    def stopped() -> dict[str, Any] | None:
        view = c.get("half-a")
        pids = [r["pid"] for r in view["replicas"]]
        if view["status"] == "error (out of GPU memory)" or "GPU memory" in (view.get("last_error") or "") \
                or before not in pids:
            return view
        return None

    try:
        view = c.wait(stopped, 30, "half-a to be stopped for GPU memory")
        result.update(stopped=True, status=view["status"], last_error=view.get("last_error"))
    except TimeoutError:
        result.update(stopped=False, note="not stopped within 30 s: is the daemon's GPU OOM check wired?")
    result["neighbour_serves"] = all(c.post("/dc/half-b", SAMPLE)[0] == 200 for _ in range(5))
    refused_ok = c.fake or result["in_replica_limit"]["allocated"] is False
    result["ok"] = bool(result["stopped"] and result["neighbour_serves"] and refused_ok)
    return result


THROUGHPUT_YAML = """\
    - kind: deployment
      name: dc
    - kind: api
      name: batched
      python: {predictor: torch_probe.py, server_side_batching: {max_batch_size: 32, batch_interval: 5ms}}
      compute: {cpu: 0.25, gpu: 0.5}
    - kind: api
      name: plain
      python: {predictor: torch_probe.py}
      compute: {cpu: 0.25, gpu: 0.5}
"""


def load(c: Check, path: str, seconds: float, clients: int = 32) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
        mine, bad = [], 0
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                status, _ = c.post(path, SAMPLE, conn)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
                status = 0
            if status == 200:
                mine.append(time.perf_counter() - t)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    latencies.sort()
    pick = (lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)) if latencies else (
        lambda q: None)
    return {"requests_per_s": round(len(latencies) / seconds, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": errors[0], "clients": clients}


def throughput(c: Check) -> dict[str, Any]:
    c.start(THROUGHPUT_YAML)
    apis = ["plain", "batched"]
    for api in apis:
        c.wait(c.live(api), 180, f"{api} live")
    seconds = 5 if c.fake else 20
    result: dict[str, Any] = {}
    for api in apis:
        endpoint = c.get(api)["endpoint"]
        c.post(endpoint, SAMPLE)  # warm
        result[api] = load(c, endpoint, seconds)
    result["speedup"] = round(result["batched"]["requests_per_s"] / max(result["plain"]["requests_per_s"], 0.1), 2)
    result["ok"] = all(result[api]["requests_per_s"] > 0 for api in apis)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--fake", action="store_true", help="fake NVML and PyTorch on the CPU (tests the script)")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--steps", default="inventory,sharing,accounting,gpu_oom,throughput")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    c = Check(args.out, args.fake, args.budget_s)
    wanted = args.steps.split(",")
    steps: list[tuple[str, Callable[[Check], dict[str, Any]], float]] = [
        ("inventory", inventory, 10), ("sharing", sharing, 60), ("accounting", accounting, 5),
        ("gpu_oom", gpu_oom, 40), ("throughput", throughput, 90)]
    try:
        for name, fn, needs in steps:
            if name in wanted:
                c.step(name, partial(fn, c), needs)
    finally:
        c.stop()
        c.save()
        shutil.rmtree(c.work, ignore_errors=True)
    failed = [name for name, r in c.results["steps"].items() if r.get("ok") is False]
    c.log(f"device check: {'failed: ' + ', '.join(failed) if failed else 'all steps passed or skipped'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
