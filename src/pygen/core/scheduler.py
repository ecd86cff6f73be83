"""The scheduler: which task runs where and when, and whether a failed one runs again.

    submit --> WAITING (top-level ref arguments not ready) --all ready--> QUEUED (ready)
           --> a worker: an idle one, or (short tasks) queued behind a busy one's task

It owns the queue of ready tasks, the tasks waiting for their arguments, the CPU slots
and what it knows of how long each function runs.  It does no I/O: the node sends what
it decides (``Node.exec_on``).  Actor calls take the same dependency tracking, but once
their arguments are ready they go to their actor's queue (``Node.deps_ready``).

CPU slots: a task takes ``num_cpus`` from ``free_cpus`` while it runs; a task blocked in
``get``/``wait``/``next`` lends them back (``block``), so nested submission never
deadlocks.  An actor holds its ``num_cpus`` for its whole life.

Pipelining: a function whose recent runs took less than PIPELINE_MAX_SECONDS (after
PIPELINE_MIN_RUNS runs) may be queued on a busy worker, up to PIPELINE_DEPTH tasks per
worker.  A round trip costs 20-300 us here, so for short tasks the worker would
otherwise idle between tasks; long tasks are never queued behind one another.  A task
queued behind one that has run PIPELINE_STUCK_SECONDS is taken back when a CPU is free
(``stuck_pipelines``): a function that was short so far and then runs long does not
hold up what was queued behind it.
"""
from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Deque, Dict, List, Optional

from . import protocol, workers
from .tasks import QUEUED, RUNNING, WAITING, Task

if TYPE_CHECKING:
    from .node import Node
    from .pool import WorkerPool

PIPELINE_DEPTH = 8
PIPELINE_MIN_RUNS = 3
PIPELINE_MAX_SECONDS = 0.002
PIPELINE_STUCK_SECONDS = 0.02
# CPU amounts are floats (num_cpus=0.5): compare with this slack.
EPSILON = 1e-9


class Scheduler:
    def __init__(self, node: "Node", pool: "WorkerPool", num_cpus: float) -> None:
        self.node = node
        self.pool = pool
        self.num_cpus = num_cpus
        self.free_cpus = num_cpus
        self.ready: Deque[Task] = collections.deque()
        self.dependents: Dict[bytes, List[Task]] = {}
        self.fn_stats: Dict[bytes, list] = {}  # fn_id -> [runs, mean seconds]

    # -- arguments -----------------------------------------------------------------------
    def wait_for(self, task: Task, dep: bytes) -> None:
        task.pending_deps += 1
        self.dependents.setdefault(dep, []).append(task)

    def object_ready(self, oid: bytes) -> None:
        for task in self.dependents.pop(oid, ()):
            task.pending_deps -= 1
            if task.pending_deps == 0 and task.state == WAITING:
                self.node.deps_ready(task)

    def forget(self, task: Task) -> None:
        """``task`` is over: it waits for nothing and is queued nowhere any more."""
        for dep in task.spec.deps:
            waiting = self.dependents.get(dep)
            if waiting and task in waiting:
                waiting.remove(task)
        if task.state == QUEUED and task in self.ready:
            self.ready.remove(task)

    # -- the queue -----------------------------------------------------------------------
    def enqueue(self, task: Task, first: bool = False) -> None:
        task.state = QUEUED
        if first:
            self.ready.appendleft(task)
        else:
            self.ready.append(task)

    def dispatch(self) -> None:
        """Start what can start: on idle workers, or pipelined behind short tasks."""
        pool = self.pool
        while self.ready and not self.node.closed:
            task = self.ready[0]
            if task.state != QUEUED:
                self.ready.popleft()
                continue
            need = task.spec.num_cpus
            if task.is_actor_creation:
                if need > self.free_cpus + EPSILON:
                    return
                self.ready.popleft()
                self.free_cpus -= need
                self.node.actors.place(task)
                continue
            w = pool.take_idle()
            if w is not None:
                if need > self.free_cpus + EPSILON:
                    pool.put_back_idle(w)
                    return
                self.ready.popleft()
                self.assign(task, w)
                continue
            w = self._pipeline_target(task)
            if w is None:
                if need <= self.free_cpus + EPSILON:
                    pool.grow()
                return
            self.ready.popleft()
            self.assign(task, w)

    def assign(self, task: Task, w: workers.WorkerHandle) -> None:
        """Send ``task`` to ``w``: it runs now if ``w`` is idle, else right after the others."""
        task.state = RUNNING
        task.worker = w
        w.tasks.append(task)
        if len(w.tasks) == 1:
            w.state = workers.BUSY
            w.running_since = time.monotonic()
            self.free_cpus -= task.spec.num_cpus
        self.node.exec_on(task, w)

    def unassign(self, task: Task) -> None:
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
            self.pool.became_idle(w)

    def requeue_unstarted(self, w: workers.WorkerHandle, task_ids: List[bytes]) -> None:
        """``w`` gave back tasks it had not started: queue them again, first, in order."""
        for task_id in reversed(task_ids):
            task = self.node.tasks.get(task_id)
            if task is not None and task.worker is w and task is not w.task:
                self.unassign(task)
                self.enqueue(task, first=True)

    # -- lending CPUs while a task waits ---------------------------------------------------
    def block(self, w: workers.WorkerHandle) -> bool:
        """``w``'s running task waits for something: lend its CPUs meanwhile.

        Returns whether tasks pipelined behind it must be taken back (they could be
        what it waits for).
        """
        if w.task is None or w.blocked:
            return False
        w.blocked = True
        self.free_cpus += w.task.spec.num_cpus
        return len(w.tasks) > 1 and not w.reclaiming

    def unblock(self, w: workers.WorkerHandle) -> None:
        if w.blocked:
            w.blocked = False
            if w.task is not None:
                self.free_cpus -= w.task.spec.num_cpus

    # -- pipelining ------------------------------------------------------------------------
    def _is_short(self, fn_id: bytes) -> bool:
        stats = self.fn_stats.get(fn_id)
        return (stats is not None and stats[0] >= PIPELINE_MIN_RUNS
                and stats[1] < PIPELINE_MAX_SECONDS)

    def _pipeline_target(self, task: Task) -> Optional[workers.WorkerHandle]:
        """A busy worker to queue ``task`` behind, if it and what it runs are all short."""
        spec = task.spec
        if spec.returns_kind != protocol.RETURNS_STATIC or not self._is_short(spec.fn_id):
            return None
        best = None
        for w in self.pool.task_workers():
            if (w.state != workers.BUSY or w.blocked or len(w.tasks) >= PIPELINE_DEPTH
                    or not all(self._is_short(t.spec.fn_id) for t in w.tasks)):
                continue
            if best is None or len(w.tasks) < len(best.tasks):
                best = w
        return best

    def record_run_time(self, fn_id: bytes, seconds: float) -> None:
        stats = self.fn_stats.get(fn_id)
        if stats is None:
            self.fn_stats[fn_id] = [1, seconds]
        else:
            stats[0] += 1
            stats[1] += (seconds - stats[1]) * 0.2  # recent runs weigh most

    def stuck_pipelines(self) -> List[workers.WorkerHandle]:
        """Workers whose queued tasks should be taken back: their running task turned out
        long, and a CPU could run what waits behind it."""
        if self.free_cpus < EPSILON and not self.pool.has_idle():
            return []
        now = time.monotonic()
        return [w for w in self.pool.task_workers()
                if len(w.tasks) > 1 and not w.reclaiming and not w.blocked
                and now - w.running_since > PIPELINE_STUCK_SECONDS]

    # -- retries: decided here and only here ----------------------------------------------
    @staticmethod
    def retries_left(task: Task) -> bool:
        limit = task.spec.max_retries
        return limit < 0 or task.attempt < limit

    def should_retry(self, task: Task) -> bool:
        """Whether a task that failed for a retryable reason runs again.  An actor call
        is retried only when its actor lives on (``Node.actor_died`` decides that).
        A generator whose stream was closed, or stopped because nobody can consume it,
        is not: nobody could take a new attempt's items, and nothing would stop it (the
        Close went to the worker that died)."""
        stream = task.stream
        return (self.retries_left(task) and task.took_from is None
                and not task.cancelled and not self.node.closed
                and (stream is None or not (stream.closed or stream.close_sent)))

    @classmethod
    def no_retry_reason(cls, task: Task) -> str:
        """Why a task with retries left is not retried, for its error message ("" if it is)."""
        if task.took_from is None or not cls.retries_left(task):
            return ""
        return (f"; not retried: it had taken items from the streaming generator of task "
                f"{task.took_from}, which it did not start, and a new attempt could not "
                f"see those items again")
