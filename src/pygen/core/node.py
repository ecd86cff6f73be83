"""The node: the runtime's state in the driver, composed of parts that own their own.

It lives inside the driver process (its state plus one I/O thread), so a task submitted
by the driver goes straight to a worker's socket: one round trip per task, the least a
task can cost (a separate node process would make it two; see docs/architecture.md).

    driver thread --submit--> Node --Exec--> worker --Result/Item/End--> Node --> waiters
                                ^                |
                                +--Submit/Get/Put/Next/Refs (nested calls from workers)

    Node (the lock, the message table, what ties the parts together)
      objects    ObjectDirectory  who holds which object; frees at zero
      tasks      TaskTable        live tasks, their links, a bounded history
      scheduler  Scheduler        ready queue, arguments, CPU slots, pipelining, retries
      pool       WorkerPool       worker processes: spawn, idle, exit, memory monitor
      streams    StreamTable      one cursor per generator
      actors     ActorTable       actors: placement, call queues, death and restarts
      outbox     Outbox           messages to workers, batched; the SIGUSR2 poke
      requests   WorkerRequests   what workers ask (get/wait/next/put/submit...)
      spiller    Spiller          arena full -> spill file, and back

Every piece of state is guarded by ``self.lock``.  Message handlers and API calls take
it, change state, and queue callbacks (waking waiters) that run after it is released
(``run_callbacks``).  Every end of a task (result, error, cancel, worker or actor death,
shutdown) makes every output ready, so no caller and no stream consumer waits forever.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from .. import ids, serialization
from ..exceptions import (InconsistentRetryError, ObjectLostError, OutOfMemoryError,
                          PygenError, TaskCancelledError, WorkerCrashedError)
from ..task_spec import TaskSpec
from . import protocol, workers
from .actors import ActorTable
from .introspection import Introspection
from .objects import DRIVER, ObjectDirectory, ObjEntry
from .outbox import Outbox
from .pool import WorkerPool
from .reactor import Reactor
from .requests import WorkerRequests
from .scheduler import Scheduler
from .spill import SpillFile
from .spilling import Spiller
from .streams import StreamState, StreamTable
from .tasks import DONE, QUEUED, RUNNING, WAITING, Task, TaskTable
from .transport import ConnectionClosed

# How often the I/O thread releases what the driver's dropped refs kept: memory comes
# back within this delay, and no ref drop ever costs a thread wake-up.
HOUSEKEEPING_INTERVAL = 0.02


class Node:
    """The runtime in the driver; see the module docstring."""

    def __init__(self, num_cpus: float, store: Any, *, worker_memory_limit: Optional[int],
                 spill_dir: Optional[str], log_to_driver: bool) -> None:
        self.lock = threading.RLock()
        self.closed = False
        self.store = store
        self.worker_memory_limit = worker_memory_limit
        self.log_to_driver = log_to_driver
        self.functions: Dict[bytes, bytes] = {}   # fn_id -> pickled function or class
        self.reactor = Reactor()
        self.outbox = Outbox(self.reactor)
        self.objects = ObjectDirectory(self._free_storage)
        self.tasks = TaskTable()
        self.pool = WorkerPool(self, num_cpus)
        self.scheduler = Scheduler(self, self.pool, num_cpus)
        self.streams = StreamTable(self, self.objects)
        self.actors = ActorTable(self)
        self.requests = WorkerRequests(self)
        self.introspection = Introspection(self)
        self.spill = SpillFile(spill_dir)
        self.spiller = Spiller(store, self.objects, self.spill)
        # the driver's refs: counted here, off the lock (ref churn is the hottest path)
        self.driver_refs: Dict[bytes, int] = {}
        self._refs_lock = threading.Lock()
        self._dropped_refs: Deque[bytes] = collections.deque()
        self._handlers: Dict[type, Callable[[workers.WorkerHandle, Any], None]] = {
            protocol.Hello: self.pool.on_hello,
            protocol.Result: self.on_result,
            protocol.Item: self.on_item,
            protocol.Items: self.on_items,
            protocol.End: self.on_end,
            protocol.Reclaimed: self.on_reclaimed,
            **self.requests.handlers(),
        }

    @property
    def num_cpus(self) -> float:
        return self.scheduler.num_cpus

    @property
    def free_cpus(self) -> float:
        return self.scheduler.free_cpus

    @property
    def workers(self) -> Dict[int, workers.WorkerHandle]:
        return self.pool.workers

    # == start and stop ================================================================
    def start(self) -> None:
        self.reactor.start("pygen-node")
        self.pool.start()
        self.reactor.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    def shutdown(self) -> None:
        """Stop every worker, fail what is left, release the store.  Idempotent.

        Idle workers get Exit and flush their output; busy ones (and actors) are killed
        (their tasks are failed: nothing waits forever).  Whatever they printed is still
        forwarded.
        """
        with self.lock:
            if self.closed:
                return
            self.closed = True
            busy = [w for w in self.workers.values() if w.task is not None or w.actor is not None]
            for w in self.workers.values():
                try:
                    w.conn.queue(protocol.Exit())
                    w.conn.flush()
                except OSError:
                    pass
            error = self.system_error(PygenError("pygen was shut down"))
            self.actors.shut_down("pygen was shut down")
            for task in list(self.tasks.values()):
                self.fail(task, error)
        self.run_callbacks()
        self.pool.stop_all(busy)
        self.reactor.stop()
        with self.lock:
            self.pool.close_all()
        self.pool.writer.close()  # what the workers printed reaches the driver's streams
        self.spill.close()
        self.reactor.close()

    # == the driver's references ===========================================================
    def driver_add_ref(self, oid: bytes, registered: bool) -> None:
        with self._refs_lock:
            n = self.driver_refs.get(oid, 0)
            self.driver_refs[oid] = n + 1
        if n == 0 and not registered:
            with self.lock:
                self.objects.add_holder(oid, DRIVER)

    def driver_remove_ref(self, oid: bytes) -> None:
        # runs in __del__, maybe inside GC in any thread: no lock, only a deque append;
        # the I/O thread drains the deque every HOUSEKEEPING_INTERVAL
        self._dropped_refs.append(oid)

    def drain_dropped_refs(self) -> None:
        if not self._dropped_refs:
            return
        with self.lock:
            pop = self._dropped_refs.popleft
            while self._dropped_refs:
                oid = pop()
                with self._refs_lock:
                    n = self.driver_refs.get(oid, 0) - 1
                    if n > 0:
                        self.driver_refs[oid] = n
                    else:
                        self.driver_refs.pop(oid, None)
                if n <= 0:
                    self.objects.remove_holder(oid, DRIVER)
        self.run_callbacks()

    def _housekeeping(self) -> None:
        if self.closed:
            return
        self.drain_dropped_refs()
        with self.lock:
            for w in self.scheduler.stuck_pipelines():
                self.reclaim(w)
        self.run_callbacks()
        self.reactor.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    # == callbacks run outside the lock ==================================================
    def run_callbacks(self) -> None:
        """After a batch of work: write the queued messages, then run queued callbacks."""
        if self.outbox.pending:
            with self.lock:
                self.outbox.flush()
        while True:
            if not self.objects.callbacks:  # a plain read: appends happen under the lock
                return
            with self.lock:
                callbacks = self.objects.take_callbacks()
            if not callbacks:
                return
            for cb in callbacks:
                cb()

    # == messages from workers =============================================================
    def on_socket(self, w: workers.WorkerHandle) -> None:
        """A worker's socket is readable (reactor handler, any thread)."""
        conn = w.conn
        with conn.read_lock:
            try:
                msgs = conn.read_messages()
                eof = False
            except (ConnectionClosed, OSError):
                msgs, eof = [], True
        if msgs:
            with self.lock:
                for msg in msgs:
                    self.handle(w, msg)
            self.run_callbacks()
        with self.lock:
            if conn.pending_output:
                conn.flush()
            if not eof:
                self.reactor.rearm(conn.fd, write=conn.pending_output)

    def handle(self, w: workers.WorkerHandle, msg: Any) -> None:
        """One message from ``w``, under the lock."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            _internal_error(f"unknown message {type(msg).__name__} from worker pid {w.pid}")
            return
        try:
            handler(w, msg)
        except Exception:
            # a bug in pygen: say so loudly, keep serving the other workers
            _internal_error(f"while handling {type(msg).__name__} from worker pid {w.pid}")

    # == objects ===========================================================================
    def object_ready(self, oid: bytes, payload: tuple, contained: List[bytes] = ()) -> None:
        """Record ``oid``'s value; wake tasks and requests waiting on it.  Under the lock."""
        flags, inline, size = payload
        self.objects.set_ready(oid, flags, inline, size, contained)
        self.scheduler.object_ready(oid)

    def put(self, oid: bytes, payload: tuple, contained: List[bytes], owner: int) -> None:
        with self.lock:
            self.objects.create(oid, holder=owner)
            self.object_ready(oid, payload, contained)
        self.run_callbacks()

    def _free_storage(self, entry: ObjEntry) -> None:
        if entry.in_store:
            self.discard_stored(entry.oid, entry.payload())
        if entry.spilled is not None:
            self.spill.release(entry.spilled)
            entry.spilled = None
        kind = ids.kind_of(entry.oid)
        if kind == ids.KIND_STREAM:
            self.streams.abandon(ids.task_of(entry.oid))
        elif kind == ids.KIND_ACTOR:
            self.actors.handles_gone(ids.task_of(entry.oid))

    def discard_stored(self, oid: bytes, payload: tuple) -> None:
        """Delete ``oid`` from the arena if its value is there (deferred while a view pins it)."""
        if payload[1] is None:
            try:
                self.store.delete(oid)
            except KeyError:
                pass

    def payload_for_reading(self, oid: bytes) -> tuple:
        """The payload of a ready object, restored into the store first if it was spilled."""
        entry = self.objects.get(oid)
        if entry is None:
            return self.lost(oid)
        if entry.spilled is not None:
            self.spiller.restore(entry)
        entry.last_access = time.monotonic()
        return entry.payload()

    def lost(self, oid: bytes) -> tuple:
        return self.system_error(ObjectLostError(
            f"object {oid.hex()} does not exist: it was freed (no ObjectRef to it was left) "
            f"or it belongs to another pygen session"))

    def is_ready(self, oid: bytes) -> bool:
        if ids.kind_of(oid) == ids.KIND_STREAM:
            return self.streams.is_ready(ids.task_of(oid))
        entry = self.objects.get(oid)
        return entry is None or entry.ready

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        """``callback`` (run outside the lock) once ``oid`` (object or stream) is ready."""
        if ids.kind_of(oid) == ids.KIND_STREAM:
            self.streams.on_ready(ids.task_of(oid), callback)
        elif not self.objects.on_ready(oid, callback):
            self.objects.callbacks.append(callback)  # unknown: "ready" (get reports it lost)

    def make_room(self, nbytes: int) -> bool:
        """Spill until a block of ``nbytes`` may fit in the arena (``Spiller.make_room``)."""
        with self.lock:
            return self.spiller.make_room(nbytes)

    # == submission ========================================================================
    def submit(self, spec: TaskSpec, owner: int, parent: Optional[bytes] = None) -> None:
        with self.lock:
            self.submit_locked(spec, owner, parent)
            self.outbox.flush_due()  # a burst of submissions is written together
        if self.objects.callbacks:
            self.run_callbacks()

    def submit_locked(self, spec: TaskSpec, owner: int, parent: Optional[bytes]) -> None:
        self._admit(Task(spec, owner, parent))

    def _admit(self, task: Task) -> None:
        """Take in a new task: its outputs exist from now on; it waits for its arguments."""
        spec, owner = task.spec, task.owner
        self.tasks.add(task)
        objects = self.objects
        for oid in spec.return_ids():
            objects.create(oid, holder=owner)
        if spec.returns_kind != protocol.RETURNS_STATIC:
            task.stream = self.streams.open(spec.task_id, spec.backpressure,
                                            spec.returns_kind == protocol.RETURNS_DYNAMIC,
                                            spec.name, task.parent)
        if spec.returns_kind == protocol.RETURNS_STREAMING:
            # the generator's handle and the completion object it keeps alive
            handle = objects.create(ids.stream_id(spec.task_id), holder=owner)
            handle.ready = True
            completion = ids.completion_id(spec.task_id)
            objects.create(completion).internal += 1
            handle.add_contained(completion)
        if spec.deps or spec.contained:
            task.kept = objects.add_internal(list(spec.deps) + list(spec.contained))
        args_oid = spec.args_oid()
        if args_oid is not None:  # kept by the task from before it is ready, or it is freed
            objects.create(args_oid).internal += 1
            task.kept.append(args_oid)
            self.object_ready(args_oid, spec.args)
        if task.is_actor_call and not self.actors.accept_call(task):
            return
        if spec.num_cpus > self.num_cpus:
            what = "actor" if task.is_actor_creation else "task"
            self.fail(task, self.system_error(ValueError(
                f"{what} {spec.name} needs num_cpus={spec.num_cpus:g} but pygen was started "
                f"with num_cpus={self.num_cpus:g}: it could never run")))
            return
        for dep in spec.deps:
            entry = objects.get(dep)
            if entry is None:
                self.fail(task, self.lost(dep))
                return
            if not entry.ready:
                self.scheduler.wait_for(task, dep)
        if task.pending_deps == 0:
            self.deps_ready(task)

    def deps_ready(self, task: Task) -> None:
        """Every top-level argument of ``task`` is ready: queue it (or fail it with the
        error one of them holds)."""
        for dep in task.spec.deps:
            entry = self.objects.get(dep)
            if entry is None:
                self.fail(task, self.lost(dep))
                return
            if entry.flags & serialization.FLAG_ERROR:
                self.fail(task, entry.payload())
                return
        if task.is_actor_call:
            task.state = QUEUED
            self.actors.call_ready(task)
        else:
            self.scheduler.enqueue(task)
            self.scheduler.dispatch()

    def dispatch(self) -> None:
        self.scheduler.dispatch()

    def exec_on(self, task: Task, w: workers.WorkerHandle) -> None:
        """Send ``task`` to ``w`` (a pool worker, or its actor's)."""
        spec = task.spec
        blob = None
        if spec.method is None and spec.fn_id not in w.sent_functions:
            blob = self.functions[spec.fn_id]
            w.sent_functions.add(spec.fn_id)
        deps = [(dep, self.payload_for_reading(dep)) for dep in spec.deps] if spec.deps else []
        if spec.returns_kind == protocol.RETURNS_STATIC:
            skip = task.reported
        elif spec.returns_kind == protocol.RETURNS_STREAMING:
            assert task.stream is not None
            skip = task.stream.handed_out
        else:
            skip = 0
        self.outbox.send(w, protocol.Exec(
            spec.task_id, task.attempt, spec.fn_id, blob, spec.name, spec.args, deps,
            spec.returns_kind, spec.num_returns, skip, spec.backpressure,
            spec.retry_exceptions, spec.method))
        if w.memory_limit is not None:
            self.pool.watch_memory()

    def reclaim(self, w: workers.WorkerHandle) -> None:
        """Ask ``w`` for the tasks queued behind its running one (answer: Reclaimed)."""
        w.reclaiming = True
        self.outbox.send(w, protocol.Reclaim([t.spec.task_id for t in list(w.tasks)[1:]]))
        self.outbox.poke(w)

    def on_reclaimed(self, w: workers.WorkerHandle, msg: protocol.Reclaimed) -> None:
        w.reclaiming = False
        self.scheduler.requeue_unstarted(w, msg.task_ids)
        self.dispatch()

    # == results ================================================================================
    def _current(self, w: workers.WorkerHandle, task_id: bytes, attempt: int) -> Optional[Task]:
        """The task a report is about, if the report is from its current attempt."""
        task = self.tasks.get(task_id)
        if task is None or task.attempt != attempt or task.worker is not w:
            return None
        return task

    def _unassign(self, task: Task) -> None:
        if task.is_actor_call:
            self.actors.call_left_worker(task)
        else:
            self.scheduler.unassign(task)

    def _ending(self, w: workers.WorkerHandle, task_id: bytes, attempt: int,
                seconds: float) -> Optional[Task]:
        """The task a Result or End is about, now off its worker; None if there is nothing
        more to do (a report of an attempt that is over, or a cancelled task, now failed)."""
        task = self._current(w, task_id, attempt)
        if task is None:
            return None
        if task.is_actor_creation:
            return task
        if not task.is_actor_call:
            self.scheduler.record_run_time(task.spec.fn_id, seconds)
        self._unassign(task)
        if task.cancelled:
            self.fail(task, self.cancelled_error(task))
            self.dispatch()
            return None
        return task

    def cancelled_error(self, task: Task, how: str = "") -> tuple:
        return self.system_error(TaskCancelledError(
            f"task {task.spec.name} was cancelled{task.cancel_stage}{how}"))

    def on_result(self, w: workers.WorkerHandle, msg: protocol.Result) -> None:
        task = self._ending(w, msg.task_id, msg.attempt, msg.seconds)
        if task is None:
            return
        returns = msg.returns
        if task.is_actor_creation:
            self.actors.init_done(task, returns[0][1] if returns else None)
            return
        if msg.retryable and self.scheduler.should_retry(task):
            self._retry(task)
        else:
            if returns and returns[0][1][0] & serialization.FLAG_ERROR:
                task.error = _error_text(returns[0][1])
            for index, payload, contained in returns:
                if task.reported <= index:
                    self.object_ready(ids.return_id(msg.task_id, index), payload, contained)
            task.reported = task.spec.num_returns
            self._finish(task, "failed" if task.error else "finished")
        self.dispatch()

    def on_item(self, w: workers.WorkerHandle, msg: protocol.Item) -> None:
        self._items(w, msg.task_id, msg.attempt, ((msg.index, msg.payload, msg.contained),))

    def on_items(self, w: workers.WorkerHandle, msg: protocol.Items) -> None:
        self._items(w, msg.task_id, msg.attempt, msg.items)

    def _items(self, w: workers.WorkerHandle, task_id: bytes, attempt: int,
               reports: "tuple | list") -> None:
        task = self._current(w, task_id, attempt)
        if task is None:  # a report of an attempt that is over: drop what it stored
            for index, payload, _ in reports:
                self.discard_stored(ids.item_id(task_id, index, attempt), payload)
            return
        if task.spec.returns_kind == protocol.RETURNS_STATIC:
            for index, payload, contained in reports:
                self.object_ready(ids.return_id(task_id, index), payload, contained)
                task.reported = max(task.reported, index + 1)
            return
        assert task.stream is not None
        self.streams.add_items(task.stream, reports, attempt,
                               lambda index: ids.item_id(task_id, index, attempt))

    def on_end(self, w: workers.WorkerHandle, msg: protocol.End) -> None:
        task = self._ending(w, msg.task_id, msg.attempt, msg.seconds)
        if task is None:
            return
        end_kind, payload = msg.end_kind, msg.payload
        if (end_kind == protocol.END_RAISED and msg.retryable
                and self.scheduler.should_retry(task)
                and not (task.stream is None and task.reported >= task.spec.num_returns)):
            self._retry(task)
        else:
            if end_kind == protocol.END_RAISED and payload is not None:
                task.error = _error_text(payload)
            self._end_outputs(task, msg.count, payload, msg.contained, end_kind)
            self._finish(task, "finished" if end_kind == protocol.END_RETURNED else
                         "failed" if end_kind == protocol.END_RAISED else "closed")
        self.dispatch()

    def _end_outputs(self, task: Task, count: int, payload: Optional[tuple],
                     contained: List[bytes], end_kind: int) -> None:
        """Make every output of a task that ended ready, so nobody waits forever."""
        spec = task.spec
        stream = task.stream
        if spec.returns_kind == protocol.RETURNS_STATIC:
            error = payload if payload is not None else self.system_error(
                PygenError(f"task {spec.name} ended without all of its returns"))
            # (a generator that raised after all k values never reported the k-th: the
            # worker keeps it back until the end, so ref k holds the error, SPEC §4.1)
            for index in range(task.reported, spec.num_returns):
                self.object_ready(ids.return_id(spec.task_id, index), error)
            task.reported = spec.num_returns
            return
        assert stream is not None
        raised = end_kind in (protocol.END_RAISED, protocol.END_CANCELLED)
        if end_kind == protocol.END_RETURNED and count < stream.handed_out:
            raised = True
            payload = self.system_error(InconsistentRetryError(
                f"task {spec.name} was retried and its new attempt yielded {count} items, "
                f"fewer than the {stream.handed_out} already handed out"))
        if raised and not stream.closed and not stream.abandoned:
            index = max(count, stream.produced)
            self.streams.add_items(stream, ((index, payload, []),), task.attempt,
                                   lambda i: ids.item_id(spec.task_id, i, task.attempt))
        if stream.all_items is not None:  # dynamic: the value lists every item
            items = stream.all_items
            value = _encode_dynamic(items)
            self.object_ready(ids.return_id(spec.task_id, 0),
                              (value.flags, value.to_bytes(), value.total_size), items)
            self.objects.release_internal(stream.pending)  # now kept by the generator value
            stream.pending.clear()
            stream.all_items = []
            stream.abandoned = True
        else:
            completion = payload if payload is not None else _NONE_PAYLOAD
            self.object_ready(ids.completion_id(spec.task_id), completion,
                              contained if not raised else [])
        self.streams.end(stream)

    # == actors ===================================================================================
    def create_actor(self, spec: TaskSpec, owner: int, parent: Optional[bytes], class_name: str,
                     name: Optional[str], descriptor: bytes, options: Dict[str, Any],
                     get_if_exists: bool) -> "tuple[bytes, bytes]":
        with self.lock:
            result = self.create_actor_locked(spec, owner, parent, class_name, name,
                                              descriptor, options, get_if_exists)
        self.run_callbacks()
        return result

    def create_actor_locked(self, spec: TaskSpec, owner: int, parent: Optional[bytes],
                            class_name: str, name: Optional[str], descriptor: bytes,
                            options: Dict[str, Any], get_if_exists: bool
                            ) -> "tuple[bytes, bytes]":
        """Create the actor ``spec`` describes (its creation task), or find the live one
        named ``name`` (``get_if_exists``).  Returns (actor_id, descriptor); the handle the
        caller makes for a new actor is already counted.  ValueError: the name is taken."""
        creation = Task(spec, owner, parent)
        actor_id, found = self.actors.create(creation, class_name, name, descriptor, options,
                                             get_if_exists)
        if actor_id != spec.task_id:
            return actor_id, found
        handle = self.objects.create(ids.actor_handle_id(actor_id), holder=owner)
        handle.ready = True  # counted like an object, so that it can be freed
        self._admit(creation)
        return actor_id, found

    def kill_actor(self, actor_id: bytes, no_restart: bool, done: Callable[[], None]) -> None:
        with self.lock:
            self.actors.kill(actor_id, no_restart, done)
        self.run_callbacks()

    def find_actor(self, name: str) -> "Optional[tuple[bytes, bytes]]":
        with self.lock:
            actor = self.actors.by_name(name)
            return None if actor is None else (actor.actor_id, actor.descriptor)

    # == failures and retries ===================================================================
    def _retry(self, task: Task) -> None:
        task.attempt += 1
        if task.stream is not None:
            self.streams.new_attempt(task.stream, task.attempt)
        if task.is_actor_call:
            self.actors.requeue(task)
        else:
            self.scheduler.enqueue(task)

    def fail(self, task: Task, error: tuple) -> None:
        """End ``task`` with ``error`` in every output it has not produced yet."""
        if task.state == DONE:
            return
        self.scheduler.forget(task)
        if task.is_actor_call:
            self.actors.forget_call(task)
        elif task.is_actor_creation:
            self.actors.creation_failed(task, error)
        elif task.worker is not None:
            self.scheduler.unassign(task)
        count = task.stream.produced if task.stream is not None else task.reported
        task.error = task.error or _error_text(error)
        self._end_outputs(task, count, error, [], protocol.END_RAISED)
        self._finish(task, "cancelled" if task.cancelled else "failed")

    def _finish(self, task: Task, how: str) -> None:
        self.scheduler.forget(task)
        self.tasks.remove(task, how)
        kept, task.kept = task.kept, []
        self.objects.release_internal(kept)

    def finish_actor_creation(self, task: Task, how: str) -> None:
        """The actor is dead for good: its ``__init__`` arguments can go."""
        if task.state != DONE:
            self._finish(task, how)

    def system_error(self, exc: BaseException) -> tuple:
        sv = serialization.serialize(exc, error=True)
        return (sv.flags, sv.to_bytes(), sv.total_size)

    def fail_unplaceable(self, why: str) -> None:
        """No worker can be started: fail what waits for one instead of looping."""
        error = self.system_error(WorkerCrashedError(why))
        for task in list(self.scheduler.ready):
            self.fail(task, error)
        self.actors.no_workers(why)

    def worker_died(self, w: workers.WorkerHandle) -> None:
        """Account for a dead worker (under the lock; the pool calls this)."""
        if w.slot is not None:
            self._reclaim_slot(w.slot, w.pid)
        else:
            # it died before its Hello (still starting): it may have attached the store
            # already, and the slot it took is found by its pid
            try:
                held = [slot for slot, pid in self.store.slots() if pid == w.pid]
            except Exception:
                held = []
            for slot in held:
                self._reclaim_slot(slot, w.pid)
        self.objects.drop_process(w.id)
        if w.actor is not None:
            self.actors.worker_died(w)
            return
        task = w.task
        for waiting in reversed(list(w.tasks)[1:]):  # never started: just run them elsewhere
            self.scheduler.unassign(waiting)
            self.scheduler.enqueue(waiting, first=True)
        if task is None:
            return
        # what it was doing: its status page (core/stages.py); a task queued behind the
        # running one on this worker never started
        stage = w.stage() if task is w.task else " before it started"
        if task.force:
            error = self.cancelled_error(task, " (its worker was killed)")
        elif w.oom is not None:
            error = self.system_error(OutOfMemoryError(
                f"task {task.spec.name} was killed for using too much memory{stage}: "
                f"{describe_oom(w)}; give it a larger memory= option or "
                f"worker_memory_limit=, or yield its results one by one (a generator)"
                f"{self.scheduler.no_retry_reason(task)}"))
        else:
            error = self.system_error(WorkerCrashedError(
                f"the worker (pid {w.pid}) running task {task.spec.name} died{stage}: it "
                f"{w.describe_exit()}{self.scheduler.no_retry_reason(task)}"))
        self.scheduler.unassign(task)
        if not task.force and self.scheduler.should_retry(task):
            self._retry(task)
        else:
            self.fail(task, error)

    def _reclaim_slot(self, slot: int, pid: int) -> None:
        """Drop a dead process's pins and objects it wrote but never reported."""
        try:
            self.store.release_slot(slot, pid=pid)  # no-op if the slot was reused since
        except Exception:
            return
        known = self.objects.entries
        for oid in self.store.list_ids():
            entry = known.get(oid)
            if entry is not None and entry.ready:
                continue  # reported before the death: the node owns it now
            # never reported (a return sealed just before the kill, an item of an attempt
            # that is over): nobody can ever read it, and a retry must be free to write it
            info = self.store.info(oid)
            if info is not None and info.get("creator_slot") == slot:
                try:
                    self.store.delete(oid)
                except KeyError:
                    pass

    # == cancellation ===============================================================================
    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        with self.lock:
            task = self.tasks.get(ids.task_of(oid))
            if force and task is not None and task.is_actor_call:
                raise ValueError(
                    f"pygen.cancel(force=True) cannot stop the actor call {task.spec.name}: "
                    f"it would kill the actor.  Cancel it without force (TaskCancelledError "
                    f"is raised in it), or end the actor with pygen.kill(handle)")
            self.cancel_locked(ids.task_of(oid), force, recursive)
        self.run_callbacks()

    def cancel_locked(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.state == DONE or task.is_actor_creation:
            return
        if recursive:
            for child in list(task.children):
                self.cancel_locked(child, force, recursive)
        task.cancelled = True
        w = task.worker
        # where the cancel found it, for the error (a running task's status page)
        if task.state in (WAITING, QUEUED) or w is None:
            task.cancel_stage = " before it started"
        elif not task.is_actor_call:
            task.cancel_stage = w.stage() if w.task is task else " before it started"
        elif w.actor is not None and w.actor.model == protocol.MODEL_SYNC:
            # a sync actor runs its calls one by one, in the order they were sent
            running = next(iter(w.actor.in_flight.values()), None)
            task.cancel_stage = w.stage() if running is task else " before it started"
        error = self.cancelled_error(task)
        if task.state in (WAITING, QUEUED):
            self.fail(task, error)
            return
        if w is None:
            return
        force = force and not task.is_actor_call  # from a worker: cancelled without force
        if force and w.task is task:
            task.force = True
            workers.kill(w.pid)  # its death is reported as the cancellation, never retried
            return
        self.outbox.send(w, protocol.Cancel(task_id, False))
        self.outbox.flush()
        if not task.is_actor_call and w.task is not task:
            # queued behind another task on that worker: it ends now (the worker drops it;
            # if it has just started it, the signal below stops it too)
            self.fail(task, error)
        if not force:
            self.outbox.poke(w)  # interrupts time.sleep and other waits

    # == streams ======================================================================================
    def stream_take(self, task_id: bytes, proc: int) -> "tuple[bool, Optional[bytes]]":
        return self.streams.take(task_id, proc)

    def stream_close(self, task_id: bytes) -> None:
        with self.lock:
            self.streams.close(task_id)
        self.run_callbacks()

    def ack_stream(self, stream: StreamState) -> None:
        """A backpressured generator's item was taken: its worker may go on."""
        task = self.tasks.get(stream.task_id)
        if task is not None and task.worker is not None:
            self.outbox.send(task.worker, protocol.Ack(stream.task_id, stream.handed_out))

    def backpressure_changed(self, stream: StreamState) -> None:
        """A backpressured stream's untaken items changed: lend or take back its CPUs.

        A generator paused at a yield by ``generator_backpressure`` waits for a consumer,
        as a task blocked in ``get`` does, so it lends its CPUs meanwhile: with two CPUs,
        two paused producers whose consumers are tasks waiting for a CPU would otherwise
        deadlock.  The node's view is exact enough: when ``pending >= backpressure`` here,
        the worker (which sees at most as many Acks) is paused or pauses at its next
        check; the CPUs are taken back when an item is taken, i.e. when the Ack that
        resumes it is sent, before it runs again.
        """
        task = self.tasks.get(stream.task_id)
        w = task.worker if task is not None else None
        running = w is not None and (task.is_actor_call or w.task is task)
        paused = (running and stream.paused_by_backpressure() and not stream.closed
                  and not stream.abandoned and not stream.close_sent)
        lent = stream.lent_on
        if lent is not None and (not paused or lent is not w):
            stream.lent_on = None
            if lent is w:  # still running it: take the CPUs back (else unassign settled it)
                if task.is_actor_call:
                    self.actors.call_unblocked(task)
                else:
                    self.scheduler.unblock(w)
        if paused and stream.lent_on is None:
            stream.lent_on = w
            if task.is_actor_call:
                self.actors.call_blocked(task)
            else:
                if self.scheduler.block(w):
                    self.reclaim(w)
                self.dispatch()

    def stop_stream_task(self, stream: StreamState) -> None:
        """Nobody can consume the stream any more: stop its task at its next yield."""
        task = self.tasks.get(stream.task_id)
        if task is not None and task.worker is not None and not stream.close_sent:
            stream.close_sent = True
            w = task.worker
            self.outbox.send(w, protocol.Close(stream.task_id))
            if w.task is task or task.is_actor_call:
                # the generator's code does not read the socket: the signal handler takes
                # the Close at once, and the generator stops at its very next yield
                self.outbox.poke(w)
        elif task is not None and task.state in (WAITING, QUEUED):
            task.cancelled = True
            self.fail(task, self.system_error(TaskCancelledError(
                f"generator of task {task.spec.name} was closed before it started")))


def describe_oom(w: workers.WorkerHandle) -> str:
    limit, peak = w.oom if w.oom is not None else (0, 0)
    return (f"its worker (pid {w.pid}) reached {_mib(peak)} of private memory, over its "
            f"limit of {_mib(limit)}")


def _mib(nbytes: int) -> str:
    """Bytes for a message: MiB to the decimal needed to tell close sizes apart."""
    return f"{nbytes / 2**20:.2f} MiB ({nbytes:,} bytes)"


def _none_payload() -> tuple:
    sv = serialization.serialize(None)
    return (sv.flags, sv.to_bytes(), sv.total_size)


_NONE_PAYLOAD = _none_payload()  # a streaming generator's completion value when it returns nothing


def _encode_dynamic(items: List[bytes]) -> serialization.SerializedValue:
    from ..generators import DynamicObjectRefGenerator

    return serialization.serialize(DynamicObjectRefGenerator._from_ids(items))


def _error_text(payload: tuple) -> str:
    try:
        return str(serialization.deserialize(payload[1])[1]).splitlines()[0]
    except Exception:
        return "an error that could not be decoded"



def _internal_error(what: str) -> None:
    """A bug in pygen, with the traceback being handled, through the "pygen" logger."""
    logging.getLogger("pygen").error("pygen internal error %s", what, exc_info=True)


__all__ = ["Node", "RUNNING"]
