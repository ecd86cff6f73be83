"""The node's table of streaming and dynamic generators: one cursor per generator task.

    worker: Item 0, Item 1, ...  End             caller: next() -> item refs, in order
             |                    |                      ^
             v                    v                      |
    items = [id0, id1, ...]   ended = True   handed_out --+   (a cursor, one per stream)

The cursor lives here, in the node, not in the caller's ``ObjectRefGenerator``: so
``next`` from several threads, or from another process the generator was passed to,
hands each item out exactly once and in order.  Items produced but not handed out are
kept by the stream (an internal reference each); when every handle on the generator is
gone (``abandoned``) or it is closed, they are freed, and so is every item that arrives
afterwards.  Only the ids not handed out yet are kept: a long stream costs the node
nothing per item it already gave away.

Retries: ``attempt`` is the attempt whose items are accepted; a report from another
attempt is dropped.  A new attempt re-runs from the start, skips the ``handed_out``
items it re-produces (the worker does not even store them), and replaces the items
that were produced but not handed out.

Everything here runs under the node's lock.  Stopping the producing task and acking a
backpressured one are the node's business (``Node.stop_stream_task``/``ack_stream``).
"""
from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional

if TYPE_CHECKING:
    from .node import Node
    from .objects import ObjectDirectory


class StreamState:
    __slots__ = ("task_id", "pending", "produced", "handed_out", "ended", "abandoned",
                 "closed", "attempt", "backpressure", "waiters", "dynamic", "close_sent",
                 "name", "parent", "all_items", "lent_on")

    def __init__(self, task_id: bytes, backpressure: int, dynamic: bool, name: str = "",
                 parent: Optional[bytes] = None) -> None:
        self.task_id = task_id
        self.name = name                  # the producing task's, for messages
        self.parent = parent              # the task that started it (None: the driver)
        self.pending: Deque[bytes] = collections.deque()  # produced, not handed out yet
        self.produced = 0                 # items of the current attempt so far
        self.handed_out = 0               # the first handed_out items belong to callers now
        self.ended = False
        self.abandoned = False            # no handle on the generator exists any more
        self.closed = False               # the caller called close()
        self.attempt = 0
        self.backpressure = backpressure  # 0: none
        self.waiters: List[Callable[[], None]] = []
        self.dynamic = dynamic
        # a dynamic generator's value lists every item, so its stream keeps them all
        self.all_items: Optional[List[bytes]] = [] if dynamic else None
        self.close_sent = False
        # the worker whose CPUs were lent out while this stream is paused by backpressure
        self.lent_on: Optional[object] = None

    def has_next(self) -> bool:
        """Whether ``next`` would not block: an item is waiting or the stream is over."""
        return bool(self.pending) or self.ended or self.closed

    def take_next(self) -> Optional[bytes]:
        """The next item's id (the caller now owns it), or None if none is waiting."""
        if self.closed or not self.pending:
            return None
        self.handed_out += 1
        return self.pending.popleft()

    def paused_by_backpressure(self) -> bool:
        return bool(self.backpressure) and len(self.pending) >= self.backpressure

    @property
    def finished(self) -> bool:
        """The task has ended and no handle can ask for items: the state can be forgotten."""
        return self.ended and self.abandoned


class StreamTable:
    def __init__(self, node: "Node", objects: "ObjectDirectory") -> None:
        self.node = node
        self.objects = objects
        self.streams: Dict[bytes, StreamState] = {}

    def get(self, task_id: bytes) -> Optional[StreamState]:
        return self.streams.get(task_id)

    def open(self, task_id: bytes, backpressure: int, dynamic: bool, name: str,
             parent: Optional[bytes]) -> StreamState:
        stream = self.streams[task_id] = StreamState(task_id, backpressure, dynamic, name,
                                                     parent)
        return stream

    # -- the producer's side -------------------------------------------------------------
    def add_items(self, stream: StreamState, reports: "tuple | list", attempt: int,
                  item_id: Callable[[int], bytes]) -> None:
        """Items of the current attempt arrived: keep them for ``next`` (or drop them if
        nobody can take them any more)."""
        keep = not (stream.abandoned or stream.closed)
        for index, payload, contained in reports:
            oid = item_id(index)
            stream.produced += 1
            if keep:
                # kept by the stream (internal ref) until handed out
                self.objects.set_ready(oid, payload[0], payload[1], payload[2], contained, 1)
                stream.pending.append(oid)
                if stream.all_items is not None:
                    stream.all_items.append(oid)
            else:
                self.node.discard_stored(oid, payload)
                stream.handed_out += 1
        if keep:
            self.wake(stream)
        if stream.backpressure:
            self.node.backpressure_changed(stream)

    def new_attempt(self, stream: StreamState, attempt: int) -> None:
        """A retry: items of the failed attempt that nobody took are replaced by the new
        attempt's (which skips the handed-out ones)."""
        stale = list(stream.pending)
        stream.pending.clear()
        if stream.all_items is not None:
            del stream.all_items[stream.handed_out:]
        self.objects.release_internal(stale)
        stream.produced = stream.handed_out
        stream.attempt = attempt
        if stream.backpressure:
            self.node.backpressure_changed(stream)

    def end(self, stream: StreamState) -> None:
        stream.ended = True
        stream.lent_on = None  # the task left its worker (Scheduler.unassign settled it)
        self.wake(stream)
        if stream.finished:
            self.streams.pop(stream.task_id, None)

    # -- the consumers' side --------------------------------------------------------------
    def take(self, task_id: bytes, proc: int) -> "tuple[bool, Optional[bytes]]":
        """(done, item): the next item handed to ``proc``, or (True, None) at the end,
        or (False, None) when the caller must wait."""
        stream = self.streams.get(task_id)
        if stream is None:
            return True, None
        oid = stream.take_next()
        if oid is not None:
            # the taker holds it from now on; its ObjectRef is made with _registered=True
            self.objects.add_holder(oid, proc)
            self.objects.release_one(oid)
            if stream.backpressure:
                self.node.ack_stream(stream)
                self.node.backpressure_changed(stream)
            return True, oid
        if stream.ended or stream.closed:
            return True, None
        return False, None

    def close(self, task_id: bytes) -> None:
        """``gen.close()`` from any process: free what is left, stop the task, wake readers."""
        stream = self.streams.get(task_id)
        if stream is None or stream.closed:
            return
        stream.closed = True
        self._release_unclaimed(stream)
        self.node.stop_stream_task(stream)
        self.wake(stream)

    def abandon(self, task_id: bytes) -> None:
        """The last handle on the generator is gone (its counted id was freed)."""
        stream = self.streams.get(task_id)
        if stream is None:
            return
        stream.abandoned = True
        self._release_unclaimed(stream)
        if stream.backpressure:
            # a paused generator that nobody can consume any more is stopped, not resumed
            self.node.stop_stream_task(stream)
        if stream.finished:
            self.streams.pop(task_id, None)

    def _release_unclaimed(self, stream: StreamState) -> None:
        unclaimed = list(stream.pending)
        stream.pending.clear()
        stream.handed_out += len(unclaimed)
        self.objects.release_internal(unclaimed)
        if stream.backpressure:
            self.node.backpressure_changed(stream)

    def wake(self, stream: StreamState) -> None:
        if stream.waiters:
            self.objects.callbacks.extend(stream.waiters)
            stream.waiters = []

    def on_ready(self, task_id: bytes, callback: Callable[[], None]) -> None:
        """``callback`` once ``next`` would not block (at once if it would not now)."""
        stream = self.streams.get(task_id)
        if stream is not None and not stream.has_next():
            stream.waiters.append(callback)
        else:
            self.objects.callbacks.append(callback)

    def is_ready(self, task_id: bytes) -> bool:
        stream = self.streams.get(task_id)
        return stream is None or stream.has_next()
