"""Worker stdout/stderr, forwarded to the driver line by line with a prefix.

    worker fd 1/2 --pipe--> node reads chunks --> "(task_name pid=N) line" on the
                                                  driver's sys.stdout / sys.stderr

The worker's file descriptors 1 and 2 are pipes, so output from C code and child
processes is caught too.  Which task printed a line is told in-band: before the first
write of a task whose name differs from the last one written, the worker writes a
marker line (``MARKER + name``) to that stream; the driver takes the name from it and
does not print it.  Pipe order is write order, so a line is always attributed to the
task that wrote it, even if the driver reads it after that task has ended.  Python-level
streams are line buffered, so a line printed just before ``os._exit`` is in the pipe.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Callable, Optional, TextIO

MARKER = "\x1fpygen-task:"

# -- worker side -------------------------------------------------------------------------

_task_name = "worker"
_streams: list = []


class _MarkedStream(io.TextIOWrapper):
    """A line-buffered text stream over fd 1 or 2 that announces task changes."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                         errors="backslashreplace", line_buffering=True, write_through=True)
        self.announced: Optional[str] = None

    def write(self, s: str) -> int:
        if self.announced != _task_name:
            self.announced = _task_name
            super().write(f"{MARKER}{_task_name}\n")
        return super().write(s)


def install_worker_streams() -> None:
    """Replace sys.stdout/sys.stderr of this worker by marked, line-buffered streams."""
    sys.stdout = _MarkedStream(1)
    sys.stderr = _MarkedStream(2)
    _streams[:] = [sys.stdout, sys.stderr]


def set_task_name(name: str) -> None:
    global _task_name
    _task_name = name


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


def read_pipe(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b"\0"  # nothing now (caller treats this sentinel as "try later")
