"""Framing of control messages over a Unix stream socket.

    frame = length (u32, little endian) | marshal((KIND, *fields))   (protocol.encode)

Messages go in and come out as ``protocol`` classes; only this module sees the wire form.

Writes are buffered and non-blocking: ``send`` appends a frame and pushes what the
socket takes; what it does not take stays queued until the socket is writable again
(the node's reactor watches for that), so the node never blocks on a slow peer and two
processes can never deadlock writing to each other.  Frames queued while a write is
pending go out together: small messages batch themselves under load.

Waiting to read spins before it sleeps (``SPIN_SECONDS``), yielding the CPU at every
turn.  Measured on this machine (2 vCPUs), a round trip between two processes costs
  * ~20 us when both sleep-wait and the kernel places them on the same vCPU;
  * 70-300 us when they sit on different vCPUs: an idle vCPU halts and is woken through
    the hypervisor (guest_halt_poll_ns=0), while a short spin sees the reply in ~1 us;
  * ~220 us with a plain spin when they share a vCPU: the spinner holds the CPU its
    peer needs.  ``sched_yield`` in the spin removes that case: 19-25 us in both.
The spin is bounded, so an idle process still sleeps.
"""
from __future__ import annotations

import marshal
import os
import select
import socket
import struct
import threading
import time
from typing import Any, List, Optional

from .protocol import decode, encode

_LEN = struct.Struct("<I")
_READ_SIZE = 1 << 18

# How long a waiting reader polls before it sleeps.  50-100 us covers a task round trip
# of a short task here; spinning longer only burns CPU the other processes want.
SPIN_SECONDS = float(os.environ.get("PYGEN_SPIN_US", "100")) * 1e-6

# How long an idle worker polls for its next task before it sleeps.  Tasks submitted one
# after another reach a worker ~100-200 us after its previous one ended (the driver wakes,
# reads the result, calls remote()); a worker that slept meanwhile must be woken through
# the hypervisor first.  1 ms brought remote() -> first item from 213-398 us to 144-176 us.
IDLE_SPIN_SECONDS = float(os.environ.get("PYGEN_IDLE_SPIN_US", "1000")) * 1e-6


class ConnectionClosed(EOFError):
    """The peer closed its end (it exited or died)."""


class Connection:
    """One end of a control channel: a non-blocking Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self._out = bytearray()
        self._in = bytearray()
        self._view = memoryview(bytearray(_READ_SIZE))
        self._send_lock = threading.Lock()
        self.read_lock = threading.Lock()  # one reader at a time: frames must not interleave
        self._poller = select.poll()
        self._poller.register(self.fd, select.POLLIN)
        self.closed = False

    # -- writing ------------------------------------------------------------------
    def send(self, msg: Any) -> bool:
        """Queue ``msg`` and write what the socket accepts; True when nothing is left queued."""
        body = marshal.dumps(encode(msg))
        with self._send_lock:
            self._out += _LEN.pack(len(body))
            self._out += body
            return self._flush_locked()

    def queue(self, msg: Any) -> None:
        """Append ``msg`` without writing: the caller flushes once for a whole batch."""
        body = marshal.dumps(encode(msg))
        with self._send_lock:
            self._out += _LEN.pack(len(body))
            self._out += body

    def flush(self) -> bool:
        with self._send_lock:
            return self._flush_locked()

    @property
    def pending_output(self) -> bool:
        return bool(self._out)

    @property
    def queued_bytes(self) -> int:
        return len(self._out)

    def _flush_locked(self) -> bool:
        out = self._out
        while out:
            try:
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:  # peer gone: the reader will see EOF and report it
                self.closed = True
                out.clear()
                if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                    return True
                raise
            del out[:n]
        return True

    def drain_output(self) -> None:
        while not self.flush():
            select.select([], [self.fd], [], 1.0)

    # -- reading ------------------------------------------------------------------
    def read_messages(self) -> List[Any]:
        """Every complete message the socket has now; ``ConnectionClosed`` at EOF.

        Reads go into one preallocated buffer: ``recv(256 KiB)`` would allocate 256 KiB per
        call, which glibc serves with mmap or heap trimming -- a few page faults per message,
        measured at ~100 us of CPU per task round trip here.
        """
        view = self._view
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return []
        except ConnectionResetError:
            n = 0
        if not n:
            self.closed = True
            raise ConnectionClosed()
        buf = self._in
        buf += view[:n]
        # keep reading while the socket has more (a burst of items arrives as one batch)
        while n == _READ_SIZE:
            try:
                n = self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            if not n:
                break
            buf += view[:n]
        return self._parse()

    def _parse(self) -> List[Any]:
        buf = self._in
        n = len(buf)
        pos = 0
        out = []
        with memoryview(buf) as view:
            while n - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                end = pos + 4 + size
                if end > n:
                    break
                out.append(decode(marshal.loads(view[pos + 4: end])))
                pos = end
        if pos:
            del buf[:pos]
        return out

    def readable(self) -> bool:
        """Whether bytes are waiting in the socket now (never blocks; any thread: the
        shared poll object may be in use by the reader)."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def wait_readable(self, timeout: Optional[float], spin: float = SPIN_SECONDS) -> bool:
        """Block until the socket is readable or ``timeout`` passes (None: forever)."""
        poll = self._poller.poll
        if spin > 0:
            end = time.perf_counter() + (spin if timeout is None else min(spin, timeout))
            while True:
                if poll(0):
                    return True
                if time.perf_counter() >= end:
                    break
                os.sched_yield()  # the peer may be waiting for this very CPU
            if timeout is not None:
                timeout -= spin
                if timeout <= 0:
                    return False
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        while True:
            try:
                return bool(poll(ms))
            except InterruptedError:
                continue

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def socket_pair() -> "tuple[socket.socket, socket.socket]":
    """A connected pair; both ends close-on-exec (the child's end is passed explicitly)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        os.set_inheritable(s.fileno(), False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return a, b
