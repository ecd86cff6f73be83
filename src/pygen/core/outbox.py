"""Messages from the node to workers: queued during a batch of work, written once.

Handlers and API calls queue messages (``send``) while they hold the node's lock; the
node writes them all (``flush``) when the batch is done: one syscall per worker per
batch, however many tasks, acks or replies it carries.  A socket that does not take
everything is finished by the reactor when it becomes writable.

A worker busy in user code does not read its socket.  ``poke`` is for the messages that
must act at once (Cancel, Close, Reclaim): it writes them, then sends SIGUSR2, whose
handler in the worker reads the control channel right away.
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Set

if TYPE_CHECKING:
    from .reactor import Reactor
    from .workers import WorkerHandle


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
            w = self._dirty.pop()
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
