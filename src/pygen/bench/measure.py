"""Measuring helpers: the round trip floors (a raw socket echo, a ``multiprocessing.Pipe``),
a sampler of a worker's private memory, the processes below this one, and the facts of
the machine recorded with every run."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .tasks import pipe_echo, rss_anon_kb

ECHO_CHILD = r"""
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
recv, send = s.recv, s.sendall
while True:
    b = recv(65536)
    if not b:
        break
    send(b)
"""


class PipeEcho:
    """A child Python process that sends back whatever it receives on a socketpair: the
    round trip of a tiny message between two processes, the floor of any design that
    needs one round trip per task."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO_CHILD, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()])
        theirs.close()
        self.round_trips(100)  # the child is up and its loop warm

    def round_trips(self, n: int, size: int = 32) -> None:
        msg = b"x" * size
        send, recv = self.sock.sendall, self.sock.recv
        for _ in range(n):
            send(msg)
            got = 0
            while got < size:
                got += len(recv(65536))

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PipeRoundTrip:
    """``multiprocessing.Pipe`` ping-pong with a child process (spawned: a fresh
    interpreter, nothing inherited): ``send(i)`` then ``recv()``, a small int pickled each
    way.  The floor of an actor call made one at a time: one message there, one back, in
    Python, with nothing else (no ids, no store, no scheduling)."""

    def __init__(self) -> None:
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=pipe_echo, args=(theirs,), daemon=True)
        self.proc.start()
        theirs.close()
        self.round_trips(100)  # the child is up and its loop warm

    def round_trips(self, n: int) -> None:
        send, recv = self.conn.send, self.conn.recv
        for i in range(n):
            send(i)
            if recv() != i:
                raise AssertionError("the pipe's child sent back something else")

    def close(self) -> None:
        self.conn.close()   # the child's recv raises EOFError: it returns
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class RssSampler:
    """Peak RssAnon of the process that writes ``path`` (see ``tasks.report_pid``), sampled
    every ``interval`` seconds by a thread from ``start()`` to ``stop()``."""

    def __init__(self, path: str, interval: float = 0.002) -> None:
        self.path = path
        self.interval = interval
        self.pid: Optional[int] = None
        self.start_kb = 0
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "RssSampler":
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._thread.start()
        return self

    def _run(self) -> None:
        while self.pid is None and not self._stop.is_set():
            try:
                with open(self.path) as f:
                    pid, kb = f.read().split()
                self.pid, self.start_kb = int(pid), int(kb)
                self.peak_kb = self.start_kb
            except (FileNotFoundError, ValueError):
                time.sleep(0.0005)
        while self.pid is not None:
            kb = rss_anon_kb(self.pid)
            if kb is not None:
                self.samples += 1
                self.peak_kb = max(self.peak_kb, kb)
            if self._stop.is_set():
                break  # one last sample after the task ended
            self._stop.wait(self.interval)

    def stop(self) -> "RssSampler":
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.pid is None:
            raise RuntimeError(f"the task never reported its pid in {self.path}")
        return self


def load1() -> float:
    """The 1-minute load average, recorded with every figure."""
    return round(os.getloadavg()[0], 2)


def descendants(pid: Optional[int] = None) -> List[int]:
    """Every live process below ``pid`` (default: this process), from /proc."""
    out: List[int] = []
    todo = [os.getpid() if pid is None else pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _rss_shmem(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssShmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_shmem() -> int:
    """``Shmem`` of /proc/meminfo, in bytes: every process's shared memory on the machine
    (other jobs move it too: recorded beside, never the figure)."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def shm_held() -> Tuple[int, int]:
    """What this process and the processes below it hold in /dev/shm: (the bytes the
    /dev/shm files they have open really hold -- ``st_blocks``, each file once, unlinked
    ones included --, the sum of their ``RssShmem``, what each maps, shared pages counted
    in every process that maps them).  The runtime's own footprint, whatever else the
    machine runs."""
    pids = [os.getpid()] + descendants()
    seen = set()
    held = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if not os.readlink(path).startswith("/dev/shm/"):
                    continue
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                held += st.st_blocks * 512
    return held, sum(_rss_shmem(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: List[int], timeout: float) -> List[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); the survivors."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed (PackageNotFoundError), or broken metadata
        return None


def machine() -> Dict[str, Any]:
    """What the figures depend on: CPUs, memory, /dev/shm, kernel, Python, libraries."""
    import pygen
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        st = os.statvfs("/dev/shm")
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = 0
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "dev_shm_free_gib": round(shm_free / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pygen": pygen.__version__,
        "numpy": _version("numpy"),
        "ray": _version("ray"),
        "joblib": _version("joblib"),
        "matplotlib": _version("matplotlib"),
    }


def describe_machine(m: Dict[str, Any]) -> str:
    """One line: '2 CPUs (AMD EPYC ...), 23.5 GiB, Linux 6.1, Python 3.11.7'."""
    return (f"{m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, "
            f"Linux {m.get('kernel')}, Python {m.get('python')}")
