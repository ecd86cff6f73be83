"""The driver's event loop: one epoll set over every worker socket, pipe and pidfd.

    I/O thread:  outer epoll = { wake pipe, inner epoll }      (timers, call_soon, events)
    any thread:  inner epoll = { worker sockets, pipes, pidfds } (EPOLLONESHOT each)

The node's I/O thread runs it forever.  A user thread waiting in ``get`` polls the inner
set itself during its spin window, so the thread that needs a result reads it: no
thread wake-up and no GIL hand-off in between (measured: most of the driver's CPU per
short task went to futex wake-ups between its two threads).  While such a thread spins
(``hold``), the inner set is taken out of the outer one, so the I/O thread is not even
woken for the events the spinner handles.  Each fd is EPOLLONESHOT: exactly one thread
handles an fd at a time, and the handler re-arms it when it is done.

Timers and cross-thread calls (``call_soon``) run on the I/O thread only.
"""
from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

_BASE = select.EPOLLIN | select.EPOLLONESHOT


class Reactor:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._handlers: Dict[int, Callable[[int], None]] = {}
        self._masks: Dict[int, int] = {}
        self._lock = threading.Lock()
        self._calls: List[Callable[[], None]] = []
        self._timers: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._outer = select.epoll()
        self._outer.register(self._wake_r, select.EPOLLIN)
        self._outer.register(self._ep.fileno(), select.EPOLLIN)
        self._holders = 0
        self.thread: Optional[threading.Thread] = None
        self.running = False

    # -- registration -------------------------------------------------------------------------
    def add(self, fd: int, handler: Callable[[int], None], write: bool = False) -> None:
        """Call ``handler(events)`` when ``fd`` is ready; the handler must ``rearm`` it."""
        mask = _BASE | (select.EPOLLOUT if write else 0)
        with self._lock:
            self._handlers[fd] = handler
            self._masks[fd] = mask
        self._ep.register(fd, mask)

    def rearm(self, fd: int, write: bool = False) -> None:
        mask = _BASE | (select.EPOLLOUT if write else 0)
        with self._lock:
            if fd not in self._handlers:
                return
            self._masks[fd] = mask
        try:
            self._ep.modify(fd, mask)
        except (FileNotFoundError, ValueError, OSError):
            pass  # closed meanwhile

    def remove(self, fd: int) -> None:
        with self._lock:
            self._handlers.pop(fd, None)
            self._masks.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except (FileNotFoundError, ValueError, OSError):
            pass

    # -- cross-thread calls and timers (I/O thread only) -------------------------------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._calls.append(fn)
        self.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already awake-pending

    # -- running ------------------------------------------------------------------------------------
    def poll(self, timeout: float) -> int:
        """Handle ready fds once (any thread); returns how many handlers ran."""
        try:
            events = self._ep.poll(timeout)
        except InterruptedError:
            return 0
        for fd, ev in events:
            handler = self._handlers.get(fd)
            if handler is not None:
                handler(ev)
        return len(events)

    def hold(self) -> None:
        """A user thread polls the inner set now: keep the I/O thread from waking for it."""
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._outer.unregister(self._ep.fileno())

    def release(self) -> None:
        """The user thread stops polling: the I/O thread takes the events again."""
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                self._outer.register(self._ep.fileno(), select.EPOLLIN)

    def run(self) -> None:
        """The I/O thread's loop."""
        self.running = True
        inner = self._ep.fileno()
        while self.running:
            timeout = self._run_due()
            try:
                ready = self._outer.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in ready:
                if fd == inner:
                    self.poll(0)
                    continue
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
        self._run_due()

    def _run_due(self) -> float:
        with self._lock:
            calls, self._calls = self._calls, []
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                calls.append(heapq.heappop(self._timers)[2])
            timeout = (self._timers[0][0] - now) if self._timers else -1
        for fn in calls:
            fn()
        if calls:
            with self._lock:
                if self._calls:
                    return 0
        return timeout

    def start(self, name: str) -> None:
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.wake()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def close(self) -> None:
        self._outer.close()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
