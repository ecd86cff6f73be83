"""Worker stdout/stderr, forwarded to the driver line by line with a prefix.

    worker fd 1/2 --pipe--> node reads chunks (I/O thread) --> LineForwarder: lines
        --> OutputWriter queue --> writer thread --> "(task_name pid=N) line" on the
                                                      driver's sys.stdout / sys.stderr

The worker's file descriptors 1 and 2 are pipes, so output from C code and child
processes is caught too.  Which task printed a line is told in-band: when a task starts
whose name differs from the previous one's, the worker writes a marker line (``MARKER +
name``) to both descriptors; the driver takes the name from it and does not print it.
Pipe order is write order, so a line is attributed to the task that wrote it even when
the driver reads it after that task has ended.  An actor's worker names itself once,
with its class name.  Python-level streams are line buffered, so a line printed just
before ``os._exit`` is already in the pipe.

Writing to the driver's streams happens on a thread of its own: a driver whose stdout is
read slowly (a pipe to a slow consumer) must not stall the node's I/O thread, which
carries every result.  What waits to be written is bounded per worker
(MAX_PENDING_BYTES): past it the node stops reading that worker's pipe, the pipe fills,
and only the worker that prints is slowed down.  A line is bounded too (MAX_LINE_BYTES):
a longer one is forwarded in pieces of that size, each with the prefix.
"""
from __future__ import annotations

import collections
import io
import os
import sys
import threading
from typing import Callable, Deque, Optional, TextIO, Tuple

MARKER = "\x1fpygen-task:"
_MARKER_BYTES = MARKER.encode()
# A line longer than this is forwarded in pieces (a 100 MB line without a newline must
# not be held, nor re-copied at every read).
MAX_LINE_BYTES = 1 << 20
# Output of one worker read but not yet written to the driver's stream; past this the
# node stops reading that worker's pipe until the writer caught up to half of it.
MAX_PENDING_BYTES = 4 << 20

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

class OutputWriter:
    """The thread that writes forwarded lines to the driver's streams, in order."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: Deque[Tuple["LineForwarder", str]] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def put(self, forwarder: "LineForwarder", text: str) -> None:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="pygen-output",
                                                daemon=True)
                self._thread.start()
            forwarder.pending += len(text)
            self._queue.append((forwarder, text))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                # everything queued for one target in one write
                forwarder, text = self._queue.popleft()
                target = forwarder.target
                parts = [text]
                done = [(forwarder, len(text))]
                while self._queue and self._queue[0][0].target is target:
                    f, t = self._queue.popleft()
                    parts.append(t)
                    done.append((f, len(t)))
            stream = target()
            try:
                stream.write("".join(parts))
                stream.flush()
            except (ValueError, OSError):  # the driver's stream is closed (interpreter exit)
                pass
            with self._cond:
                for f, n in done:
                    f.pending -= n
                    f.written()
                self._cond.notify_all()

    def pause_if_full(self, forwarder: "LineForwarder") -> bool:
        """Whether the node must stop reading ``forwarder``'s pipe for now (decided under
        the lock the writer takes to report progress, so a resume is never missed)."""
        with self._cond:
            if forwarder.pending >= MAX_PENDING_BYTES:
                forwarder.paused = True
                return True
            return False

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued is written (at most ``timeout`` s)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue or self._thread is None,
                                       timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class LineForwarder:
    """Splits one worker pipe into lines and hands them, prefixed, to the writer."""

    def __init__(self, pid: int, default_name: str, target: Callable[[], TextIO],
                 writer: Optional[OutputWriter] = None,
                 on_drained: Optional[Callable[[], None]] = None) -> None:
        self.pid = pid
        self.name = default_name
        self.target = target
        self._writer = writer
        self._partial = bytearray()
        self.pending = 0                  # bytes queued for writing, not written yet
        self.paused = False               # the node stopped reading the pipe (too much pending)
        self._on_drained = on_drained

    def feed(self, data: bytes) -> None:
        newline = data.rfind(b"\n")
        if newline < 0:
            self._partial += data
            if len(self._partial) >= MAX_LINE_BYTES:
                whole = len(self._partial) - len(self._partial) % MAX_LINE_BYTES
                self._emit(_pieces(bytes(self._partial[:whole])))
                del self._partial[:whole]
            return
        if self._partial:
            self._partial += data[:newline]
            chunk = bytes(self._partial)
        else:
            chunk = data[:newline]
        self._partial = bytearray(data[newline + 1:])
        lines = chunk.split(b"\n")
        long_lines = [line for line in lines if len(line) > MAX_LINE_BYTES]
        if long_lines:
            lines = [piece for line in lines
                     for piece in (_pieces(line) if len(line) > MAX_LINE_BYTES else [line])]
        self._emit(lines)

    def close(self) -> None:
        """The pipe reached EOF: forward what is left without its newline."""
        if self._partial:
            self._emit([bytes(self._partial)])
            self._partial = bytearray()

    def written(self) -> None:
        """The writer wrote some of this forwarder's text (under the writer's lock)."""
        if self.paused and self.pending <= MAX_PENDING_BYTES // 2:
            self.paused = False
            if self._on_drained is not None:
                self._on_drained()

    def _emit(self, lines: list) -> None:
        out = []
        for raw in lines:
            if raw.startswith(_MARKER_BYTES):
                self.name = raw[len(_MARKER_BYTES):].decode("utf-8", "backslashreplace")
                continue
            line = raw.decode("utf-8", "backslashreplace")
            out.append(f"({self.name} pid={self.pid}) {line}\n")
        if not out:
            return
        text = "".join(out)
        if self._writer is not None:
            self._writer.put(self, text)
            return
        stream = self.target()
        try:
            stream.write(text)
            stream.flush()
        except (ValueError, OSError):  # the driver's stream is closed (interpreter exit)
            pass


def _pieces(line: bytes) -> list:
    return [line[i:i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)]
