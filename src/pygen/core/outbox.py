"""Messages from the node to workers: queued during a batch of work, written once.

Handlers and API calls queue messages (``send``) while they hold the node's lock; the
node writes them all (``flush``) when the batch is done: one syscall per worker per
batch, however many tasks, acks or replies it carries.  A socket that does not take
everything is finished by the reactor when it becomes writable.

A burst of submissions from the driver (``[f.remote(i) for i in range(n)]``) is gathered
too: ``flush_due`` writes a worker's messages at once only when its previous write is
older than FLUSH_GAP or FLUSH_BYTES are waiting; the rest goes out with the next full
``flush`` -- before the driver blocks in get/wait/next, or at the node's housekeeping
(every 20 ms) at the latest.  Measured: one send per call had been a fifth of the
driver's time per actor call in bulk.

A worker busy in user code does not read its socket.  ``poke`` is for the messages that
must act at once (Cancel, Close, Reclaim): it writes them, then sends SIGUSR2, whose
handler in the worker reads the control channel right away.
"""
from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any, Set

if TYPE_CHECKING:
    from .reactor import Reactor
    from .workers import WorkerHandle


# A message to a worker written less than this after the previous write to it may wait
# for more (see the module docstring); a lone message never waits.
FLUSH_GAP = 0.0002
# ... unless this much is already waiting for that worker.
FLUSH_BYTES = 16 * 1024


class Outbox:
    def __init__(self, reactor: "Reactor") -> None:
        self.reactor = reactor
        self._dirty: Set["WorkerHandle"] = set()  # workers with queued messages

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    def send(self, w: "WorkerHandle", msg: Any) -> None:
        """Queue ``msg`` for ``w``; it is written with the rest of the batch (``flush``)."""
        w.conn.queue(msg)
        self._dirty.add(w)

    def flush(self) -> None:
        """Write every queued message: one syscall per worker."""
        while self._dirty:
            self._write(self._dirty.pop(), time.perf_counter())

    def flush_due(self) -> None:
        """Write the messages that should not wait (see the module docstring)."""
        if not self._dirty:
            return
        now = time.perf_counter()
        for w in list(self._dirty):
            if now - w.flushed_at > FLUSH_GAP or w.conn.queued_bytes >= FLUSH_BYTES:
                self._dirty.discard(w)
                self._write(w, now)

    def _write(self, w: "WorkerHandle", now: float) -> None:
        w.flushed_at = now
        try:
            if not w.conn.flush():  # the socket is full: the reactor finishes the job
                self.reactor.rearm(w.conn.fd, write=True)
        except OSError:
            pass  # the worker is gone; its death is being handled

    def poke(self, w: "WorkerHandle") -> None:
        """Write what is queued, then interrupt ``w`` so that it reads it now."""
        self.flush()  # the message must be there before the signal arrives
        try:
            os.kill(w.pid, signal.SIGUSR2)
        except ProcessLookupError:
            pass
