"""The node's answers to what workers ask of it: get, wait, next, put, submit, refs...

A request that cannot be answered at once (Get/Wait/Next of something not ready) becomes
a ``_PendingRequest``; meanwhile the CPUs of the task that asked are lent to other tasks.
Every handler runs under the node's lock, on whichever thread read the worker's socket
(``Node.on_socket``: the I/O thread, or a driver thread spinning in ``get``).
"""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .. import ids
from ..task_spec import TaskSpec
from . import protocol, workers
from .tasks import Task

if TYPE_CHECKING:
    from .node import Node


class WorkerRequests:
    def __init__(self, node: "Node") -> None:
        self.node = node

    def handlers(self) -> Dict[type, Callable[[workers.WorkerHandle, Any], None]]:
        return {
            protocol.Submit: self.on_submit,
            protocol.Put: self.on_put,
            protocol.Get: self.on_get,
            protocol.Wait: self.on_wait,
            protocol.Next: self.on_next,
            protocol.Refs: self.on_refs,
            protocol.CancelReq: self.on_cancel_req,
            protocol.CloseReq: self.on_close_req,
            protocol.Fn: self.on_fn,
            protocol.Room: self.on_room,
            protocol.Subscribe: self.on_subscribe,
            protocol.ActorReq: self.on_actor_req,
        }

    def reply(self, w: workers.WorkerHandle, req: int, status: int, body: Any) -> None:
        self.node.outbox.send(w, protocol.Reply(req, status, body))

    # -- lending CPUs while a task waits ---------------------------------------------------------
    def _caller(self, w: workers.WorkerHandle, caller: Optional[bytes]) -> Optional[Task]:
        """The task that made a request: the one it names, else the worker's running task
        (a thread the task started does not know its task)."""
        task = self.node.tasks.get(caller) if caller is not None else None
        if task is not None and task.worker is w:
            return task
        return w.task

    def block(self, w: workers.WorkerHandle, caller: Optional[Task]) -> None:
        """The task ``caller`` waits for something: lend its CPUs to other tasks meanwhile.

        Tasks pipelined behind it are taken back (they could be what it waits for): the
        worker returns those it has not started with Reclaimed.
        """
        node = self.node
        if caller is not None and caller.is_actor_call:
            node.actors.call_blocked(caller)
            return
        if node.scheduler.block(w):
            node.reclaim(w)
        node.dispatch()

    def unblock(self, w: workers.WorkerHandle, caller: Optional[Task]) -> None:
        if caller is not None and caller.is_actor_call:
            self.node.actors.call_unblocked(caller)
        else:
            self.node.scheduler.unblock(w)

    def _when_ready(self, w: workers.WorkerHandle, caller: Optional[bytes], keys: List[bytes],
                    need: int, answer: Callable[[], bool], timeout: Optional[float],
                    on_timeout: Callable[[], None]) -> None:
        """Answer a worker's request once ``need`` of ``keys`` became ready, or at timeout.

        ``answer`` returns False when, by the time it runs, what it needs is gone again
        (another consumer took the stream item): the request then keeps waiting.
        """
        if need <= 0 and answer():
            return
        _PendingRequest(self, w, self._caller(w, caller), keys, answer, on_timeout).arm(
            need, timeout)

    # -- objects ----------------------------------------------------------------------------------
    def on_get(self, w: workers.WorkerHandle, msg: protocol.Get) -> None:
        node, oids, req = self.node, msg.oids, msg.req_id

        def answer() -> bool:
            self.reply(w, req, protocol.OK, [node.payload_for_reading(o) for o in oids])
            return True

        need = sum(1 for o in oids if not node.is_ready(o))
        self._when_ready(w, msg.caller, oids, need, answer, msg.timeout,
                         lambda: self.reply(w, req, protocol.TIMEOUT, None))

    def on_wait(self, w: workers.WorkerHandle, msg: protocol.Wait) -> None:
        node, keys = self.node, msg.keys

        def answer() -> bool:
            self.reply(w, msg.req_id, protocol.OK, [node.is_ready(k) for k in keys])
            return True

        need = msg.num_returns - sum(1 for k in keys if node.is_ready(k))
        self._when_ready(w, msg.caller, keys, need, answer, msg.timeout, answer)

    def on_next(self, w: workers.WorkerHandle, msg: protocol.Next) -> None:
        node, task_id, req = self.node, msg.task_id, msg.req_id

        def answer() -> bool:
            done, oid = node.stream_take(task_id, w.id)
            if not done:
                return False
            if oid is not None:
                self._note_taken_by(self._caller(w, msg.caller), task_id)
            self.reply(w, req, protocol.OK if oid is not None else protocol.END_OF_STREAM, oid)
            return True

        key = ids.stream_id(task_id)
        self._when_ready(w, msg.caller, [key], 0 if node.is_ready(key) else 1, answer,
                         msg.timeout, lambda: self.reply(w, req, protocol.TIMEOUT, None))

    def _note_taken_by(self, consumer: Optional[Task], stream_task_id: bytes) -> None:
        """Remember that ``consumer`` took an item of a stream it did not start itself."""
        stream = self.node.streams.get(stream_task_id)
        if consumer is None or consumer.took_from is not None or stream is None:
            return
        if stream.parent != consumer.spec.task_id:
            consumer.took_from = stream.name

    def on_room(self, w: workers.WorkerHandle, msg: protocol.Room) -> None:
        self.reply(w, msg.req_id, protocol.OK, self.node.spiller.make_room(msg.nbytes))

    def on_subscribe(self, w: workers.WorkerHandle, msg: protocol.Subscribe) -> None:
        node, oid = self.node, msg.oid

        def notify() -> None:
            with node.lock:
                if w.state != workers.DEAD:
                    node.outbox.send(w, protocol.Ready(oid))

        node.on_ready(oid, notify)

    def on_refs(self, w: workers.WorkerHandle, msg: protocol.Refs) -> None:
        objects = self.node.objects
        for oid in msg.added:
            objects.add_holder(oid, w.id)
        for oid in msg.removed:
            objects.remove_holder(oid, w.id)

    def on_put(self, w: workers.WorkerHandle, msg: protocol.Put) -> None:
        self.node.objects.create(msg.oid, holder=w.id)
        self.node.object_ready(msg.oid, msg.payload, msg.contained)

    # -- tasks -------------------------------------------------------------------------------------
    def on_submit(self, w: workers.WorkerHandle, msg: protocol.Submit) -> None:
        self.node.submit_locked(TaskSpec.from_wire(msg.spec), w.id, msg.caller)

    def on_fn(self, w: workers.WorkerHandle, msg: protocol.Fn) -> None:
        self.node.functions[msg.fn_id] = msg.blob

    def on_cancel_req(self, w: workers.WorkerHandle, msg: protocol.CancelReq) -> None:
        self.node.cancel_locked(ids.task_of(msg.oid), msg.force, msg.recursive)

    def on_close_req(self, w: workers.WorkerHandle, msg: protocol.CloseReq) -> None:
        self.node.streams.close(msg.task_id)

    # -- actors ---------------------------------------------------------------------------------------
    def on_actor_req(self, w: workers.WorkerHandle, msg: protocol.ActorReq) -> None:
        """create / get / kill an actor from a worker; answered by Reply (FAILED: a message)."""
        node = self.node
        try:
            if msg.op == "create":
                spec_wire, class_name, name, descriptor, opts, get_if_exists, caller = msg.arg
                body: Any = node.create_actor_locked(
                    TaskSpec.from_wire(spec_wire), w.id, caller, class_name, name,
                    descriptor, pickle.loads(opts), get_if_exists)
            elif msg.op == "get":
                actor = node.actors.by_name(msg.arg)
                body = None if actor is None else (actor.actor_id, actor.descriptor)
            elif msg.op == "kill":
                actor_id, no_restart = msg.arg
                node.actors.kill(actor_id, no_restart,
                                 lambda: self._reply_later(w, msg.req_id, protocol.OK, None))
                return
            else:
                raise ValueError(f"unknown actor request {msg.op!r}")
        except ValueError as exc:
            self.reply(w, msg.req_id, protocol.FAILED, str(exc))
            return
        self.reply(w, msg.req_id, protocol.OK, body)

    def _reply_later(self, w: workers.WorkerHandle, req: int, status: int, body: Any) -> None:
        """A reply from a callback that runs outside the lock."""
        node = self.node
        with node.lock:
            if w.state != workers.DEAD:
                self.reply(w, req, status, body)
                node.outbox.flush()


class _PendingRequest:
    """A worker's Get/Wait/Next that could not be answered at once.

    While it waits, the CPUs of the task that asked are lent to other tasks: a task that
    waits for another task never deadlocks, even with ``num_cpus=1``.
    """

    def __init__(self, requests: WorkerRequests, w: workers.WorkerHandle, caller: Optional[Task],
                 keys: List[bytes], answer: Callable[[], bool],
                 on_timeout: Callable[[], None]) -> None:
        self.requests = requests
        self.node = requests.node
        self.w = w
        self.caller = caller
        self.keys = keys
        self.answer = answer
        self.on_timeout = on_timeout
        self.need = 0
        self.done = False

    def arm(self, need: int, timeout: Optional[float]) -> None:
        """Wait for ``need`` more of the keys (under the node lock)."""
        self.requests.block(self.w, self.caller)
        self._listen(need)
        if timeout is not None:
            self.node.reactor.call_later(max(0.0, timeout), self._expire)

    def _listen(self, need: int) -> None:
        node = self.node
        self.need = max(1, need)
        for key in self.keys:
            if not node.is_ready(key):
                node.on_ready(key, self._fire)
        if all(node.is_ready(k) for k in self.keys):
            node.objects.callbacks.append(self._fire)

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
                self.requests.unblock(self.w, self.caller)
            else:
                self._listen(1)
        node.run_callbacks()

    def _expire(self) -> None:
        node = self.node
        with node.lock:
            if self.done or self.w.state == workers.DEAD:
                return
            self.done = True
            self.requests.unblock(self.w, self.caller)
            self.on_timeout()
        node.run_callbacks()
