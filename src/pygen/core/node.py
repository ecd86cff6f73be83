"""The node: owns the store, the workers, the task table and the object directory.

It lives inside the driver process (its state plus one I/O thread), so a task submitted
by the driver goes straight to a worker's socket: one round trip per task, the least a
task can cost (a separate node process would make it two; see docs/architecture.md).

    driver thread --submit--> Node --EXEC--> worker --RESULT/ITEM/END--> Node --> waiters
                                ^                |
                                +--SUBMIT/GET/PUT/NEXT/REFS (nested calls from workers)

Every piece of state is guarded by ``self.lock``.  Message handlers and API calls take
it, change state, and queue callbacks (waking waiters) that run after it is released.

Task lifecycle:  WAITING (for arguments) -> QUEUED -> RUNNING -> DONE
  * retries are decided here and only here (``_should_retry``): system failures
    always count, application errors when the worker says they match
    ``retry_exceptions``;
  * every end of a task (result, error, cancel, worker death, shutdown) makes every
    output ready, so no caller and no stream consumer ever waits forever.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set

from .. import ids, serialization
from ..exceptions import InconsistentRetryError, ObjectLostError, PygenError, TaskCancelledError
from ..task_spec import TaskSpec
from . import output, protocol, workers
from .introspection import Introspection
from .objects import DRIVER, ObjectDirectory, ObjEntry
from .reactor import Reactor
from .requests import WorkerRequests
from .spill import SpillFile
from .spilling import Spiller
from .streams import StreamState
from .tasks import DONE, QUEUED, RUNNING, WAITING, Task
from .worker_events import IDLE_WORKER_TIMEOUT, WorkerEvents

# Upper bound on worker processes for plain tasks (blocked workers lend their CPUs out).
MAX_EXTRA_WORKERS = 64
# Pipelining: a function whose recent runs took less than PIPELINE_MAX_SECONDS (after
# PIPELINE_MIN_RUNS runs) may be queued on a busy worker, up to PIPELINE_DEPTH tasks per
# worker.  A round trip costs 20-300 us here, so for short tasks the worker would
# otherwise idle between tasks; long tasks are never queued behind one another.
PIPELINE_DEPTH = 8
PIPELINE_MIN_RUNS = 3
PIPELINE_MAX_SECONDS = 0.002
# A task queued on a worker whose running task has run this long is taken back when a CPU
# is free (housekeeping checks every HOUSEKEEPING_INTERVAL): a function that was short
# so far and then runs long does not hold up what was queued behind it.
PIPELINE_STUCK_SECONDS = 0.02
FINISHED_TASK_HISTORY = 1000
# How often the I/O thread releases what the driver's dropped refs kept: memory comes
# back within this delay, and no ref drop ever costs a thread wake-up.
HOUSEKEEPING_INTERVAL = 0.02


class Node(WorkerEvents, WorkerRequests, Introspection):
    """The scheduler and object directory; see the module docstring.

    Its other parts live beside it: ``worker_events`` (worker processes), ``requests``
    (what workers ask), ``introspection`` (``pygen.state``), ``spilling``.
    """

    def __init__(self, num_cpus: float, store: Any, *, worker_memory_limit: Optional[int],
                 spill_dir: Optional[str], log_to_driver: bool) -> None:
        self.lock = threading.RLock()
        self.num_cpus = num_cpus
        self.free_cpus = num_cpus
        self.store = store
        self.worker_memory_limit = worker_memory_limit
        self.log_to_driver = log_to_driver
        self.objects = ObjectDirectory(self._free_storage)
        self.tasks: Dict[bytes, Task] = {}
        self.finished: Deque[tuple] = collections.deque(maxlen=FINISHED_TASK_HISTORY)
        self.ready: Deque[Task] = collections.deque()
        self.dependents: Dict[bytes, List[Task]] = {}
        self.streams: Dict[bytes, StreamState] = {}
        self.functions: Dict[bytes, bytes] = {}
        self.workers: Dict[int, workers.WorkerHandle] = {}
        self.idle: Deque[workers.WorkerHandle] = collections.deque()
        self.starting = 0
        self.pool_size = max(1, math.ceil(num_cpus))
        self._worker_ids = iter(range(1, 1 << 30))
        self.spill = SpillFile(spill_dir)
        self.spiller = Spiller(store, self.objects, self.spill)
        self.reactor = Reactor()
        self.closed = False
        self._forwarders: Dict[int, output.LineForwarder] = {}
        self._monitoring = False
        self._dropped_refs: Deque[bytes] = collections.deque()  # the driver's lost refs
        self._dirty: Set[workers.WorkerHandle] = set()  # workers with queued messages
        self.fn_stats: Dict[bytes, list] = {}  # fn_id -> [runs, mean seconds] (pipelining)
        self._failed_starts = 0  # workers that died before HELLO, in a row
        self.driver_refs: Dict[bytes, int] = {}
        self._refs_lock = threading.Lock()  # driver_refs only: ref churn stays off self.lock

    # == start and stop ================================================================
    def start(self) -> None:
        self.reactor.start("pygen-node")
        for _ in range(self.pool_size):
            self._spawn_soon()
        self.reactor.call_later(IDLE_WORKER_TIMEOUT, self._reap_idle_workers)
        self.reactor.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    def shutdown(self) -> None:
        """Stop every worker, fail what is left, release the store.  Idempotent.

        Idle workers get EXIT and flush their output; busy ones are killed (their tasks
        are failed: nothing waits forever).  Whatever they printed is still forwarded.
        """
        with self.lock:
            if self.closed:
                return
            self.closed = True
            busy = [w for w in self.workers.values() if w.task is not None or w.actor is not None]
            for w in self.workers.values():
                try:
                    self._send(w, (protocol.EXIT,))
                    w.conn.flush()
                except OSError:
                    pass
            error = self._system_error(PygenError("pygen was shut down"))
            for task in list(self.tasks.values()):
                self._fail(task, error)
        self._run_callbacks()
        for w in busy:
            workers.kill(w.pid)
        deadline = time.monotonic() + 2.0
        for w in list(self.workers.values()):
            while not w.try_reap() and time.monotonic() < deadline:
                time.sleep(0.002)
        self.reactor.stop()
        with self.lock:
            for w in list(self.workers.values()):
                if not w.try_reap():
                    workers.kill(w.pid)
                    workers.wait_pid(w.pid)
                self._drain_output(w)
                self._close_worker_fds(w)
            self.workers.clear()
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

    def _housekeeping(self) -> None:
        if self.closed:
            return
        self.drain_dropped_refs()
        with self.lock:
            self._unstick_pipelines()
        self._run_callbacks()
        self.reactor.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    def _unstick_pipelines(self) -> None:
        """Take back tasks queued behind one that turned out long, if a CPU could run them."""
        if self.free_cpus < 1e-9 and not self.idle:
            return
        now = time.monotonic()
        for w in self.workers.values():
            if (len(w.tasks) > 1 and not w.reclaiming and not w.blocked
                    and now - w.running_since > PIPELINE_STUCK_SECONDS):
                self._reclaim(w)

    def _reclaim(self, w: workers.WorkerHandle) -> None:
        """Ask ``w`` for the tasks queued behind its running one (answer: RECLAIMED).

        The worker is busy in a task's code, which does not read the socket: the signal
        makes its handler read the RECLAIM (as for a cancel).
        """
        w.reclaiming = True
        self._send(w, (protocol.RECLAIM, [t.spec.task_id for t in list(w.tasks)[1:]]))
        self._flush()
        try:
            os.kill(w.pid, signal.SIGUSR2)
        except ProcessLookupError:
            pass

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
        self._run_callbacks()

    # == callbacks run outside the lock ==================================================
    def _run_callbacks(self) -> None:
        """After a batch of work: write the queued messages, then run queued callbacks."""
        if self._dirty:
            with self.lock:
                self._flush()
        while True:
            if not self.objects.callbacks:  # a plain read: appends happen under the lock
                return
            with self.lock:
                callbacks = self.objects.take_callbacks()
            if not callbacks:
                return
            for cb in callbacks:
                cb()

    # == objects ===========================================================================
    def object_ready(self, oid: bytes, payload: tuple, contained: List[bytes] = ()) -> None:
        """Record ``oid``'s value; wake tasks and requests waiting on it.  Under the lock."""
        flags, inline, size = payload
        entry = self.objects.set_ready(oid, flags, inline, size, contained)
        if entry is None and inline is None:
            pass  # nobody wanted it: its storage was freed at once
        for task in self.dependents.pop(oid, ()):
            task.pending_deps -= 1
            if task.pending_deps == 0 and task.state == WAITING:
                self._enqueue(task)

    def put(self, oid: bytes, payload: tuple, contained: List[bytes], owner: int) -> None:
        with self.lock:
            self.objects.create(oid, holder=owner)
            self.object_ready(oid, payload, contained)
        self._run_callbacks()

    def _free_storage(self, entry: ObjEntry) -> None:
        if entry.in_store:
            try:
                self.store.delete(entry.oid)  # deferred by the store while a view pins it
            except KeyError:
                pass
        if entry.spilled is not None:
            self.spill.release(entry.spilled)
            entry.spilled = None
        if ids.kind_of(entry.oid) == ids.KIND_STREAM:
            self._abandon_stream(ids.task_of(entry.oid))

    def payload_for_reading(self, oid: bytes) -> tuple:
        """The payload of a ready object, restored into the store first if it was spilled."""
        entry = self.objects.get(oid)
        if entry is None:
            return self._lost(oid)
        if entry.spilled is not None:
            self.spiller.restore(entry)
        entry.last_access = time.monotonic()
        return entry.payload()

    def _lost(self, oid: bytes) -> tuple:
        return self._system_error(ObjectLostError(
            f"object {oid.hex()} does not exist: it was freed (no ObjectRef to it was left) "
            f"or it belongs to another pygen session"))

    def is_ready(self, oid: bytes) -> bool:
        if ids.kind_of(oid) == ids.KIND_STREAM:
            stream = self.streams.get(ids.task_of(oid))
            return stream is None or stream.has_next()
        entry = self.objects.get(oid)
        return entry is None or entry.ready

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        """``callback`` (run outside the lock) once ``oid`` (object or stream) is ready."""
        if ids.kind_of(oid) == ids.KIND_STREAM:
            stream = self.streams.get(ids.task_of(oid))
            if stream is not None and not stream.has_next():
                stream.waiters.append(callback)
                return
            self.objects.callbacks.append(callback)
        elif not self.objects.on_ready(oid, callback):
            self.objects.callbacks.append(callback)  # unknown: "ready" (get reports it lost)

    # == spilling =================================================================================
    def make_room(self, nbytes: int) -> bool:
        """Spill until a block of ``nbytes`` may fit in the arena (``Spiller.make_room``)."""
        with self.lock:
            return self.spiller.make_room(nbytes)

    # == submission ========================================================================
    def submit(self, spec: TaskSpec, owner: int, parent: Optional[bytes] = None) -> None:
        with self.lock:
            self._submit(spec, owner, parent)
        self._run_callbacks()

    def _submit(self, spec: TaskSpec, owner: int, parent: Optional[bytes]) -> None:
        task = Task(spec, owner, parent)
        self.tasks[spec.task_id] = task
        if parent is not None and parent in self.tasks:
            self.tasks[parent].children.add(spec.task_id)
        for oid in spec.return_ids():
            self.objects.create(oid, holder=owner)
        if spec.returns_kind != protocol.RETURNS_STATIC:
            stream = task.stream = StreamState(spec.task_id, spec.backpressure,
                                               spec.returns_kind == protocol.RETURNS_DYNAMIC,
                                               spec.name, parent)
            self.streams[spec.task_id] = stream
        if spec.returns_kind == protocol.RETURNS_STREAMING:
            # the generator's handle and the completion object it keeps alive
            handle = self.objects.create(ids.stream_id(spec.task_id), holder=owner)
            handle.ready = True
            completion = ids.completion_id(spec.task_id)
            self.objects.create(completion).internal += 1
            handle.add_contained(completion)
        task.kept = self.objects.add_internal(list(spec.deps) + list(spec.contained))
        args_oid = spec.args_oid()
        if args_oid is not None:  # kept by the task from before it is ready, or it is freed
            self.objects.create(args_oid).internal += 1
            task.kept.append(args_oid)
            self.object_ready(args_oid, spec.args)
        if spec.num_cpus > self.num_cpus:
            self._fail(task, self._system_error(ValueError(
                f"task {spec.name} needs num_cpus={spec.num_cpus:g} but pygen was started "
                f"with num_cpus={self.num_cpus:g}: it could never run")))
            return
        for dep in spec.deps:
            entry = self.objects.get(dep)
            if entry is None:
                self._fail(task, self._lost(dep))
                return
            if not entry.ready:
                task.pending_deps += 1
                self.dependents.setdefault(dep, []).append(task)
        if task.pending_deps == 0:
            self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        for dep in task.spec.deps:  # a failed argument fails the task with that error
            entry = self.objects.get(dep)
            if entry is None:
                self._fail(task, self._lost(dep))
                return
            if entry.flags & serialization.FLAG_ERROR:
                self._fail(task, entry.payload())
                return
        task.state = QUEUED
        self.ready.append(task)
        self._dispatch()

    # == dispatch ===============================================================================
    def _dispatch(self) -> None:
        while self.ready and not self.closed:
            task = self.ready[0]
            if task.state != QUEUED:
                self.ready.popleft()
                continue
            w = self._idle_worker()
            if w is not None:
                if task.spec.num_cpus > self.free_cpus + 1e-9:
                    self.idle.append(w)
                    return
                self.ready.popleft()
                self._assign(task, w)
                continue
            w = self._pipeline_target(task)
            if w is None:
                if task.spec.num_cpus <= self.free_cpus + 1e-9:
                    self._maybe_spawn()
                return
            self.ready.popleft()
            self._assign(task, w)

    def _is_short(self, fn_id: bytes) -> bool:
        stats = self.fn_stats.get(fn_id)
        return stats is not None and stats[0] >= PIPELINE_MIN_RUNS and stats[1] < PIPELINE_MAX_SECONDS

    def _pipeline_target(self, task: Task) -> Optional[workers.WorkerHandle]:
        """A busy worker to queue ``task`` behind, if it and what it runs are all short."""
        spec = task.spec
        if spec.returns_kind != protocol.RETURNS_STATIC or not self._is_short(spec.fn_id):
            return None
        best = None
        for w in self.workers.values():
            if (w.state != workers.BUSY or w.blocked or w.actor is not None
                    or len(w.tasks) >= PIPELINE_DEPTH
                    or not all(self._is_short(t.spec.fn_id) for t in w.tasks)):
                continue
            if best is None or len(w.tasks) < len(best.tasks):
                best = w
        return best

    def _record_run_time(self, fn_id: bytes, seconds: float) -> None:
        stats = self.fn_stats.get(fn_id)
        if stats is None:
            self.fn_stats[fn_id] = [1, seconds]
        else:
            stats[0] += 1
            stats[1] += (seconds - stats[1]) * 0.2  # recent runs weigh most

    def _idle_worker(self) -> Optional[workers.WorkerHandle]:
        while self.idle:
            w = self.idle.pop()  # the most recently idle: its caches and pages are warm
            if w.state == workers.IDLE:
                return w
        return None

    def _maybe_spawn(self) -> None:
        active = sum(1 for w in self.workers.values()
                     if w.state != workers.DEAD and not w.blocked and w.actor is None)
        if self.starting == 0 and active < self.pool_size + MAX_EXTRA_WORKERS:
            self._spawn_soon()

    def _spawn_soon(self) -> None:
        self.starting += 1
        self.reactor.call_soon(self._spawn_worker)

    def _assign(self, task: Task, w: workers.WorkerHandle) -> None:
        """Send ``task`` to ``w``: it runs now if ``w`` is idle, else right after the others."""
        spec = task.spec
        task.state = RUNNING
        task.worker = w
        w.tasks.append(task)
        if len(w.tasks) == 1:
            w.state = workers.BUSY
            w.running_since = time.monotonic()
            self.free_cpus -= spec.num_cpus
        blob = None
        if spec.fn_id not in w.sent_functions:
            blob = self.functions[spec.fn_id]
            w.sent_functions.add(spec.fn_id)
        deps = [(dep, self.payload_for_reading(dep)) for dep in spec.deps]
        if spec.returns_kind == protocol.RETURNS_STATIC:
            skip = task.reported
        elif spec.returns_kind == protocol.RETURNS_STREAMING:
            assert task.stream is not None
            skip = task.stream.handed_out
        else:
            skip = 0
        self._send(w, (protocol.EXEC, spec.task_id, task.attempt, spec.fn_id, blob, spec.name,
                       spec.args, deps, spec.returns_kind, spec.num_returns, skip,
                       spec.backpressure, spec.retry_exceptions))
        if spec.memory is not None or self.worker_memory_limit is not None:
            self._start_memory_monitor()

    def _send(self, w: workers.WorkerHandle, msg: tuple) -> None:
        """Queue ``msg`` for ``w``; it is written with the rest of the batch (``_flush``)."""
        w.conn.queue(msg)
        self._dirty.add(w)

    def _flush(self) -> None:
        """Write every queued message: one syscall per worker per batch."""
        while self._dirty:
            w = self._dirty.pop()
            try:
                if not w.conn.flush():  # the socket is full: the reactor finishes the job
                    self.reactor.rearm(w.conn.fd, write=True)
            except OSError:
                pass  # the worker is gone; its death is being handled

    # == results ================================================================================
    def _current(self, w: workers.WorkerHandle, task_id: bytes, attempt: int) -> Optional[Task]:
        """The task a report is about, if the report is from its current attempt."""
        task = self.tasks.get(task_id)
        if task is None or task.attempt != attempt or task.worker is not w:
            return None
        return task

    def _unassign(self, task: Task) -> None:
        """Take ``task`` off its worker; the worker's next task (if any) starts running."""
        w = task.worker
        task.worker = None
        if w is None:
            return
        was_running = bool(w.tasks) and w.tasks[0] is task
        try:
            w.tasks.remove(task)
        except ValueError:
            return
        if not was_running:
            return
        if not w.blocked:
            self.free_cpus += task.spec.num_cpus
        w.blocked = False
        if w.tasks:
            w.running_since = time.monotonic()
            self.free_cpus -= w.tasks[0].spec.num_cpus
        elif w.state == workers.BUSY:
            w.state = workers.IDLE
            w.idle_since = time.monotonic()
            self.idle.append(w)

    def on_reclaimed(self, w: workers.WorkerHandle, msg: tuple) -> None:
        """The worker gave back tasks it had not started: queue them again, first."""
        w.reclaiming = False
        for task_id in reversed(msg[1]):
            task = self.tasks.get(task_id)
            if task is not None and task.worker is w and task is not w.task:
                self._unassign(task)
                task.state = QUEUED
                self.ready.appendleft(task)
        self._dispatch()

    def _ending(self, w: workers.WorkerHandle, task_id: bytes, attempt: int,
                seconds: float) -> Optional[Task]:
        """The task a RESULT or END is about, now off its worker; None if there is nothing
        more to do (a report of an attempt that is over, or a cancelled task, now failed)."""
        task = self._current(w, task_id, attempt)
        if task is None:
            return None
        self._record_run_time(task.spec.fn_id, seconds)
        self._unassign(task)
        if task.cancelled:
            self._fail(task, self._cancelled_error(task))
            self._dispatch()
            return None
        return task

    def _cancelled_error(self, task: Task, how: str = "") -> tuple:
        return self._system_error(TaskCancelledError(f"task {task.spec.name} was cancelled{how}"))

    def on_result(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, task_id, attempt, returns, retryable, seconds = msg
        task = self._ending(w, task_id, attempt, seconds)
        if task is None:
            return
        if retryable and self._should_retry(task):
            self._retry(task)
        else:
            if returns and returns[0][1][0] & serialization.FLAG_ERROR:
                task.error = _error_text(returns[0][1])
            for index, payload, contained in returns:
                if task.reported <= index:
                    self.object_ready(ids.return_id(task_id, index), payload, contained)
            task.reported = task.spec.num_returns
            self._finish(task, "failed" if task.error else "finished")
        self._dispatch()

    def on_item(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, task_id, attempt, index, payload, contained = msg
        self._items(w, task_id, attempt, ((index, payload, contained),))

    def on_items(self, w: workers.WorkerHandle, msg: tuple) -> None:
        self._items(w, msg[1], msg[2], msg[3])

    def _items(self, w: workers.WorkerHandle, task_id: bytes, attempt: int,
               items: "tuple | list") -> None:
        task = self._current(w, task_id, attempt)
        if task is None:  # a report of an attempt that is over: drop what it stored
            for index, payload, _ in items:
                self._discard_item(ids.item_id(task_id, index, attempt), payload)
            return
        if task.spec.returns_kind == protocol.RETURNS_STATIC:
            for index, payload, contained in items:
                self.object_ready(ids.return_id(task_id, index), payload, contained)
                task.reported = max(task.reported, index + 1)
            return
        stream = task.stream
        assert stream is not None
        keep = not (stream.abandoned or stream.closed)
        for index, payload, contained in items:
            oid = ids.item_id(task_id, index, attempt)
            stream.items.append(oid)
            if keep:
                # kept by the stream (internal ref) until handed out
                self.objects.set_ready(oid, payload[0], payload[1], payload[2], contained, 1)
            else:
                self._discard_item(oid, payload)
        if keep:
            self._wake_stream(stream)
        else:
            stream.handed_out = len(stream.items)

    def _discard_item(self, oid: bytes, payload: tuple) -> None:
        if payload[1] is None:
            try:
                self.store.delete(oid)
            except KeyError:
                pass

    def on_end(self, w: workers.WorkerHandle, msg: tuple) -> None:
        _, task_id, attempt, count, payload, contained, retryable, end_kind, seconds = msg
        task = self._ending(w, task_id, attempt, seconds)
        if task is None:
            return
        if (end_kind == protocol.END_RAISED and retryable and self._should_retry(task)
              and not (task.stream is None and task.reported >= task.spec.num_returns)):
            self._retry(task)
        else:
            if end_kind == protocol.END_RAISED and payload is not None:
                task.error = _error_text(payload)
            self._end_outputs(task, count, payload, contained, end_kind)
            self._finish(task, "finished" if end_kind == protocol.END_RETURNED else
                         "failed" if end_kind == protocol.END_RAISED else "closed")
        self._dispatch()

    def _end_outputs(self, task: Task, count: int, payload: Optional[tuple],
                     contained: List[bytes], end_kind: int) -> None:
        """Make every output of a task that ended ready, so nobody waits forever."""
        spec = task.spec
        stream = task.stream
        if spec.returns_kind == protocol.RETURNS_STATIC:
            error = payload if payload is not None else self._system_error(
                PygenError(f"task {spec.name} ended without all of its returns"))
            if task.reported >= spec.num_returns and payload is not None and spec.num_returns:
                # it raised after producing every return: the values stand, the error is
                # kept on the task (pygen.state.list_tasks) and reported here
                task.error = _error_text(payload)
                _warn(f"task {spec.name} raised after it had yielded all its "
                      f"num_returns={spec.num_returns} values: {task.error}")
            for index in range(task.reported, spec.num_returns):
                self.object_ready(ids.return_id(spec.task_id, index), error)
            task.reported = spec.num_returns
            return
        assert stream is not None
        raised = end_kind in (protocol.END_RAISED, protocol.END_CANCELLED)
        if end_kind == protocol.END_RETURNED and count < stream.handed_out:
            raised = True
            payload = self._system_error(InconsistentRetryError(
                f"task {spec.name} was retried and its new attempt yielded {count} items, "
                f"fewer than the {stream.handed_out} already handed out"))
        items = list(stream.items)
        if raised and not stream.closed and not stream.abandoned:
            error_oid = ids.item_id(spec.task_id, max(count, len(stream.items)), task.attempt)
            self.objects.create(error_oid).internal += 1
            self.object_ready(error_oid, payload)
            stream.items.append(error_oid)
            items.append(error_oid)
        stream.ended = True
        if spec.returns_kind == protocol.RETURNS_DYNAMIC:
            value = _encode_dynamic(items)
            self.object_ready(ids.return_id(spec.task_id, 0),
                              (value.flags, value.to_bytes(), value.total_size), items)
            self.objects.release_internal(items)  # now kept by the generator value
            stream.handed_out = len(stream.items)
            stream.abandoned = True
        else:
            completion = payload if payload is not None else _NONE_PAYLOAD
            self.object_ready(ids.completion_id(spec.task_id), completion,
                              contained if not raised else [])
        self._wake_stream(stream)
        if stream.finished:
            self.streams.pop(spec.task_id, None)

    # == failures and retries ===================================================================
    def _should_retry(self, task: Task) -> bool:
        return (self._retries_left(task) and task.took_from is None
                and not task.cancelled and not self.closed)

    @staticmethod
    def _retries_left(task: Task) -> bool:
        limit = task.spec.max_retries
        return limit < 0 or task.attempt < limit

    @staticmethod
    def _no_retry_reason(task: Task) -> str:
        """Why a task with retries left is not retried, for its error message ("" if it is)."""
        if task.took_from is None or not Node._retries_left(task):
            return ""
        return (f"; not retried: it had taken items from the streaming generator of task "
                f"{task.took_from}, which it did not start, and a new attempt could not "
                f"see those items again")

    def _retry(self, task: Task) -> None:
        task.attempt += 1
        stream = task.stream
        if stream is not None:
            # items of the failed attempt that nobody took are replaced by the new attempt's
            stale = stream.unclaimed()
            del stream.items[stream.handed_out:]
            self.objects.release_internal(stale)
            stream.attempt = task.attempt
        task.state = QUEUED
        self.ready.append(task)

    def _fail(self, task: Task, error: tuple) -> None:
        """End ``task`` with ``error`` in every output it has not produced yet."""
        if task.state == DONE:
            return
        if task in self.ready:
            self.ready.remove(task)
        if task.worker is not None:
            self._unassign(task)
        count = len(task.stream.items) if task.stream is not None else task.reported
        task.error = task.error or _error_text(error)
        self._end_outputs(task, count, error, [], protocol.END_RAISED)
        self._finish(task, "cancelled" if task.cancelled else "failed")

    def _finish(self, task: Task, how: str) -> None:
        task.state = DONE
        task.ended_as = how
        self.tasks.pop(task.spec.task_id, None)
        for dep in task.spec.deps:
            waiting = self.dependents.get(dep)
            if waiting and task in waiting:
                waiting.remove(task)
        if task.parent is not None and task.parent in self.tasks:
            self.tasks[task.parent].children.discard(task.spec.task_id)
        kept, task.kept = task.kept, []
        self.objects.release_internal(kept)
        self.finished.append((task, task.attempt))  # described only when someone asks

    def _system_error(self, exc: BaseException) -> tuple:
        sv = serialization.serialize(exc, error=True)
        return (sv.flags, sv.to_bytes(), sv.total_size)

    # == cancellation ===============================================================================
    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        with self.lock:
            self._cancel(ids.task_of(oid), force, recursive)
        self._run_callbacks()

    def _cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.state == DONE:
            return
        if recursive:
            for child in list(task.children):
                self._cancel(child, force, recursive)
        task.cancelled = True
        error = self._cancelled_error(task)
        if task.state in (WAITING, QUEUED):
            self._fail(task, error)
            return
        w = task.worker
        if w is None:
            return
        if force and w.task is task:
            task.force = True
            workers.kill(w.pid)  # its death is reported as the cancellation, never retried
            return
        self._send(w, (protocol.CANCEL, task_id, False))
        self._flush()  # the message must be there before the signal arrives
        if w.task is not task:
            # queued behind another task on that worker: it ends now (the worker drops it;
            # if it has just started it, the signal below stops it too)
            self._fail(task, error)
        if not force:
            try:
                os.kill(w.pid, signal.SIGUSR2)  # interrupts time.sleep and other waits
            except ProcessLookupError:
                pass

    # == streams ======================================================================================
    def stream_take(self, task_id: bytes, proc: int) -> "tuple[bool, Optional[bytes]]":
        """(done, item): the next item handed to ``proc``, or (True, None) at the end."""
        stream = self.streams.get(task_id)
        if stream is None:
            return True, None
        oid = stream.take_next()
        if oid is not None:
            # the taker holds it from now on; its ObjectRef is made with _registered=True
            self.objects.add_holder(oid, proc)
            self.objects.release_one(oid)
            if stream.backpressure:
                task = self.tasks.get(task_id)
                if task is not None and task.worker is not None:
                    self._send(task.worker, (protocol.ACK, task_id, stream.handed_out))
            return True, oid
        if stream.ended or stream.closed:
            return True, None
        return False, None

    def stream_close(self, task_id: bytes) -> None:
        with self.lock:
            self._close_stream(task_id)
        self._run_callbacks()

    def _close_stream(self, task_id: bytes) -> None:
        """``gen.close()`` from any process: free what is left, stop the task, wake readers."""
        stream = self.streams.get(task_id)
        if stream is None or stream.closed:
            return
        stream.closed = True
        self._release_unclaimed(stream)
        self._stop_stream_task(stream)
        self._wake_stream(stream)

    def _abandon_stream(self, task_id: bytes) -> None:
        stream = self.streams.get(task_id)
        if stream is None:
            return
        stream.abandoned = True
        self._release_unclaimed(stream)
        if stream.backpressure:
            # a paused generator that nobody can consume any more is stopped, not resumed
            self._stop_stream_task(stream)
        if stream.finished:
            self.streams.pop(task_id, None)

    def _release_unclaimed(self, stream: StreamState) -> None:
        unclaimed = stream.unclaimed()
        stream.handed_out = len(stream.items)
        self.objects.release_internal(unclaimed)

    def _stop_stream_task(self, stream: StreamState) -> None:
        task = self.tasks.get(stream.task_id)
        if task is not None and task.worker is not None and not stream.close_sent:
            stream.close_sent = True
            w = task.worker
            self._send(w, (protocol.CLOSE, stream.task_id))
            if w.task is task:
                # the generator's code does not read the socket: the signal handler takes
                # the CLOSE at once, and the generator stops at its very next yield
                self._flush()
                try:
                    os.kill(w.pid, signal.SIGUSR2)
                except ProcessLookupError:
                    pass
        elif task is not None and task.state in (WAITING, QUEUED):
            task.cancelled = True
            self._fail(task, self._system_error(TaskCancelledError(
                f"generator of task {task.spec.name} was closed before it started")))

    def _wake_stream(self, stream: StreamState) -> None:
        if stream.waiters:
            self.objects.callbacks.extend(stream.waiters)
            stream.waiters = []


    _handlers: Dict[int, Callable[["Node", workers.WorkerHandle, tuple], None]] = {}


Node._handlers = {
    protocol.HELLO: Node.on_hello,
    protocol.RESULT: Node.on_result,
    protocol.ITEM: Node.on_item,
    protocol.ITEMS: Node.on_items,
    protocol.END: Node.on_end,
    protocol.SUBMIT: Node.on_submit,
    protocol.PUT: Node.on_put,
    protocol.GET: Node.on_get,
    protocol.WAIT: Node.on_wait,
    protocol.NEXT: Node.on_next,
    protocol.REFS: Node.on_refs,
    protocol.CANCEL_REQ: Node.on_cancel_req,
    protocol.CLOSE_REQ: Node.on_close_req,
    protocol.FN: Node.on_fn,
    protocol.ROOM: Node.on_room,
    protocol.SUBSCRIBE: Node.on_subscribe,
    protocol.RECLAIMED: Node.on_reclaimed,
}

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


def _warn(message: str) -> None:
    """A notice for the user, through the "pygen" logger (shown on stderr while the
    program configures no logging)."""
    logging.getLogger("pygen").warning("%s", message)
