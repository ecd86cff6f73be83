"""The node's state for one streaming or dynamic generator task.

    worker: ITEM 0, ITEM 1, ...  END            caller: next() -> item refs, in order
             |                    |                      ^
             v                    v                      |
    items = [id0, id1, ...]   ended = True   handed_out --+   (a cursor, one per stream)

The cursor lives here, in the node, not in the caller's ``ObjectRefGenerator``: so
``next`` from several threads, or from another process the generator was passed to,
hands each item out exactly once and in order.  Items produced but not handed out are
kept by the stream (an internal reference each); when every handle on the generator is
gone (``abandoned``) or it is closed, they are freed, and so is every item that arrives
afterwards.

Retries: ``attempt`` is the attempt whose items are accepted; a report from another
attempt is dropped.  A new attempt re-runs from the start, skips the ``handed_out``
items it re-produces (the worker does not even store them), and replaces the items
that were produced but not handed out.
"""
from __future__ import annotations

from typing import Callable, List, Optional


class StreamState:
    __slots__ = ("task_id", "items", "handed_out", "ended", "abandoned", "closed",
                 "attempt", "backpressure", "waiters", "dynamic", "close_sent", "name",
                 "parent")

    def __init__(self, task_id: bytes, backpressure: int, dynamic: bool, name: str = "",
                 parent: Optional[bytes] = None) -> None:
        self.task_id = task_id
        self.name = name                  # the producing task's, for messages
        self.parent = parent              # the task that started it (None: the driver)
        self.items: List[bytes] = []      # object ids of items of the current attempt
        self.handed_out = 0               # items[:handed_out] belong to callers now
        self.ended = False
        self.abandoned = False            # no handle on the generator exists any more
        self.closed = False               # the caller called close()
        self.attempt = 0
        self.backpressure = backpressure  # 0: none
        self.waiters: List[Callable[[], None]] = []
        self.dynamic = dynamic
        self.close_sent = False

    @property
    def produced(self) -> int:
        return len(self.items)

    def has_next(self) -> bool:
        """Whether ``next`` would not block: an item is waiting or the stream is over."""
        return self.handed_out < len(self.items) or self.ended or self.closed

    def take_next(self) -> Optional[bytes]:
        """The next item's id (the caller now owns it), or None at the end of the stream."""
        if self.closed:
            return None
        if self.handed_out < len(self.items):
            oid = self.items[self.handed_out]
            self.handed_out += 1
            return oid
        return None

    def unclaimed(self) -> List[bytes]:
        """Items produced but not handed out (what a deleted or closed generator frees)."""
        return self.items[self.handed_out:]

    def paused_by_backpressure(self) -> bool:
        return bool(self.backpressure) and len(self.items) - self.handed_out >= self.backpressure

    @property
    def finished(self) -> bool:
        """The task has ended and no handle can ask for items: the state can be forgotten."""
        return self.ended and self.abandoned
