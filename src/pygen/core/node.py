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
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set

from .. import ids, serialization
from ..exceptions import (InconsistentRetryError, ObjectLostError, ObjectStoreFullError,
                          OutOfMemoryError, PygenError, TaskCancelledError, WorkerCrashedError)
from ..task_spec import TaskSpec
from . import output, protocol, workers
from .objects import DRIVER, ObjectDirectory, ObjEntry
from .reactor import Reactor
from .spill import SpillFile
from .streams import StreamState
from .transport import ConnectionClosed

WAITING, QUEUED, RUNNING, DONE = "waiting", "queued", "running", "done"

# Extra idle workers (beyond num_cpus) started while others were blocked are stopped after
# this long without work.
IDLE_WORKER_TIMEOUT = 10.0
# How often the memory monitor reads RssAnon of workers that have a limit.  A worker
# allocating at ~1 GB/s overshoots its limit by at most ~50 MB before it is killed.
MEMORY_POLL_INTERVAL = 0.05
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
# Workers dying before they are up, in a row, after which queued tasks fail instead of
# being retried on yet another new worker (the environment cannot start one).
MAX_FAILED_STARTS = 3
# How often the I/O thread releases what the driver's dropped refs kept: memory comes
# back within this delay, and no ref drop ever costs a thread wake-up.
HOUSEKEEPING_INTERVAL = 0.02


class Task:
    __slots__ = ("spec", "owner", "parent", "children", "state", "attempt", "worker",
                 "pending_deps", "kept", "cancelled", "force", "stream", "reported",
                 "submitted", "ended_as", "error")

    def __init__(self, spec: TaskSpec, owner: int, parent: Optional[bytes]) -> None:
        self.spec = spec
        self.owner = owner
        self.parent = parent
        self.children: Set[bytes] = set()
        self.state = WAITING
        self.attempt = 0
        self.worker: Optional[workers.WorkerHandle] = None
        self.pending_deps = 0
        self.kept: List[bytes] = []       # ids this task keeps alive until it is done
        self.cancelled = False
        self.force = False
        self.stream: Optional[StreamState] = None
        self.reported = 0                 # num_returns=k: returns already reported
        self.submitted = time.time()
        self.ended_as = ""
        self.error: Optional[str] = None


class Node:
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
            _kill(w.pid)
        deadline = time.monotonic() + 2.0
        for w in list(self.workers.values()):
            while not _reaped(w) and time.monotonic() < deadline:
                time.sleep(0.002)
        self.reactor.stop()
        with self.lock:
            for w in list(self.workers.values()):
                if not _reaped(w):
                    _kill(w.pid)
                    _wait_pid(w.pid)
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
            self._restore(entry)
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

    # == spilling ==================================================================================
    def make_room(self, nbytes: int) -> bool:
        """Spill sealed objects nobody reads until a block of ``nbytes`` may fit.

        False when that is impossible: nothing spillable is left, or ``nbytes`` is larger
        than the whole arena (then nothing is spilled for nothing).
        """
        with self.lock:
            if nbytes > self.store.capacity:
                return False
            stats = self.store.stats()
            if stats["largest_free"] >= nbytes:
                return True
            candidates = sorted((e for e in self.objects.entries.values()
                                 if e.in_store and e.ready and e.spilled is None),
                                key=lambda e: e.last_access)
            for entry in candidates:
                info = self.store.info(entry.oid)
                if info is None or info["pinned_slots"] or info["state"] != "sealed":
                    continue
                buf = self.store.get(entry.oid, timeout=0.0)
                if buf is None:
                    continue
                try:
                    location = self.spill.write(buf)
                finally:
                    buf.release()
                if not self.store.delete(entry.oid):  # someone pinned it meanwhile
                    self.spill.release(location)
                    continue
                entry.in_store = False
                entry.spilled = location
                if self.store.stats()["largest_free"] >= nbytes:
                    return True
            return self.store.stats()["largest_free"] >= nbytes

    def _restore(self, entry: ObjEntry) -> None:
        location = entry.spilled
        assert location is not None
        size = location[1] + location[2]
        for _ in range(2):
            try:
                writer = self.store.create_object(entry.oid, location[2], location[1])
                break
            except ObjectStoreFullError:
                self.make_room(size)
        else:
            writer = self.store.create_object(entry.oid, location[2], location[1])
        try:
            self.spill.read_into(location, writer)
        except BaseException:
            self.store.abort(entry.oid)
            raise
        del writer
        self.store.seal(entry.oid)
        self.spill.release(location)
        entry.spilled = None
        entry.in_store = True

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
                                               spec.returns_kind == protocol.RETURNS_DYNAMIC)
            self.streams[spec.task_id] = stream
        if spec.returns_kind == protocol.RETURNS_STREAMING:
            # the generator's handle and the completion object it keeps alive
            handle = self.objects.create(ids.stream_id(spec.task_id), holder=owner)
            handle.ready = True
            completion = ids.completion_id(spec.task_id)
            self.objects.create(completion).internal += 1
            handle.contains.append(completion)
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
        limit = task.spec.max_retries
        return not task.cancelled and not self.closed and (limit < 0 or task.attempt < limit)

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
            _kill(w.pid)  # its death is reported as the cancellation, never retried
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
            self.objects.release_internal([oid])
            task = self.tasks.get(task_id)
            if stream.backpressure and task is not None and task.worker is not None:
                self._send(task.worker, (protocol.ACK, task_id, stream.handed_out))
            return True, oid
        if stream.ended or stream.closed:
            return True, None
        return False, None

    def stream_close(self, task_id: bytes) -> None:
        with self.lock:
            stream = self.streams.get(task_id)
            if stream is None or stream.closed:
                return
            stream.closed = True
            self._release_unclaimed(stream)
            self._stop_stream_task(stream)
            self._wake_stream(stream)
        self._run_callbacks()

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

    # == requests from workers ================================================================
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
            self._reply(w, req, protocol.OK if oid is not None else protocol.END_OF_STREAM, oid)
            return True

        key = ids.stream_id(task_id)
        self._when_ready(w, [key], 0 if self.is_ready(key) else 1, answer, timeout,
                         lambda: self._reply(w, req, protocol.TIMEOUT, None))

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
        task_id = msg[1]
        stream = self.streams.get(task_id)
        if stream is not None and not stream.closed:
            stream.closed = True
            self._release_unclaimed(stream)
            self._stop_stream_task(stream)
            self._wake_stream(stream)

    def on_hello(self, w: workers.WorkerHandle, msg: tuple) -> None:
        w.slot = msg[3]
        self._failed_starts = 0
        if w.state == workers.STARTING:
            self.starting -= 1
            w.state = workers.IDLE
            w.idle_since = time.monotonic()
            self.idle.append(w)
        self._dispatch()

    # == worker events (reactor handlers) ========================================================
    def _spawn_worker(self) -> None:
        """Runs on the I/O thread: PR_SET_PDEATHSIG ties each worker to that thread."""
        with self.lock:
            if self.closed:
                self.starting -= 1
                return
            wid = next(self._worker_ids)
            try:
                w = workers.spawn(wid, self.store.fd, self.log_to_driver)
            except OSError as exc:
                self.starting -= 1
                self._fail_queued(self._system_error(WorkerCrashedError(
                    f"could not start a worker process: {exc}")))
                return
            self.workers[wid] = w
            self.reactor.add(w.conn.fd, lambda ev, w=w: self._on_socket(w, ev))
            self.reactor.add(w.pidfd, lambda ev, w=w: self._on_exit(w))
            for i, fd in enumerate(w.out_fds):
                fwd = self._forwarders[fd] = output.LineForwarder(
                    w.pid, "worker", _stderr if i else _stdout)
                self.reactor.add(fd, lambda ev, fd=fd, fwd=fwd: self._on_output(fd, fwd))
        self._run_callbacks()

    def _fail_queued(self, error: tuple) -> None:
        for task in list(self.ready):
            self._fail(task, error)

    def _on_socket(self, w: workers.WorkerHandle, events: int) -> None:
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
                    self._handle(w, msg)
            self._run_callbacks()
        with self.lock:
            if conn.pending_output:
                conn.flush()
            if not eof:
                self.reactor.rearm(conn.fd, write=conn.pending_output)

    def _handle(self, w: workers.WorkerHandle, msg: tuple) -> None:
        handler = self._handlers.get(msg[0])
        if handler is None:
            _internal_error(f"unknown message kind {msg[0]} from worker pid {w.pid}")
            return
        try:
            handler(self, w, msg)
        except Exception:
            # a bug in pygen: say so loudly, keep serving the other workers
            _internal_error(f"while handling message kind {msg[0]} from worker pid {w.pid}")

    def _on_output(self, fd: int, fwd: output.LineForwarder) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            self.reactor.rearm(fd)
            return
        except OSError:
            data = b""
        if data:
            fwd.feed(data)
            self.reactor.rearm(fd)
        else:
            fwd.close()
            self.reactor.remove(fd)

    def _drain_output(self, w: workers.WorkerHandle) -> None:
        """Forward whatever a dead worker left in its pipes."""
        if w.fds_closed:
            return
        for fd in w.out_fds:
            fwd = self._forwarders.get(fd)
            if fwd is None:
                continue
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                fwd.feed(data)
            fwd.close()

    def _close_worker_fds(self, w: workers.WorkerHandle) -> None:
        if w.fds_closed:
            return
        w.fds_closed = True
        for fd in [w.conn.fd, w.pidfd] + list(w.out_fds):
            self.reactor.remove(fd)
        for fd in w.out_fds:
            self._forwarders.pop(fd, None)
            try:
                os.close(fd)
            except OSError:
                pass
        w.out_fds = []
        w.conn.close()
        try:
            os.close(w.pidfd)
        except OSError:
            pass

    def _on_exit(self, w: workers.WorkerHandle) -> None:
        """The worker process ended: take its last messages, then account for its death."""
        with w.conn.read_lock:
            try:
                while not w.conn.closed:
                    msgs = w.conn.read_messages()
                    if not msgs:
                        break
                    with self.lock:
                        for msg in msgs:
                            self._handle(w, msg)
            except (ConnectionClosed, OSError):
                pass
        _, status = _wait_pid(w.pid)
        w.exit_status = status
        self._drain_output(w)
        with self.lock:
            self._worker_died(w)
            self._close_worker_fds(w)
        self._run_callbacks()

    def _worker_died(self, w: workers.WorkerHandle) -> None:
        if w.state == workers.DEAD:
            return
        was_starting = w.state == workers.STARTING
        w.state = workers.DEAD
        self.workers.pop(w.id, None)
        if was_starting:
            self.starting -= 1
        if w.slot is not None:
            self._reclaim_slot(w.slot, w.pid)
        self.objects.drop_process(w.id)
        task = w.task
        for waiting in reversed(list(w.tasks)[1:]):  # never started: just run them elsewhere
            self._unassign(waiting)
            waiting.state = QUEUED
            self.ready.appendleft(waiting)
        if task is not None:
            if task.force:
                error = self._cancelled_error(task, " (its worker was killed)")
            elif w.oom is not None:
                limit, peak = w.oom
                error = self._system_error(OutOfMemoryError(
                    f"task {task.spec.name} was killed for using too much memory: its worker "
                    f"(pid {w.pid}) reached {_mib(peak)} of private memory, over its limit of "
                    f"{_mib(limit)}; give it a larger memory= option or worker_memory_limit=, "
                    f"or yield its results one by one (a generator)"))
            else:
                error = self._system_error(WorkerCrashedError(
                    f"the worker (pid {w.pid}) running task {task.spec.name} died: it "
                    f"{w.describe_exit()}"))
            self._unassign(task)
            if not task.force and self._should_retry(task):
                self._retry(task)
            else:
                self._fail(task, error)
        if was_starting:
            self._failed_starts += 1
        if self.closed:
            pass
        elif self._failed_starts >= MAX_FAILED_STARTS:
            # workers cannot start here (a broken environment): say so, do not loop
            self._fail_queued(self._system_error(WorkerCrashedError(
                f"{self._failed_starts} new worker processes died while starting, the last "
                f"(pid {w.pid}) {w.describe_exit()}; its output above says why")))
        else:
            alive = sum(1 for x in self.workers.values()
                        if x.state != workers.DEAD and x.actor is None)
            if alive + self.starting < self.pool_size or (self.ready and not self.starting):
                self._spawn_soon()  # the worker is replaced
        self._dispatch()

    def _reclaim_slot(self, slot: int, pid: int) -> None:
        """Drop a dead process's pins and objects it wrote but never reported."""
        try:
            self.store.release_slot(slot, pid=pid)  # no-op if the slot was reused since
        except Exception:
            return
        known = self.objects.entries
        for oid in self.store.list_ids():
            if oid in known:
                continue
            info = self.store.info(oid)
            if info is not None and info.get("creator_slot") == slot:
                try:
                    self.store.delete(oid)
                except KeyError:
                    pass

    # == periodic work (I/O thread) ============================================================
    def _reap_idle_workers(self) -> None:
        with self.lock:
            if self.closed:
                return
            now = time.monotonic()
            plain = [w for w in self.workers.values() if w.actor is None and w.state != workers.DEAD]
            extra = len(plain) - self.pool_size
            for w in sorted(plain, key=lambda x: x.idle_since):
                if extra <= 0:
                    break
                if w.state == workers.IDLE and now - w.idle_since > IDLE_WORKER_TIMEOUT:
                    w.state = workers.EXITING
                    self._send(w, (protocol.EXIT,))
                    extra -= 1
            self._flush()
        self.reactor.call_later(IDLE_WORKER_TIMEOUT / 2, self._reap_idle_workers)

    def _start_memory_monitor(self) -> None:
        if not self._monitoring:
            self._monitoring = True
            self.reactor.call_later(MEMORY_POLL_INTERVAL, self._check_memory)

    def _check_memory(self) -> None:
        with self.lock:
            watched = False
            for w in self.workers.values():
                task = w.task
                if task is None or w.state == workers.DEAD or w.oom is not None:
                    continue
                limit = task.spec.memory or self.worker_memory_limit
                if limit is None:
                    continue
                watched = True
                rss = w.rss_anon()
                w.peak_rss = max(w.peak_rss, rss)
                if rss > limit:
                    w.oom = (limit, rss)
                    _kill(w.pid)
            self._monitoring = watched
        if watched:
            self.reactor.call_later(MEMORY_POLL_INTERVAL, self._check_memory)

    # == introspection ==================================================================================
    def _describe_task(self, task: Task) -> dict:
        return {
            "task_id": task.spec.task_id.hex(),
            "name": task.spec.name,
            "state": task.ended_as or task.state,
            "attempt": task.attempt,
            "worker_pid": task.worker.pid if task.worker is not None else None,
            "cancelled": task.cancelled,
            "error": task.error,
            "num_returns": (task.spec.num_returns
                            if task.spec.returns_kind == protocol.RETURNS_STATIC else
                            "dynamic" if task.spec.returns_kind == protocol.RETURNS_DYNAMIC
                            else "streaming"),
        }

    def list_tasks(self) -> List[dict]:
        with self.lock:
            return ([self._describe_task(t) for t, _ in self.finished] +
                    [self._describe_task(t) for t in self.tasks.values()])

    def list_objects(self) -> List[dict]:
        with self.lock:
            out = []
            for entry in self.objects.entries.values():
                if ids.kind_of(entry.oid) == ids.KIND_STREAM:
                    continue
                desc = self.objects.describe(entry)
                desc["driver_refs"] = self.driver_refs.get(entry.oid, 0)
                info = self.store.info(entry.oid) if entry.in_store else None
                desc["zero_copy_views"] = len(info["pinned_slots"]) if info else 0
                out.append(desc)
            # No ref keeps these any more, but a zero-copy view still pins the memory.
            for oid in self.store.list_ids():
                if oid in self.objects.entries:
                    continue
                info = self.store.info(oid)
                if info is None or not info["delete_pending"]:
                    continue
                out.append({"id": oid.hex(), "kind": "released", "state": "released",
                            "size": info["data_size"] + info["meta_size"], "location": "store",
                            "is_error": False, "holders": [], "internal_refs": 0,
                            "spilled": False, "driver_refs": 0,
                            "zero_copy_views": len(info["pinned_slots"])})
            return out

    def store_stats(self) -> dict:
        with self.lock:
            stats = dict(self.store.stats())
            spilled = [e for e in self.objects.entries.values() if e.spilled is not None]
            stats["spilled_objects"] = len(spilled)
            stats["spilled_bytes"] = sum(e.spilled[1] + e.spilled[2] for e in spilled)
            stats["tracked_objects"] = len([e for e in self.objects.entries.values()
                                            if ids.kind_of(e.oid) != ids.KIND_STREAM])
            return stats

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

_NONE_PAYLOAD: tuple = ()


def _none_payload() -> tuple:
    sv = serialization.serialize(None)
    return (sv.flags, sv.to_bytes(), sv.total_size)


_NONE_PAYLOAD = _none_payload()


class _PendingRequest:
    """A worker's GET/WAIT/NEXT that could not be answered at once.

    While it waits, the worker's CPUs are lent to other tasks (``Node._block``): a task
    that waits for another task never deadlocks, even with ``num_cpus=1``.
    """

    def __init__(self, node: Node, w: workers.WorkerHandle, keys: List[bytes],
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


def _encode_dynamic(items: List[bytes]) -> serialization.SerializedValue:
    from ..generators import DynamicObjectRefGenerator

    return serialization.serialize(DynamicObjectRefGenerator._from_ids(items))


def _stdout():
    import sys
    return sys.stdout


def _stderr():
    import sys
    return sys.stderr


def _mib(nbytes: int) -> str:
    """Bytes for a message: MiB to the decimal needed to tell close sizes apart."""
    return f"{nbytes / 2**20:.2f} MiB ({nbytes:,} bytes)"


def _error_text(payload: tuple) -> str:
    try:
        return str(serialization.deserialize(payload[1])[1]).splitlines()[0]
    except Exception:
        return "an error that could not be decoded"


def _warn(message: str) -> None:
    import sys

    try:
        print(f"pygen: {message}", file=sys.stderr, flush=True)
    except (ValueError, OSError):
        pass


def _internal_error(what: str) -> None:
    import sys
    import traceback

    print(f"pygen internal error {what}:\n{traceback.format_exc()}", file=sys.__stderr__)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_pid(pid: int) -> "tuple[int, Optional[int]]":
    try:
        return os.waitpid(pid, 0)
    except ChildProcessError:
        return pid, None


def _reaped(w: workers.WorkerHandle) -> bool:
    """Whether ``w`` has exited (and reap it if so)."""
    if w.exit_status is not None:
        return True
    try:
        pid, status = os.waitpid(w.pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if pid == 0:
        return False
    w.exit_status = status
    return True
