"""The node's answers to what workers ask of it: get, wait, next, put, submit, refs...

A request that cannot be answered at once (GET/WAIT/NEXT of something not ready) becomes
a ``_PendingRequest``; meanwhile the worker's CPUs are lent to other tasks.  Every handler
runs under the node's lock, on whichever thread read the worker's socket (``Node._handle``:
the I/O thread, or a driver thread spinning in ``get``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional

from .. import ids
from ..task_spec import TaskSpec
from . import protocol, workers

if TYPE_CHECKING:
    from .node import Node


class WorkerRequests:
    """Part of ``Node``: the handlers of requests from workers."""

    def _reply(self, w: workers.WorkerHandle, *body: Any) -> None:
        self._send(w, (protocol.REPLY,) + body)

    def _block(self, w: workers.WorkerHandle) -> None:
        """A worker waits for something: lend its CPUs to other tasks meanwhile.

        Tasks pipelined behind the waiting one are taken back (they could be what it
        waits for): the worker returns those it has not started with RECLAIMED.
        """
        if w.task is not None and not w.blocked:
            w.blocked = True
            self.free_cpus += w.task.spec.num_cpus
            if len(w.tasks) > 1 and not w.reclaiming:
                self._reclaim(w)
            self._dispatch()

    def _unblock(self, w: workers.WorkerHandle) -> None:
        if w.blocked:
            w.blocked = False
            if w.task is not None:
                self.free_cpus -= w.task.spec.num_cpus

    def _when_ready(self, w: workers.WorkerHandle, keys: List[bytes], need: int,
                    answer: Callable[[], bool], timeout: Optional[float],
                    on_timeout: Callable[[], None]) -> None:
        """Answer a worker's request once ``need`` of ``keys`` became ready, or at timeout.

        ``answer`` returns False when, by the time it runs, what it needs is gone again
        (another consumer took the stream item): the request then keeps waiting.
        """
        if need <= 0 and answer():
            return
        _PendingRequest(self, w, keys, answer, on_timeout).arm(need, timeout)

    def on_get(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, req, oids, timeout = msg

        def answer() -> bool:
            self._reply(w, req, protocol.OK, [self.payload_for_reading(o) for o in oids])
            return True

        need = sum(1 for o in oids if not self.is_ready(o))
        self._when_ready(w, oids, need, answer, timeout,
                         lambda: self._reply(w, req, protocol.TIMEOUT, None))

    def on_wait(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, req, keys, num_returns, timeout = msg

        def answer() -> bool:
            self._reply(w, req, protocol.OK, [self.is_ready(k) for k in keys])
            return True

        need = num_returns - sum(1 for k in keys if self.is_ready(k))
        self._when_ready(w, keys, need, answer, timeout, answer)

    def on_next(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, req, task_id, timeout = msg

        def answer() -> bool:
            done, oid = self.stream_take(task_id, w.id)
            if not done:
                return False
            if oid is not None:
                self._note_taken_by(w, task_id)
            self._reply(w, req, protocol.OK if oid is not None else protocol.END_OF_STREAM, oid)
            return True

        key = ids.stream_id(task_id)
        self._when_ready(w, [key], 0 if self.is_ready(key) else 1, answer, timeout,
                         lambda: self._reply(w, req, protocol.TIMEOUT, None))

    def _note_taken_by(self, w: workers.WorkerHandle, stream_task_id: bytes) -> None:
        """Remember that ``w``'s task took an item of a stream it did not start itself."""
        consumer = w.task
        stream = self.streams.get(stream_task_id)
        if consumer is None or consumer.took_from is not None or stream is None:
            return
        if stream.parent != consumer.spec.task_id:
            consumer.took_from = stream.name

    def on_room(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, req, nbytes = msg
        self._reply(w, req, protocol.OK, self.make_room(nbytes))

    def on_subscribe(self, w: workers.WorkerHandle, msg: tuple) -> None:
        oid = msg[1]

        def notify() -> None:
            with self.lock:
                if w.state != workers.DEAD:
                    self._send(w, (protocol.READY, oid))

        self.on_ready(oid, notify)

    def on_refs(self, w: workers.WorkerHandle, msg: tuple) -> None:
        for oid in msg[1]:
            self.objects.add_holder(oid, w.id)
        for oid in msg[2]:
            self.objects.remove_holder(oid, w.id)

    def on_submit(self, w: workers.WorkerHandle, msg: tuple) -> None:
        spec = TaskSpec.from_message(msg)
        parent = w.task.spec.task_id if w.task is not None else None
        self._submit(spec, w.id, parent)

    def on_put(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, oid, payload, contained = msg
        self.objects.create(oid, holder=w.id)
        self.object_ready(oid, payload, contained)

    def on_fn(self, w: workers.WorkerHandle, msg: tuple) -> None:
        self.functions[msg[1]] = msg[2]

    def on_cancel_req(self, w: workers.WorkerHandle, msg: tuple) -> None:
        self._cancel(ids.task_of(msg[1]), msg[2], msg[3])

    def on_close_req(self, w: workers.WorkerHandle, msg: tuple) -> None:
        self._close_stream(msg[1])


class _PendingRequest:
    """A worker's GET/WAIT/NEXT that could not be answered at once.

    While it waits, the worker's CPUs are lent to other tasks (``Node._block``): a task
    that waits for another task never deadlocks, even with ``num_cpus=1``.
    """

    def __init__(self, node: "Node", w: workers.WorkerHandle, keys: List[bytes],
                 answer: Callable[[], bool], on_timeout: Callable[[], None]) -> None:
        self.node = node
        self.w = w
        self.keys = keys
        self.answer = answer
        self.on_timeout = on_timeout
        self.need = 0
        self.done = False

    def arm(self, need: int, timeout: Optional[float]) -> None:
        """Wait for ``need`` more of the keys (under the node lock)."""
        node = self.node
        node._block(self.w)
        self._listen(need)
        if timeout is not None:
            node.reactor.call_later(max(0.0, timeout), self._expire)

    def _listen(self, need: int) -> None:
        self.need = max(1, need)
        for key in self.keys:
            if not self.node.is_ready(key):
                self.node.on_ready(key, self._fire)
        if all(self.node.is_ready(k) for k in self.keys):
            self.node.objects.callbacks.append(self._fire)

    def _fire(self) -> None:
        node = self.node
        with node.lock:
            if self.done or self.w.state == workers.DEAD:
                return
            self.need -= 1
            if self.need > 0:
                return
            if self.answer():
                self.done = True
                node._unblock(self.w)
            else:
                self._listen(1)
        node._run_callbacks()

    def _expire(self) -> None:
        node = self.node
        with node.lock:
            if self.done or self.w.state == workers.DEAD:
                return
            self.done = True
            node._unblock(self.w)
            self.on_timeout()
        node._run_callbacks()
