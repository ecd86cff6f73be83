"""The worker pool: worker processes from the node's side -- start, idle, exit, memory.

    spawn (I/O thread) --Hello--> IDLE <--> BUSY (tasks)          --pidfd--> exited
                                    \\--> an actor's, for its life         (reaped, pins freed)

``num_cpus`` workers (at least one) run plain tasks; more are started while some are
blocked in ``get`` (their CPUs lent out), and stopped after IDLE_WORKER_TIMEOUT without
work.  An actor takes a worker of its own (an idle one, which the pool replaces, or a
new one) for as long as it lives.

These handlers run on the node's I/O thread, or (socket events) on a driver thread
spinning in ``get``.  A dead worker's last messages are read before its death is
accounted for, so a result it sent just before exiting is never lost.
"""
from __future__ import annotations

import collections
import itertools
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Callable, Deque, Dict, Iterator, List, Optional

from . import output, protocol, workers
from .transport import ConnectionClosed

if TYPE_CHECKING:
    from .node import Node

# Extra idle workers (beyond num_cpus) started while others were blocked are stopped after
# this long without work.
IDLE_WORKER_TIMEOUT = 10.0
# Upper bound on worker processes for plain tasks (blocked workers lend their CPUs out).
MAX_EXTRA_WORKERS = 64
# How often the memory monitor reads RssAnon of workers that have a limit.  A worker
# allocating at ~1 GB/s overshoots its limit by at most ~50 MB before it is killed.
MEMORY_POLL_INTERVAL = 0.05
_EXIT = protocol.Exit()
# Workers dying by themselves before they are up (exit, crash; a SIGKILL from outside is
# not counted), in a row, after which queued tasks fail instead of being retried on yet
# another new worker (the environment cannot start one).
MAX_FAILED_STARTS = 3


class WorkerPool:
    def __init__(self, node: "Node", num_cpus: float) -> None:
        self.node = node
        self.size = max(1, math.ceil(num_cpus))   # workers kept for plain tasks
        self.workers: Dict[int, workers.WorkerHandle] = {}
        self._idle: Deque[workers.WorkerHandle] = collections.deque()
        self.starting = 0
        self._ids = itertools.count(1)
        self._forwarders: Dict[int, output.LineForwarder] = {}
        self.writer = output.OutputWriter()   # writes forwarded lines, off the I/O thread
        self._monitoring = False
        self.failed_starts = 0           # workers that died before Hello, in a row
        # actors waiting for a worker of their own: called with it once it said Hello
        self._wanted: Deque[Callable[[workers.WorkerHandle], None]] = collections.deque()

    # -- which workers ---------------------------------------------------------------------
    def task_workers(self) -> Iterator[workers.WorkerHandle]:
        """Live workers that run plain tasks (not actors')."""
        return (w for w in self.workers.values()
                if w.actor is None and w.state != workers.DEAD)

    def up_count(self) -> int:
        """Workers for plain tasks that are up (idle or busy).  One still starting is
        counted in ``starting`` instead (counting it here too left the pool one short
        when a worker died while its replacement was starting)."""
        return sum(1 for w in self.workers.values()
                   if w.actor is None and w.state in (workers.IDLE, workers.BUSY))

    def has_idle(self) -> bool:
        return bool(self._idle)

    def take_idle(self) -> Optional[workers.WorkerHandle]:
        while self._idle:
            w = self._idle.pop()  # the most recently idle: its caches and pages are warm
            if w.state == workers.IDLE:
                return w
        return None

    def put_back_idle(self, w: workers.WorkerHandle) -> None:
        self._idle.append(w)

    def became_idle(self, w: workers.WorkerHandle) -> None:
        w.state = workers.IDLE
        w.idle_since = time.monotonic()
        self._idle.append(w)

    # -- starting ----------------------------------------------------------------------------
    def start(self) -> None:
        for _ in range(self.size):
            self._spawn_soon()
        self.node.reactor.call_later(IDLE_WORKER_TIMEOUT, self._reap_idle)

    def grow(self) -> None:
        """A ready task finds no worker: start one (bounded), unless one is on its way."""
        active = sum(1 for w in self.task_workers() if not w.blocked)
        if self.starting == 0 and active < self.size + MAX_EXTRA_WORKERS:
            self._spawn_soon()

    def for_actor(self, got: Callable[[workers.WorkerHandle], None]) -> None:
        """Call ``got(worker)`` (under the lock) with a worker the actor may keep."""
        w = self.take_idle()
        if w is not None:
            got(w)
            self._replace_if_short()
            return
        self._wanted.append(got)
        self._spawn_soon()

    def _spawn_soon(self) -> None:
        self.starting += 1
        self.node.reactor.call_soon(self._spawn)

    def _spawn(self) -> None:
        """Runs on the I/O thread: PR_SET_PDEATHSIG ties each worker to that thread."""
        node = self.node
        with node.lock:
            if node.closed:
                self.starting -= 1
                return
            wid = next(self._ids)
            try:
                w = workers.spawn(wid, node.store.fd, node.log_to_driver,
                                  node.worker_memory_limit)
            except OSError as exc:
                self.starting -= 1
                node.fail_unplaceable(f"could not start a worker process: {exc}")
                return
            self.workers[wid] = w
            reactor = node.reactor
            reactor.add(w.conn.fd, lambda ev, w=w: node.on_socket(w))
            reactor.add(w.pidfd, lambda ev, w=w: self._on_exit(w))
            for i, fd in enumerate(w.out_fds):
                fwd = self._forwarders[fd] = output.LineForwarder(
                    w.pid, "worker", _stderr if i else _stdout, self.writer,
                    on_drained=lambda fd=fd: reactor.call_soon(lambda: self._resume(fd)))
                reactor.add(fd, lambda ev, fd=fd, fwd=fwd: self._on_output(fd, fwd))
        node.run_callbacks()

    def on_hello(self, w: workers.WorkerHandle, msg) -> None:  # type: ignore[no-untyped-def]
        w.slot = msg.store_slot
        self.failed_starts = 0
        if w.state == workers.STARTING:
            self.starting -= 1
            if self._wanted:
                w.state = workers.BUSY
                self._wanted.popleft()(w)
                self._replace_if_short()
            else:
                self.became_idle(w)
        self.node.dispatch()

    def _replace_if_short(self) -> None:
        if self.up_count() + self.starting - len(self._wanted) < self.size:
            self._spawn_soon()

    # -- output -----------------------------------------------------------------------------
    def _on_output(self, fd: int, fwd: output.LineForwarder) -> None:
        reactor = self.node.reactor
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            reactor.rearm(fd)
            return
        except OSError:
            data = b""
        if data:
            fwd.feed(data)
            if not self.writer.pause_if_full(fwd):
                reactor.rearm(fd)
            # else: the driver's stream is slow; this worker's pipe is read again once the
            # writer caught up (_resume), and until then only this worker waits
        else:
            fwd.close()
            reactor.remove(fd)

    def _resume(self, fd: int) -> None:
        if fd in self._forwarders:
            self.node.reactor.rearm(fd)

    def drain_output(self, w: workers.WorkerHandle) -> None:
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

    def close_fds(self, w: workers.WorkerHandle) -> None:
        if w.fds_closed:
            return
        w.fds_closed = True
        reactor = self.node.reactor
        for fd in [w.conn.fd, w.pidfd] + list(w.out_fds):
            reactor.remove(fd)
        for fd in w.out_fds:
            self._forwarders.pop(fd, None)
            try:
                os.close(fd)
            except OSError:
                pass
        w.out_fds = []
        w.conn.close()
        if w.status is not None:  # its status page (a mapping holds a descriptor)
            # (the stage was read when its death was accounted for, just before)
            w.status.close()
        try:
            os.close(w.pidfd)
        except OSError:
            pass

    # -- exit ---------------------------------------------------------------------------------
    def _on_exit(self, w: workers.WorkerHandle) -> None:
        """The worker process ended: take its last messages, then account for its death."""
        node = self.node
        with w.conn.read_lock:
            try:
                while not w.conn.closed:
                    msgs = w.conn.read_messages()
                    if not msgs:
                        break
                    with node.lock:
                        for msg in msgs:
                            node.handle(w, msg)
            except (ConnectionClosed, OSError):
                pass
        _, status = workers.wait_pid(w.pid)
        w.exit_status = status
        self.drain_output(w)
        with node.lock:
            self._died(w)
            self.close_fds(w)
        node.run_callbacks()

    def _died(self, w: workers.WorkerHandle) -> None:
        if w.state == workers.DEAD:
            return
        was_starting = w.state == workers.STARTING
        w.state = workers.DEAD
        self.workers.pop(w.id, None)
        if was_starting:
            self.starting -= 1
            if not w.killed_by(signal.SIGKILL):
                # a SIGKILL comes from outside (a user, the OOM killer, a test), not from
                # an environment in which a worker cannot start: that one is replaced
                self.failed_starts += 1
        node = self.node
        node.worker_died(w)
        if node.closed:
            return
        if self.failed_starts >= MAX_FAILED_STARTS:
            # workers cannot start here (a broken environment): say so, do not loop
            self._wanted.clear()
            node.fail_unplaceable(
                f"{self.failed_starts} new worker processes died while starting, the last "
                f"(pid {w.pid}) {w.describe_exit()}; its output above says why")
            return
        if (self.up_count() + self.starting - len(self._wanted) < self.size
                or (node.scheduler.ready and not self.starting)
                or (self._wanted and self.starting < len(self._wanted))):
            self._spawn_soon()  # the worker is replaced
        node.dispatch()

    # -- periodic work (I/O thread) -------------------------------------------------------------
    def _reap_idle(self) -> None:
        """Stop extra workers (beyond ``size``) that had nothing to do for a while."""
        node = self.node
        with node.lock:
            if node.closed:
                return
            now = time.monotonic()
            plain = list(self.task_workers())
            extra = self.up_count() - self.size
            for w in sorted(plain, key=lambda x: x.idle_since):
                if extra <= 0:
                    break
                if w.state == workers.IDLE and now - w.idle_since > IDLE_WORKER_TIMEOUT:
                    w.state = workers.EXITING
                    node.outbox.send(w, _EXIT)
                    extra -= 1
            node.outbox.flush()
        node.reactor.call_later(IDLE_WORKER_TIMEOUT / 2, self._reap_idle)

    def watch_memory(self) -> None:
        if not self._monitoring:
            self._monitoring = True
            self.node.reactor.call_later(MEMORY_POLL_INTERVAL, self._check_memory)

    def _check_memory(self) -> None:
        with self.node.lock:
            watched = False
            for w in self.workers.values():
                limit = w.memory_limit
                if limit is None or w.state == workers.DEAD or w.oom is not None:
                    continue
                watched = True
                rss = w.rss_anon()
                w.peak_rss = max(w.peak_rss, rss)
                if rss > limit:
                    w.oom = (limit, rss)
                    workers.kill(w.pid)
            self._monitoring = watched
        if watched:
            self.node.reactor.call_later(MEMORY_POLL_INTERVAL, self._check_memory)

    # -- shutdown --------------------------------------------------------------------------------
    def stop_all(self, busy: List[workers.WorkerHandle]) -> None:
        """Kill ``busy`` workers, let the others exit (they got Exit), reap every one."""
        for w in busy:
            workers.kill(w.pid)
        deadline = time.monotonic() + 2.0
        for w in list(self.workers.values()):
            while not w.try_reap() and time.monotonic() < deadline:
                time.sleep(0.002)

    def close_all(self) -> None:
        """After the I/O thread stopped: reap what is left, forward its output, close."""
        for w in list(self.workers.values()):
            if not w.try_reap():
                workers.kill(w.pid)
                workers.wait_pid(w.pid)
            self.drain_output(w)
            self.close_fds(w)
        self.workers.clear()


def _stdout():  # type: ignore[no-untyped-def]
    return sys.stdout


def _stderr():  # type: ignore[no-untyped-def]
    return sys.stderr

