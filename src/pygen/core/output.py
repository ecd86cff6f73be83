"""Worker stdout/stderr, forwarded to the driver line by line with a prefix.

    worker fd 1/2 --pipe--> node reads chunks --> "(task_name pid=N) line" on the
                                                  driver's sys.stdout / sys.stderr

The worker's file descriptors 1 and 2 are pipes, so output from C code and child
processes is caught too.  Which task printed a line is told in-band: when a task starts
whose name differs from the previous one's, the worker writes a marker line (``MARKER +
name``) to both descriptors; the driver takes the name from it and does not print it.
Pipe order is write order, so a line is attributed to the task that wrote it even when
the driver reads it after that task has ended.  Python-level streams are line buffered,
so a line printed just before ``os._exit`` is already in the pipe.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Callable, Optional, TextIO

MARKER = "\x1fpygen-task:"

# -- worker side -------------------------------------------------------------------------

_task_name = "worker"
_announced: Optional[str] = None
_forwarding = False


def install_worker_streams() -> None:
    """Line-buffered text streams over fds 1 and 2 (a line printed before os._exit is out)."""
    global _forwarding
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True,
                                  write_through=True)
        setattr(sys, name, stream)
    _forwarding = True


def set_task_name(name: str) -> None:
    """Called as a task starts: the next lines on fds 1 and 2 belong to ``name``.

    The marker is written on the descriptors themselves, so output of C code and child
    processes is attributed as well as Python's; it is written only when the name changes
    (a run of tasks of one function costs nothing).
    """
    global _task_name, _announced
    _task_name = name
    if _forwarding and name != _announced:
        _announced = name
        marker = f"{MARKER}{name}\n".encode("utf-8", "backslashreplace")
        for fd in (1, 2):
            try:
                os.write(fd, marker)
            except OSError:
                pass


# -- driver side ----------------------------------------------------------------------------

class LineForwarder:
    """Splits one worker pipe into lines and prints them with the task's prefix."""

    def __init__(self, pid: int, default_name: str, target: Callable[[], TextIO]) -> None:
        self.pid = pid
        self.name = default_name
        self._target = target
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if lines:
            self._emit(lines)

    def close(self) -> None:
        """The pipe reached EOF: print what is left without its newline."""
        if self._partial:
            self._emit([self._partial])
            self._partial = b""

    def _emit(self, lines: list) -> None:
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "backslashreplace")
            if line.startswith(MARKER):
                self.name = line[len(MARKER):]
                continue
            out.append(f"({self.name} pid={self.pid}) {line}\n")
        if out:
            stream = self._target()
            try:
                stream.write("".join(out))
                stream.flush()
            except (ValueError, OSError):  # the driver's stream is closed (interpreter exit)
                pass

