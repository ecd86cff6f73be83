"""The client of a worker process: every runtime call becomes a message to the node.

    user code in a task --get/put/wait/next/submit--> WorkerClient --frames--> node
                                                      <--REPLY / control--

One socket carries everything, in order.  That order is what makes reference counting
safe: a process reports a new ref (REFS) before any later message that could let the
node drop the object it came from (a RESULT, a DECREF of the container).  New refs are
therefore reported synchronously (queued ahead of the next message); lost refs are
collected lazily from ``__del__`` (a deque append, safe in any thread and inside GC)
and reported with the next message or when the worker goes idle.

Any thread may wait for a reply: the first waiter reads the socket for everyone (the
reader lock) and hands replies to their owners; control messages (EXEC, CANCEL, ACK,
CLOSE, EXIT) go to ``inbox`` for the executor.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import context, ids, serialization
from ..exceptions import GetTimeoutError, ObjectLostError, raisable
from . import protocol, values
from .transport import SPIN_SECONDS, Connection, ConnectionClosed


class WorkerClient:
    is_worker = True
    forked = False  # set in a forked child's copy (context._after_fork)

    def __init__(self, conn: Connection, store: Any, worker_id: int) -> None:
        self.conn = conn
        self.store = store
        self.worker_id = worker_id
        self.closed = False
        self.inbox: collections.deque = collections.deque()
        self.on_control: Callable[[tuple], None] = self.inbox.append
        self._replies: Dict[int, tuple] = {}
        self._req_ids = itertools.count(1)
        self._reader = threading.Lock()
        self._arrived = threading.Condition(threading.Lock())
        self._counts: Dict[bytes, int] = {}
        self._counts_lock = threading.Lock()
        self._added: List[bytes] = []
        self._removed: collections.deque = collections.deque()
        self._sent_functions: set = set()
        self._ready_callbacks: Dict[bytes, List[Callable[[], None]]] = {}
        # set by the executor: raises TaskCancelledError if the running task was cancelled
        self.check_cancelled: Callable[[], None] = lambda: None
        # > 0 while runtime code runs in this process: a cancel signal must not raise there
        self.busy = 0
        self._deferred: collections.deque = collections.deque()  # see send_soon

    # -- sending ----------------------------------------------------------------------------
    def send(self, msg: tuple, flush: bool = True) -> None:
        """Send ``msg``; ``flush=False`` only queues it.

        New refs are reported before ``msg`` (it may hand them on); lost refs only after
        it: ``msg`` may carry a value that contains them, and the node must learn about
        the container before the refs inside it may go.
        """
        if self.forked:
            self._refuse_in_fork()
        self.busy += 1
        try:
            added, removed = self._ref_changes()
            if added:
                self.conn.queue((protocol.REFS, added, []))
            while self._deferred:
                self.conn.queue(self._deferred.popleft())
            self.conn.queue(msg)
            if removed:
                self.conn.queue((protocol.REFS, [], removed))
            if flush and not self.conn.flush():
                self.conn.drain_output()
        finally:
            self.busy -= 1

    def send_soon(self, msg: tuple) -> None:
        """Send ``msg`` now if no runtime code of this process is running, else with the
        next send or flush (safe to call from a signal handler)."""
        if self.busy == 0:
            self.send(msg)
        else:
            self._deferred.append(msg)

    def flush(self) -> None:
        """Write pending ref changes and every queued message."""
        if self.forked:
            self._refuse_in_fork()
        added, removed = self._ref_changes()
        if added or removed:
            self.conn.queue((protocol.REFS, added, removed))
        while self._deferred:
            self.conn.queue(self._deferred.popleft())
        if self.conn.pending_output and not self.conn.flush():
            self.conn.drain_output()

    def _ref_changes(self) -> Tuple[List[bytes], List[bytes]]:
        """(ids this process started holding, ids it no longer holds) since last time."""
        removed = []
        pop = self._removed.popleft
        with self._counts_lock:
            added, self._added = self._added, []
            while self._removed:
                oid = pop()
                n = self._counts.get(oid, 0) - 1
                if n <= 0:
                    self._counts.pop(oid, None)
                    removed.append(oid)
                else:
                    self._counts[oid] = n
        return added, removed

    # -- reference counting --------------------------------------------------------------------
    def add_ref(self, oid: bytes, registered: bool = False) -> None:
        with self._counts_lock:
            n = self._counts.get(oid, 0)
            self._counts[oid] = n + 1
            if n == 0 and not registered:
                self._added.append(oid)

    def remove_ref(self, oid: bytes) -> None:
        self._removed.append(oid)

    # -- receiving -----------------------------------------------------------------------------
    def pump(self, timeout: Optional[float], spin: float = SPIN_SECONDS) -> None:
        """Read and dispatch what arrives within ``timeout`` (None: until something does),
        polling for the first ``spin`` seconds of it."""
        if not self._reader.acquire(blocking=False):
            # another thread reads for us; wake up when it has dispatched something
            with self._arrived:
                self._arrived.wait(0.05 if timeout is None else min(timeout, 0.05))
            return
        try:
            if self._deferred:
                self.flush()
            if timeout == 0 or self.conn.wait_readable(timeout, spin):
                self._read_locked()
        finally:
            self._reader.release()
            with self._arrived:
                self._arrived.notify_all()

    def read_available(self) -> None:
        """Dispatch what has already arrived, without blocking (no-op if a thread is reading)."""
        if self._reader.acquire(blocking=False):
            try:
                self._read_locked()
            finally:
                self._reader.release()

    def _read_locked(self) -> None:
        if self.forked:
            self._refuse_in_fork()
        try:
            msgs = self.conn.read_messages()
        except ConnectionClosed:
            # the node is gone: nothing this process does matters any more
            os._exit(1)
        for msg in msgs:
            kind = msg[0]
            if kind == protocol.REPLY:
                self._replies[msg[1]] = msg
            elif kind == protocol.READY:
                for cb in self._ready_callbacks.pop(msg[1], ()):
                    threading.Thread(target=cb, daemon=True).start()
            else:
                self.on_control(msg)

    def request(self, build: Callable[[int], tuple], timeout: Optional[float] = None) -> tuple:
        """Send ``build(req_id)`` and wait for its REPLY (cancellation is checked meanwhile)."""
        req = next(self._req_ids)
        self.busy += 1
        try:
            self.send(build(req))
            while req not in self._replies:
                self.check_cancelled()
                # the node answers timed requests itself (with a TIMEOUT status)
                self.pump(None)
            return self._replies.pop(req)
        finally:
            self.busy -= 1

    # -- objects ---------------------------------------------------------------------------------
    def encode(self, value: Any, oid: bytes, *, error: bool = False) -> Tuple[tuple, List[bytes]]:
        """Serialize ``value``: inline payload, or written into the store under ``oid``."""
        if self.forked:
            self._refuse_in_fork()
        self.busy += 1
        try:
            return values.encode(value, oid, self.store, self._make_room, error=error)
        finally:
            self.busy -= 1

    def store_value(self, sv: serialization.SerializedValue, oid: bytes) -> None:
        if self.forked:
            self._refuse_in_fork()
        values.store_with_room(sv, self.store, oid, self._make_room)

    def _make_room(self, nbytes: int) -> bool:
        """Ask the node to spill objects nobody reads; whether it could make room."""
        return bool(self.request(lambda req: (protocol.ROOM, req, nbytes))[3])

    def decode(self, oid: bytes, payload: tuple) -> Tuple[int, Any]:
        if self.forked:
            self._refuse_in_fork()
        flags, inline, _ = payload
        if inline is not None:
            return serialization.deserialize(inline)
        buf = self.store.get(oid, timeout=0.0)
        if buf is None:
            raise ObjectLostError(f"object {oid.hex()} is no longer in the object store")
        return serialization.deserialize(buf)

    def put(self, value: Any) -> bytes:
        oid = ids.put_id()
        payload, contained = self.encode(value, oid)
        self.send((protocol.PUT, oid, payload, contained))
        return oid

    def get(self, oids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        reply = self.request(lambda req: (protocol.GET, req, list(oids), timeout), timeout)
        status, payloads = reply[2], reply[3]
        if status == protocol.TIMEOUT:
            raise GetTimeoutError(f"get timed out after {timeout} s")
        values = []
        for oid, payload in zip(oids, payloads):
            flags, value = self.decode(oid, payload)
            if flags & serialization.FLAG_ERROR:
                raise raisable(value)
            values.append(value)
        return values

    def wait(self, keys: Sequence[bytes], num_returns: int,
             timeout: Optional[float]) -> List[bool]:
        reply = self.request(
            lambda req: (protocol.WAIT, req, list(keys), num_returns, timeout))
        return reply[3]

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        self._ready_callbacks.setdefault(oid, []).append(callback)
        self.send((protocol.SUBSCRIBE, oid))

    # -- tasks --------------------------------------------------------------------------------------
    def register_function(self, fn_id: bytes, blob: bytes) -> None:
        if fn_id not in self._sent_functions:
            self._sent_functions.add(fn_id)
            self.send((protocol.FN, fn_id, blob))

    def submit(self, spec: Any) -> None:
        self.send(spec.to_message())

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        self.send((protocol.CANCEL_REQ, oid, force, recursive))

    # -- streams --------------------------------------------------------------------------------------
    def stream_next(self, task_id: bytes, timeout: Optional[float]) -> Optional[bytes]:
        reply = self.request(lambda req: (protocol.NEXT, req, task_id, timeout), timeout)
        status = reply[2]
        if status == protocol.TIMEOUT:
            raise GetTimeoutError(f"no item within {timeout} s")
        if status == protocol.END_OF_STREAM:
            return None
        return reply[3]

    def stream_close(self, task_id: bytes) -> None:
        self.send((protocol.CLOSE_REQ, task_id))

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _refuse_in_fork() -> None:
        """A process forked by a task must never speak for its worker: the socket, the
        store slot and the task belong to the worker (see context._after_fork)."""
        raise context.forked_error("the worker's connection and object store")

