"""Measuring helpers shared by the runtime and generator benchmarks.

* ``PipeEcho``: a second Python process echoing over a socketpair -- the round trip of a
  tiny message between two processes, the floor of any design that needs one round trip
  per task;
* ``RssSampler``: peak private memory (``RssAnon`` of /proc/<pid>/status) of the process
  that runs a task, sampled by a thread while it runs; the task tells its pid (and its
  RssAnon at start) through a file (``_workloads.report_pid``), the same way under pygen
  and Ray;
* small formatting helpers and the load average (recorded with every figure).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from _workloads import rss_anon_kb

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
    """A child Python process that sends back whatever it receives on a socketpair."""

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


class RssSampler:
    """Peak RssAnon of the process that writes ``path`` (see ``report_pid``), sampled every
    ``interval`` seconds by a thread from ``start()`` to ``stop()``."""

    def __init__(self, path: str, interval: float = 0.002) -> None:
        self.path = path
        self.interval = interval
        self.pid: Optional[int] = None
        self.start_kb: Optional[int] = None
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
        if self.pid is None:
            raise RuntimeError(f"the task never reported its pid in {self.path}")
        return self


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def rate(x: float) -> str:
    """1234.5 -> '1,235/s'."""
    return f"{x:,.0f}/s"


def seconds(x: float) -> str:
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def note(benchmark, **info) -> float:
    """Add ``info`` and the current 1-minute load average to the benchmark's extra_info."""
    info["load1"] = load1()
    benchmark.extra_info.update(info)
    return info["load1"]


class Figures:
    """pygen's medians in one module, kept for the ratios stated by its later (Ray, pipe)
    tests; they also complete the extra_info of pygen's benchmark (saved at the end)."""

    def __init__(self) -> None:
        self.values: dict = {}
        self.infos: dict = {}
        self.loads: dict = {}

    def pygen(self, key: str, value: float, benchmark, compare, row: str, load: float) -> None:
        self.values[key] = value
        self.infos[key] = benchmark.extra_info
        self.loads[row] = load
        compare(row, load=f"{load}")

    def ray_load(self, compare, row: str, load: float) -> None:
        """The load column as 'pygen's / Ray's' 1-minute load average."""
        compare(row, load=f"{self.loads.get(row, '-')} / {load}")
