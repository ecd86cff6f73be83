"""The client of the driver process: calls into the in-process node directly.

Waiting (``get``, ``wait``, ``next``) spins before it sleeps, and while it spins it
polls the node's sockets itself (``Reactor.poll(0)``): the result of a short task is
read by the very thread that wants it, with no thread wake-up in between.  After the
spin it sleeps on an ``Event`` that the node's I/O thread sets.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import ids, serialization
from ..exceptions import GetTimeoutError, ObjectLostError, TaskError, raisable
from .node import Node
from .objects import DRIVER
from . import values

# How long a driver thread waiting in get/wait/next polls before it sleeps.  Longer than a
# worker's spin: the driver is one process, its spin yields the CPU at every turn (so it
# takes only idle CPU), and a result caught during the spin saves two wake-ups (I/O
# thread, then this thread): measured, the first item of a new stream came after ~1.05 ms
# with a 100 us spin and ~0.65 ms with 1 ms.
DRIVER_SPIN_SECONDS = float(os.environ.get("PYGEN_DRIVER_SPIN_US", "1000")) * 1e-6


class _Waiter:
    """Counts down readiness events; its ``event`` is set when enough have happened."""

    __slots__ = ("need", "event", "_lock")

    def __init__(self, need: int) -> None:
        self.need = need
        self.event = threading.Event()
        self._lock = threading.Lock()
        if need <= 0:
            self.event.set()

    def fire(self) -> None:
        with self._lock:
            self.need -= 1
            if self.need <= 0:
                self.event.set()


class DriverClient:
    is_worker = False
    forked = False  # set in a forked child's copy (context._after_fork)

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = node.store
        self.closed = False

    # -- reference counting --------------------------------------------------------------------
    def add_ref(self, oid: bytes, registered: bool = False) -> None:
        self.node.driver_add_ref(oid, registered)

    def remove_ref(self, oid: bytes) -> None:
        if not self.closed:
            self.node.driver_remove_ref(oid)

    # -- waiting ----------------------------------------------------------------------------------------
    def _block(self, event: threading.Event, deadline: Optional[float]) -> bool:
        """Wait for ``event``; poll the node ourselves during the spin.  False on timeout."""
        if event.is_set():
            return True
        reactor = self.node.reactor
        poll = reactor.poll
        spin_end = time.perf_counter() + DRIVER_SPIN_SECONDS
        reactor.hold()  # while we spin, the node's events are ours to handle
        try:
            while not event.is_set() and time.perf_counter() < spin_end:
                if not poll(0):
                    os.sched_yield()
        finally:
            reactor.release()
        while not event.is_set():
            if deadline is None:
                event.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return event.is_set()
                event.wait(left)
        return True

    @staticmethod
    def _deadline(timeout: Optional[float]) -> Optional[float]:
        return None if timeout is None else time.monotonic() + timeout

    # -- objects -------------------------------------------------------------------------------------------
    def store_value(self, sv: serialization.SerializedValue, oid: bytes) -> None:
        values.store_with_room(sv, self.store, oid, self.node.make_room)

    def encode(self, value: Any, oid: bytes, *, error: bool = False) -> "tuple[tuple, list]":
        return values.encode(value, oid, self.store, self.node.make_room, error=error)

    def put(self, value: Any) -> bytes:
        oid = ids.put_id()
        payload, contained = self.encode(value, oid)
        self.node.put(oid, payload, contained, DRIVER)
        return oid

    def get(self, oids: Sequence[bytes], timeout: Optional[float]) -> List[Any]:
        node = self.node
        with node.lock:
            entry = node.objects.entries.get(oids[0]) if len(oids) == 1 else None
            if entry is not None and entry.ready and entry.inline is not None:
                sources = [entry.inline]  # the common case (a stream item): no more to do
            else:
                sources = self._sources(oids)
            if sources is None:  # something is missing: wait for it
                waiter = _Waiter(sum(1 for o in oids if not node.is_ready(o)))
                for oid in oids:
                    if not node.is_ready(oid):
                        node.on_ready(oid, waiter.fire)
        if sources is None:
            node.run_callbacks()
            if not self._block(waiter.event, self._deadline(timeout)):
                raise GetTimeoutError(f"get timed out after {timeout} s "
                                      f"({waiter.need} of {len(oids)} objects not ready)")
            with node.lock:
                sources = self._sources(oids)
            assert sources is not None
        values = []
        for oid, source in zip(oids, sources):
            try:
                flags, value = serialization.deserialize(source)
            except Exception as exc:
                raise self._read_error(oid, exc) from None
            if flags & serialization.FLAG_ERROR:
                raise raisable(value)
            values.append(value)
        return values

    def _read_error(self, oid: bytes, exc: Exception) -> BaseException:
        """The error of a value the caller cannot unpickle (its class is not importable
        here, its reconstructor raises): a TaskError naming the task that made it and
        this stage, and also an instance of the original exception's class."""
        kind = ids.kind_of(oid)
        with self.node.lock:
            name = self.node.tasks.name_of(ids.task_of(oid))
        what = ("its return value" if kind in (ids.KIND_RETURN, ids.KIND_COMPLETION)
                else "an item it yielded" if kind == ids.KIND_ITEM else "a value it made")
        if kind == ids.KIND_PUT:
            name, what = "pygen.put", f"the value of object {oid.hex()}"
        elif name is None:  # a task finished long ago: name the object
            name, what = f"(unknown) that made object {oid.hex()}", "it"
        err = TaskError.from_exception(name, exc, None, f"while the caller read {what}")
        return err.as_instanceof_cause()

    def _sources(self, oids: Sequence[bytes]) -> Optional[List[Any]]:
        """Under the node lock: each object's inline bytes or pinned store buffer, or None
        if one is not ready yet.  Pinning under the lock keeps a concurrent spill away."""
        node = self.node
        sources = []
        for oid in oids:
            if not node.is_ready(oid):
                return None
            payload = node.payload_for_reading(oid)
            if payload[1] is not None:
                sources.append(payload[1])
                continue
            buf = self.store.get(oid, timeout=0.0)
            if buf is None:
                raise ObjectLostError(f"object {oid.hex()} vanished from the object store")
            sources.append(buf)
        return sources

    def wait(self, keys: Sequence[bytes], num_returns: int, timeout: Optional[float]) -> List[bool]:
        node = self.node
        deadline = self._deadline(timeout)
        with node.lock:
            ready = [node.is_ready(k) for k in keys]
            waiter = _Waiter(num_returns - sum(ready))
            if waiter.need > 0:
                for key, ok in zip(keys, ready):
                    if not ok:
                        node.on_ready(key, waiter.fire)
        node.run_callbacks()
        self._block(waiter.event, deadline)
        with node.lock:
            return [node.is_ready(k) for k in keys]

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        with self.node.lock:
            self.node.on_ready(oid, callback)
        self.node.run_callbacks()

    # -- tasks --------------------------------------------------------------------------------------------
    def register_function(self, fn_id: bytes, blob: bytes) -> None:
        self.node.functions.setdefault(fn_id, blob)

    def submit(self, spec: Any) -> None:
        self.node.submit(spec, DRIVER)

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        self.node.cancel(oid, force, recursive)

    # -- streams ---------------------------------------------------------------------------------------
    def stream_next(self, task_id: bytes, timeout: Optional[float]) -> Optional[bytes]:
        node = self.node
        deadline = None
        while True:
            with node.lock:
                done, oid = node.stream_take(task_id, DRIVER)
            if done:
                node.run_callbacks()  # an ACK for a backpressured worker goes out now
                return oid
            with node.lock:
                waiter = _Waiter(1)
                node.on_ready(ids.stream_id(task_id), waiter.fire)
            if deadline is None:
                deadline = self._deadline(timeout)
            node.run_callbacks()
            if not self._block(waiter.event, deadline):
                raise GetTimeoutError(f"no item within {timeout} s")

    def stream_close(self, task_id: bytes) -> None:
        self.node.stream_close(task_id)

    # -- actors -------------------------------------------------------------------------------------------
    def create_actor(self, spec: Any, class_name: str, name: Optional[str], descriptor: bytes,
                     options: Dict[str, Any], get_if_exists: bool) -> Tuple[bytes, bytes]:
        return self.node.create_actor(spec, DRIVER, None, class_name, name, descriptor,
                                      options, get_if_exists)

    def get_actor(self, name: str) -> Optional[Tuple[bytes, bytes]]:
        return self.node.find_actor(name)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        gone = threading.Event()
        self.node.kill_actor(actor_id, no_restart, gone.set)
        gone.wait()

    def close(self) -> None:
        self.closed = True

