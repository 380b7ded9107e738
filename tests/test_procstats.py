from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from cortexd.daemon.fleet.procstats import ProcessSampler

MiB = 1024**2

# Every child ends by itself after LIFETIME seconds even if a test forgets it.
LIFETIME = 30
BUSY = f"""
import time
print("ready", flush=True)
end = time.time() + {LIFETIME}
while time.time() < end:
    pass
"""
IDLE = f"""
import time
print("ready", flush=True)
time.sleep({LIFETIME})
"""
HOG = f"""
import time
block = b"x" * (200 * 1024 * 1024)  # bytes literal repetition touches every page
print("ready", flush=True)
time.sleep({LIFETIME})
"""
# A parent that idles while its child does the work (like a predictor using multiprocessing).
PARENT_OF = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {code!r}], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep({life})
child.kill()
"""

Spawn = Callable[[str], subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    procs: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        # grandchildren first, so no busy loop outlives the test as an orphan
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def ready(proc: subprocess.Popen[str]) -> str:
    """Block until the child has finished starting up (its first line)."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"child exited early with {proc.wait(timeout=5)}"
    return line


def sample_until(sampler: ProcessSampler, pid: int, ok: Callable[[float, int], bool],
                 timeout: float = 10.0) -> tuple[float, int]:
    """Sample every 0.25 s until ok(cpu, rss) or timeout; returns the last sample."""
    deadline = time.monotonic() + timeout
    cpu, rss = sampler.sample(pid)
    while not ok(cpu, rss) and time.monotonic() < deadline:
        time.sleep(0.25)  # cpu_percent needs wall time between samples to mean anything
        cpu, rss = sampler.sample(pid)
    return cpu, rss


def test_busy_child_reads_busy_and_idle_child_reads_idle(spawn: Spawn) -> None:
    busy, idle = spawn(BUSY), spawn(IDLE)
    ready(busy)
    ready(idle)
    sampler = ProcessSampler()
    assert sampler.sample(busy.pid)[0] == 0.0  # first sample has no baseline
    sampler.sample(idle.pid)
    cpu, rss = sample_until(sampler, busy.pid, lambda cpu, _: cpu > 40)
    assert cpu > 40, "a busy loop should get a good share of a core even on a shared machine"
    assert rss > 1 * MiB
    idle_cpu, idle_rss = sampler.sample(idle.pid)
    assert idle_cpu < 5 and idle_rss > 1 * MiB


def test_rss_of_a_memory_hog(spawn: Spawn) -> None:
    hog, idle = spawn(HOG), spawn(IDLE)
    ready(hog)
    ready(idle)
    sampler = ProcessSampler()
    assert sampler.sample(hog.pid)[1] >= 200 * MiB
    assert sampler.sample(idle.pid)[1] < 100 * MiB


def test_whole_tree_counts(spawn: Spawn) -> None:
    parent = spawn(PARENT_OF.format(code=BUSY, life=LIFETIME))
    grandchild = int(ready(parent))
    sampler = ProcessSampler()
    sampler.sample(parent.pid)
    assert sampler.pids(parent.pid) == [parent.pid, grandchild]
    cpu, _ = sample_until(sampler, parent.pid, lambda cpu, _: cpu > 40)
    assert cpu > 40, "the busy grandchild's CPU belongs to the replica"

    hog_parent = spawn(PARENT_OF.format(code=HOG, life=LIFETIME))
    ready(hog_parent)
    assert sampler.sample(hog_parent.pid)[1] >= 200 * MiB


def test_departed_children_and_dead_roots_are_forgotten(spawn: Spawn) -> None:
    parent = spawn(PARENT_OF.format(code=IDLE, life=LIFETIME))
    grandchild = int(ready(parent))
    other = spawn(IDLE)
    ready(other)
    sampler = ProcessSampler()
    sampler.sample(parent.pid)
    sampler.sample(other.pid)
    assert sampler.tracked() == {parent.pid, grandchild, other.pid}

    subprocess.run(["kill", "-9", str(grandchild)], check=True)
    # the parent reaps it only when it exits, so wait until the tree no longer lists it
    sample_until(sampler, parent.pid, lambda *_: grandchild not in sampler.pids(parent.pid), timeout=5)
    assert sampler.pids(parent.pid) == [parent.pid]
    assert grandchild not in sampler.tracked()

    parent.kill()
    parent.wait(timeout=10)
    assert sampler.sample(parent.pid) == (0.0, 0)
    assert sampler.tracked() == {other.pid}
    assert sampler.pids(parent.pid) == []

    sampler.forget(other.pid)
    assert sampler.tracked() == set()
    # sampling again starts a fresh baseline rather than failing
    assert sampler.sample(other.pid)[0] == 0.0


def test_an_unreaped_root_reads_zero_and_is_forgotten(spawn: Spawn) -> None:
    replica = spawn(PARENT_OF.format(code=IDLE, life=LIFETIME))
    orphan = psutil.Process(int(ready(replica)))
    sampler = ProcessSampler()
    assert sampler.sample(replica.pid)[1] > 0
    replica.kill()  # not reaped yet: a zombie, as a replica is until the daemon's waitpid
    got = sample_until(sampler, replica.pid, lambda cpu, rss: (cpu, rss) == (0.0, 0), timeout=5)
    assert got == (0.0, 0)
    assert replica.pid not in sampler.tracked()
    orphan.kill()
