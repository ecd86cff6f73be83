"""Worker processes from the node's side: start, listen, forward output, death, memory.

These are reactor handlers and timers: they run on the node's I/O thread, or (socket
events) on a driver thread spinning in ``get``.  A dead worker's last messages are read
before its death is accounted for, so a result it sent just before exiting is never lost;
its pins are released by store slot.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from ..exceptions import OutOfMemoryError, WorkerCrashedError
from . import output, protocol, workers
from .tasks import QUEUED
from .transport import ConnectionClosed

# Extra idle workers (beyond num_cpus) started while others were blocked are stopped after
# this long without work.
IDLE_WORKER_TIMEOUT = 10.0
# How often the memory monitor reads RssAnon of workers that have a limit.  A worker
# allocating at ~1 GB/s overshoots its limit by at most ~50 MB before it is killed.
MEMORY_POLL_INTERVAL = 0.05
# Workers dying before they are up, in a row, after which queued tasks fail instead of
# being retried on yet another new worker (the environment cannot start one).
MAX_FAILED_STARTS = 3


class WorkerEvents:
    """Part of ``Node``: the life of worker processes."""

    def on_hello(self, w: workers.WorkerHandle, msg: tuple) -> None:
        w.slot = msg[3]
        self._failed_starts = 0
        if w.state == workers.STARTING:
            self.starting -= 1
            w.state = workers.IDLE
            w.idle_since = time.monotonic()
            self.idle.append(w)
        self._dispatch()

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
        _, status = workers.wait_pid(w.pid)
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
                    f"or yield its results one by one (a generator)"
                    f"{self._no_retry_reason(task)}"))
            else:
                error = self._system_error(WorkerCrashedError(
                    f"the worker (pid {w.pid}) running task {task.spec.name} died: it "
                    f"{w.describe_exit()}{self._no_retry_reason(task)}"))
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
                    workers.kill(w.pid)
            self._monitoring = watched
        if watched:
            self.reactor.call_later(MEMORY_POLL_INTERVAL, self._check_memory)


def _stdout():
    return sys.stdout


def _stderr():
    return sys.stderr


def _mib(nbytes: int) -> str:
    """Bytes for a message: MiB to the decimal needed to tell close sizes apart."""
    return f"{nbytes / 2**20:.2f} MiB ({nbytes:,} bytes)"


def _internal_error(what: str) -> None:
    """A bug in pygen, with the traceback being handled, through the "pygen" logger."""
    logging.getLogger("pygen").error("pygen internal error %s", what, exc_info=True)
