"""The task a piece of worker code runs for: a per-task context, not a process global.

A worker runs one task at a time, but an actor's worker runs several calls at once
(threaded: one per pool thread; async: one per asyncio task).  Whatever must know "the
current task" -- cancellation, the caller named in a nested submit or get, the lending
of CPUs while it waits -- reads it from here.  A ``contextvars.ContextVar`` is per
thread and per asyncio task, which is exactly that.
"""
from __future__ import annotations

import contextvars
import threading
import time
from typing import Any, Optional

from . import protocol


class Call:
    """One task or actor call this worker is executing."""

    __slots__ = ("task_id", "attempt", "name", "kind", "num_returns", "skip", "backpressure",
                 "retry_exceptions", "in_user", "async_task", "cancelled", "started", "thread",
                 "is_actor_call")

    def __init__(self, task_id: bytes, attempt: int, name: str, kind: int = protocol.RETURNS_STATIC,
                 num_returns: int = 1, skip: int = 0, backpressure: int = 0,
                 retry_exceptions: Any = False, is_actor_call: bool = False) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.name = name
        self.kind = kind
        self.num_returns = num_returns
        self.skip = skip                  # a retry: outputs already handed out
        self.backpressure = backpressure
        self.retry_exceptions = retry_exceptions
        self.is_actor_call = is_actor_call
        self.started = time.perf_counter()
        self.in_user = False       # running the user's code (not the runtime's) right now
        self.async_task: Any = None  # the asyncio.Task running it, on an event loop
        self.cancelled = False     # TaskCancelledError was raised in it
        self.thread = threading.get_ident()

    @classmethod
    def of(cls, msg: protocol.Exec) -> "Call":
        return cls(msg.task_id, msg.attempt, msg.name, msg.returns_kind, msg.num_returns,
                   msg.skip, msg.backpressure, msg.retry_exceptions, msg.method is not None)


_current: "contextvars.ContextVar[Optional[Call]]" = contextvars.ContextVar("pygen_call",
                                                                           default=None)


def current() -> Optional[Call]:
    """The call the calling thread (or asyncio task) runs, if any."""
    return _current.get()


def current_id() -> Optional[bytes]:
    call = _current.get()
    return call.task_id if call is not None else None


def enter(call: Call) -> "contextvars.Token[Optional[Call]]":
    call.thread = threading.get_ident()
    return _current.set(call)


def leave(token: "contextvars.Token[Optional[Call]]") -> None:
    _current.reset(token)
