"""CPU and memory of a replica's whole process tree, through psutil.

A predictor may run its work in child processes (multiprocessing, a TF server),
so a replica's use is the sum over its tree. psutil's cpu_percent is the CPU time
a process used since the previous call on the SAME Process object, so the objects
are kept between samples; the first sample of any process reads 0.
"""

from __future__ import annotations

import threading

import psutil

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


class ProcessSampler:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the daemon may sample from a worker thread
        self._procs: dict[int, psutil.Process] = {}  # every pid seen in any tree
        self._trees: dict[int, set[int]] = {}  # root pid -> the pids of its tree last time

    def sample(self, pid: int) -> tuple[float, int]:
        """(CPU % of one core since the previous sample, RSS bytes), summed over the tree.

        A pid that is gone (or a zombie not yet reaped) reads (0.0, 0) and is forgotten,
        and so are descendants that left the tree.
        RSS counts pages shared between the processes of the tree once per process,
        as `ps` does; this overstates a forked tree somewhat, never understates it.
        """
        with self._lock:
            root = self._process(pid)
            if root is None:
                self._forget(pid)
                return 0.0, 0
            try:
                children = root.children(recursive=True)
            except _GONE:
                self._forget(pid)
                return 0.0, 0
            except psutil.AccessDenied:
                children = []
            tree = [root] + [self._cached(child) for child in children]
            cpu, rss = 0.0, 0
            alive: set[int] = set()
            for proc in tree:
                try:
                    with proc.oneshot():
                        # A zombie (exited, not yet reaped by its parent) uses nothing.
                        if proc.status() == psutil.STATUS_ZOMBIE:
                            continue
                        cpu += proc.cpu_percent(interval=None)
                        rss += proc.memory_info().rss
                except _GONE:
                    continue
                except psutil.AccessDenied:
                    pass  # another user's child: keep it in the tree, without figures
                alive.add(proc.pid)
            if pid not in alive:
                # Forget the children cached just now too, not only last sample's tree.
                self._trees[pid] = self._trees.get(pid, set()) | {p.pid for p in tree}
                self._forget(pid)
                return 0.0, 0
            self._drop_departed(pid, alive)
            return cpu, rss

    def pids(self, pid: int) -> list[int]:
        """The pids of `pid`'s tree as of its last sample (root first); [] if never sampled."""
        with self._lock:
            tree = self._trees.get(pid)
            return [] if tree is None else [pid] + sorted(tree - {pid})

    def forget(self, pid: int) -> None:
        """Drop a root and its tree (the daemon calls this when a replica exits)."""
        with self._lock:
            self._forget(pid)

    def tracked(self) -> set[int]:
        """Every pid whose Process object is cached (for tests and leak checks)."""
        with self._lock:
            return set(self._procs)

    # -- internals, called with the lock held

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        # is_running() also catches a pid reused by a new process (it compares create time).
        if proc is not None and proc.is_running():
            return proc
        self._procs.pop(pid, None)
        try:
            proc = psutil.Process(pid)
        except _GONE:
            return None
        self._procs[pid] = proc
        return proc

    def _cached(self, proc: psutil.Process) -> psutil.Process:
        # Keep the object from earlier samples (its cpu_percent baseline), unless the pid
        # now belongs to a different process: Process equality compares create time.
        known = self._procs.get(proc.pid)
        if known is not None and known == proc:
            return known
        self._procs[proc.pid] = proc
        return proc

    def _drop_departed(self, root: int, current: set[int]) -> None:
        for gone in self._trees.get(root, set()) - current:
            if not self._in_other_tree(gone, root):
                self._procs.pop(gone, None)
        self._trees[root] = current

    def _forget(self, root: int) -> None:
        for pid in self._trees.pop(root, {root}) | {root}:
            if not self._in_other_tree(pid, root):
                self._procs.pop(pid, None)

    def _in_other_tree(self, pid: int, root: int) -> bool:
        return any(pid in tree for other, tree in self._trees.items() if other != root)
