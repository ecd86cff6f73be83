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
reader lock) and hands replies to their owners; control messages (Exec, Cancel, Ack,
Close, Exit...) go to the executor (``on_control``).  Requests name the task that makes
them (``calls.current_id()``): an actor's worker runs several calls at once.
"""
from __future__ import annotations

import collections
import itertools
import os
import pickle
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import context, ids, serialization
from ..exceptions import GetTimeoutError, ObjectLostError, raisable
from . import calls, protocol, values
from .transport import SPIN_SECONDS, Connection, ConnectionClosed


class WorkerClient:
    is_worker = True
    forked = False  # set in a forked child's copy (context._after_fork)
    status: Any = None  # the status page (core/stages.py), set at start-up

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
        self._dispatched = 0  # reads done by whichever thread held the reader lock
        self._reading = False  # the reader has taken bytes and is dispatching them
        self._counts: Dict[bytes, int] = {}
        self._counts_lock = threading.Lock()
        self._added: List[bytes] = []
        self._removed: collections.deque = collections.deque()
        self._sent_functions: set = set()
        self._ready_callbacks: Dict[bytes, List[Callable[[], None]]] = {}
        # set by the executor: raises TaskCancelledError if the calling task was cancelled
        self.check_cancelled: Callable[[], None] = lambda: None
        # per thread, > 0 while runtime code runs there: a cancellation must not be
        # raised inside it (see Executor.on_cancel_signal)
        self._busy: Dict[int, int] = {}
        self._deferred: collections.deque = collections.deque()  # see send_soon

    # -- runtime code running --------------------------------------------------------------
    def _enter(self) -> int:
        ident = threading.get_ident()
        busy = self._busy
        busy[ident] = busy.get(ident, 0) + 1
        return ident

    def _leave(self, ident: int) -> None:
        self._busy[ident] -= 1

    def busy_in(self, ident: int) -> bool:
        """Whether thread ``ident`` runs runtime code now."""
        return self._busy.get(ident, 0) > 0

    # -- sending ----------------------------------------------------------------------------
    def send(self, msg: Any, flush: bool = True) -> None:
        """Send ``msg``; ``flush=False`` only queues it.

        New refs are reported before ``msg`` (it may hand them on); lost refs only after
        it: ``msg`` may carry a value that contains them, and the node must learn about
        the container before the refs inside it may go.
        """
        if self.forked:
            self._refuse_in_fork()
        ident = self._enter()
        try:
            added, removed = self._ref_changes()
            if added:
                self.conn.queue(protocol.Refs(added, []))
            while self._deferred:
                self.conn.queue(self._deferred.popleft())
            self.conn.queue(msg)
            if removed:
                self.conn.queue(protocol.Refs([], removed))
            if flush and not self.conn.flush():
                self.conn.drain_output()
        finally:
            self._leave(ident)

    def send_soon(self, msg: Any) -> None:
        """Send ``msg`` now unless this thread was interrupted inside runtime code (which
        may hold the send lock), else with the next send or flush (safe to call from a
        signal handler)."""
        if not self.busy_in(threading.get_ident()):
            self.send(msg)
        else:
            self._deferred.append(msg)

    def flush(self) -> None:
        """Write pending ref changes and every queued message."""
        if self.forked:
            self._refuse_in_fork()
        added, removed = self._ref_changes()
        if added or removed:
            self.conn.queue(protocol.Refs(added, removed))
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
        seen = self._dispatched
        if not self._reader.acquire(blocking=False):
            # another thread reads for us; wake up when it has dispatched something (if it
            # did since ``seen``, what we wait for may be here already: look again now)
            with self._arrived:
                if self._dispatched == seen:
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
                self._dispatched += 1
                self._arrived.notify_all()

    def read_available(self) -> None:
        """Dispatch what has already arrived, without blocking (no-op if a thread is reading)."""
        if self._reader.acquire(blocking=False):
            try:
                self._read_locked()
            finally:
                self._reader.release()
            self._notify_readers()

    def catch_up(self) -> None:
        """Dispatch every control message that reached this process before this call.

        A call about to start on a thread that is not the reader's (an actor's pool
        thread, its event loop) checks whether it was cancelled or closed; its Cancel
        may be in the socket, or read by the main thread and not yet dispatched.  Read
        it here, or wait while the thread that reads dispatches it: one full read that
        began after this call started has seen everything that was there (a reader
        holds the lock while it waits in poll, and wakes as soon as bytes arrive).
        """
        start = self._dispatched
        while True:
            if self._reader.acquire(blocking=False):
                try:
                    self._read_locked()
                finally:
                    self._reader.release()
                self._notify_readers()
                return
            if self._dispatched >= start + 2 or (not self._reading and not self.conn.readable()):
                return  # another thread reads, and it has nothing (more) to dispatch
            seen = self._dispatched
            with self._arrived:
                if self._dispatched == seen:
                    self._arrived.wait(0.01)

    def _notify_readers(self) -> None:
        # wake threads waiting for a reply this read may have brought; this may run in
        # the signal handler, interrupting a thread that holds the condition: never block
        if self._arrived.acquire(blocking=False):
            try:
                self._dispatched += 1
                self._arrived.notify_all()
            finally:
                self._arrived.release()

    def _read_locked(self) -> None:
        if self.forked:
            self._refuse_in_fork()
        self._reading = True
        try:
            self._dispatch(self.conn.read_messages())
        except ConnectionClosed:
            # the node is gone: nothing this process does matters any more
            os._exit(1)
        finally:
            self._reading = False

    def _dispatch(self, msgs: List[Any]) -> None:
        for msg in msgs:
            kind = type(msg)
            if kind is protocol.Reply:
                self._replies[msg.req_id] = msg
            elif kind is protocol.Ready:
                for cb in self._ready_callbacks.pop(msg.oid, ()):
                    threading.Thread(target=cb, daemon=True).start()
            else:
                self.on_control(msg)

    def request(self, build: Callable[[int], Any]) -> protocol.Reply:
        """Send ``build(req_id)`` and wait for its Reply (cancellation is checked meanwhile)."""
        req = next(self._req_ids)
        ident = self._enter()
        try:
            self.send(build(req))
            while req not in self._replies:
                self.check_cancelled()
                # the node answers timed requests itself (with a TIMEOUT status)
                self.pump(None)
            return self._replies.pop(req)
        finally:
            self._leave(ident)

    # -- objects ---------------------------------------------------------------------------------
    def encode(self, value: Any, oid: bytes, *, error: bool = False,
               on_store: Optional[Callable[[], None]] = None) -> Tuple[tuple, List[bytes]]:
        """Serialize ``value``: inline payload, or written into the store under ``oid``."""
        if self.forked:
            self._refuse_in_fork()
        ident = self._enter()
        try:
            return values.encode(value, oid, self.store, self._make_room, error=error,
                                 on_store=on_store)
        finally:
            self._leave(ident)

    def store_value(self, sv: serialization.SerializedValue, oid: bytes) -> None:
        if self.forked:
            self._refuse_in_fork()
        values.store_with_room(sv, self.store, oid, self._make_room)

    def _make_room(self, nbytes: int) -> bool:
        """Ask the node to spill objects nobody reads; whether it could make room."""
        return bool(self.request(lambda req: protocol.Room(req, nbytes)).body)

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
        self.send(protocol.Put(oid, payload, contained))
        return oid

    def get(self, oids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        caller = calls.current_id()
        reply = self.request(lambda req: protocol.Get(req, list(oids), timeout, caller))
        status, payloads = reply.status, reply.body
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
        caller = calls.current_id()
        reply = self.request(
            lambda req: protocol.Wait(req, list(keys), num_returns, timeout, caller))
        return reply.body

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        self._ready_callbacks.setdefault(oid, []).append(callback)
        self.send(protocol.Subscribe(oid))

    # -- tasks --------------------------------------------------------------------------------------
    def register_function(self, fn_id: bytes, blob: bytes) -> None:
        if fn_id not in self._sent_functions:
            self._sent_functions.add(fn_id)
            self.send(protocol.Fn(fn_id, blob))

    def submit(self, spec: Any) -> None:
        self.send(protocol.Submit(spec.to_wire(), calls.current_id()))

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        self.send(protocol.CancelReq(oid, force, recursive))

    # -- streams --------------------------------------------------------------------------------------
    def stream_next(self, task_id: bytes, timeout: Optional[float]) -> Optional[bytes]:
        caller = calls.current_id()
        reply = self.request(lambda req: protocol.Next(req, task_id, timeout, caller))
        status = reply.status
        if status == protocol.TIMEOUT:
            raise GetTimeoutError(f"no item within {timeout} s")
        if status == protocol.END_OF_STREAM:
            return None
        return reply.body

    def stream_close(self, task_id: bytes) -> None:
        self.send(protocol.CloseReq(task_id))

    # -- actors ------------------------------------------------------------------------------------------
    def _actor_request(self, op: str, arg: Any) -> Any:
        reply = self.request(lambda req: protocol.ActorReq(req, op, arg))
        if reply.status == protocol.FAILED:
            raise ValueError(reply.body)
        return reply.body

    def create_actor(self, spec: Any, class_name: str, name: Optional[str], descriptor: bytes,
                     options: Dict[str, Any], get_if_exists: bool) -> Tuple[bytes, bytes]:
        actor_id, found = self._actor_request("create", (
            spec.to_wire(), class_name, name, descriptor, pickle.dumps(options), get_if_exists,
            calls.current_id()))
        return actor_id, found

    def get_actor(self, name: str) -> Optional[Tuple[bytes, bytes]]:
        found = self._actor_request("get", name)
        return None if found is None else (found[0], found[1])

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self._actor_request("kill", (actor_id, no_restart))

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _refuse_in_fork() -> None:
        """A process forked by a task must never speak for its worker: the socket, the
        store slot and the task belong to the worker (see context._after_fork)."""
        raise context.forked_error("the worker's connection and object store")

