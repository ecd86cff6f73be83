"""Runs tasks and actor calls inside a worker process and reports what they produce.

    Exec --> load function (or the actor's method) --> resolve arguments --> call
        plain value        --> Result (every return at once)
        coroutine          --> run on an event loop, then as above
        generator / async  --> per yield: serialize (the value is captured now), store,
        generator              report Item, drop the value; then End with the return
                               value or the error

Everything a generator produces is a task return that arrives early: the node maps
item i to return i (``num_returns=k``) or to a new item ref (streaming, dynamic).

Plain tasks and a sync actor's calls run one at a time on the main thread, which also
reads the control channel between them.  A threaded or async actor's calls run on its
``ActorHost`` (``actor_host``): several at once, each with its own ``calls.Call`` in a
context variable.

At each yield the executor checks the control sets without blocking: a Close closes the
generator at its ``yield`` (its ``finally`` runs), a Cancel ends it with
``TaskCancelledError``, and with ``generator_backpressure=N`` it waits at the ``yield``
while N items are produced but not yet taken by the caller.

Cancellation of running code: the node sends Cancel and then SIGUSR2.  The signal
interrupts blocking calls (``time.sleep``) of the main thread; its handler raises
``TaskCancelledError`` in the call's own code (never inside the runtime's: there the
request loop sees the Cancel and raises at a safe point).  A call running on another
thread gets the exception asynchronously (``PyThreadState_SetAsyncExc``) at its next
Python instruction; one on an event loop has its asyncio task cancelled.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import pickle
import signal
import threading
import time
import types
from typing import Any, Dict, List, Optional, Tuple

import cloudpickle

from .. import ids, serialization
from ..callables import is_generator_function
from ..exceptions import (InconsistentRetryError, RemoteExceptionInfo, TaskCancelledError,
                          TaskError)
from . import calls, output, protocol, stages
from .calls import Call
from .protocol import DepArg
from .transport import IDLE_SPIN_SECONDS
from .worker_client import WorkerClient

_GENERATOR_TYPES = (types.GeneratorType, types.AsyncGeneratorType)

# How often a running generator reads its control channel between yields.  Close and
# Cancel do not wait for it: they come with SIGUSR2, whose handler reads them at once, so
# the check at each yield is a set lookup; this read only picks up Acks and stragglers.
CONTROL_CHECK_INTERVAL = 0.001


class _AsyncCancel(TaskCancelledError):
    """Raised asynchronously in a thread whose call was cancelled (no arguments possible)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(args or ("the call was cancelled",)))


class Executor:
    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.pid = os.getpid()
        self.functions: Dict[bytes, Any] = {}
        self.running: Dict[bytes, Call] = {}   # task id -> call, for cancellation
        self.cancelled: set = set()
        self.closing: set = set()
        self.acks: Dict[bytes, int] = {}
        self.exiting = False
        self.main_thread = threading.get_ident()
        self.host: Any = None   # the ActorHost once this worker became an actor
        self._loop: Any = None  # asyncio loop of plain async tasks (asyncio imported late)
        self.flusher = _Flusher()
        client.on_control = self.on_control
        client.check_cancelled = self.check_cancelled

    # -- control messages -----------------------------------------------------------------
    def on_control(self, msg: Any) -> None:
        kind = type(msg)
        if kind is protocol.Exec or kind is protocol.StartActor:
            self.client.inbox.append(msg)
        elif kind is protocol.Ack:
            if msg.consumed > self.acks.get(msg.task_id, 0):
                self.acks[msg.task_id] = msg.consumed
                if self.host is not None:
                    self.host.wake_generator(msg.task_id)
        elif kind is protocol.Cancel:
            self.cancelled.add(msg.task_id)
            self._deliver_cancels(in_signal_handler=False)
        elif kind is protocol.Close:
            self.closing.add(msg.task_id)
            if self.host is not None:
                self.host.wake_generator(msg.task_id)
        elif kind is protocol.Reclaim:
            # the node takes back tasks queued here that have not started
            wanted = set(msg.task_ids)
            inbox = self.client.inbox
            given = [m.task_id for m in inbox if type(m) is protocol.Exec and m.task_id in wanted]
            if given:
                kept = [m for m in inbox
                        if not (type(m) is protocol.Exec and m.task_id in wanted)]
                inbox.clear()
                inbox.extend(kept)
            # this may run in the signal handler: send only if no runtime code was
            # interrupted (it may hold the send lock); otherwise it goes with the next send
            self.client.send_soon(protocol.Reclaimed(given))
        elif kind is protocol.Exit:
            self.exiting = True

    def check_cancelled(self, call: Optional[Call] = None) -> None:
        """Raise ``TaskCancelledError`` if ``call`` (default: the caller's) was cancelled."""
        call = call or calls.current()
        if call is not None and call.task_id in self.cancelled and not call.cancelled:
            call.cancelled = True
            raise TaskCancelledError(f"task {call.name} was cancelled")

    def on_cancel_signal(self, signum: int, frame: Any) -> None:
        # takes the Cancel, unless a thread of ours is reading now (that thread delivers it)
        self.client.read_available()
        self._deliver_cancels(in_signal_handler=True)

    def _deliver_cancels(self, in_signal_handler: bool) -> None:
        """Raise ``TaskCancelledError`` in every running call that was cancelled.

        Not inside runtime code (the request loop raises at its next safe point), and on
        the main thread only from the signal handler, which interrupted it where it was.
        """
        client = self.client
        for task_id in list(self.cancelled):
            call = self.running.get(task_id)
            if call is None or call.cancelled:
                continue
            if call.async_task is not None:
                loop = call.async_task.get_loop()
                loop.call_soon_threadsafe(call.async_task.cancel)
            elif not call.in_user or client.busy_in(call.thread):
                continue
            elif call.thread == self.main_thread:
                if in_signal_handler and threading.get_ident() == self.main_thread:
                    call.cancelled = True
                    raise TaskCancelledError(f"task {call.name} was cancelled")
            else:
                call.cancelled = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(call.thread),
                                                           ctypes.py_object(_AsyncCancel))

    # -- the loop -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        inbox = self.client.inbox
        spin = IDLE_SPIN_SECONDS
        while not self.exiting:
            if inbox:
                msg = inbox.popleft()
                if type(msg) is protocol.StartActor:
                    from .actor_host import start_actor

                    self.host = start_actor(self, msg)
                elif self.host is not None:
                    self.host.submit(msg)
                else:
                    self.execute(msg)
                spin = IDLE_SPIN_SECONDS
                continue
            self.client.flush()
            self.client.pump(1.0, spin)
            spin = 0.0  # still idle a second later: sleep without polling
        if self.host is not None:
            self.host.stop()

    def report(self, call: Call, msg: Any) -> None:
        """Send a call's Result or End; batch it while short tasks wait in the inbox.

        The node queues a task here only when its function is short, so holding a result
        back until the inbox is empty delays it by at most a few short tasks.
        """
        inbox = self.client.inbox
        flush = not inbox or len(inbox) > 64 or call.thread != self.main_thread
        self.client.send(msg, flush=flush)

    def execute(self, msg: protocol.Exec, target: Any = None) -> None:
        """Run one task (or, with ``target``, one call of the actor ``target``) here."""
        call = Call.of(msg)
        token = calls.enter(call)
        self.running[call.task_id] = call
        if target is None:
            output.set_task_name(call.name)
        try:
            self._execute(call, msg, target)
        finally:
            self._forget(call)
            calls.leave(token)

    def stage(self, call: Call, stage: int, index: Optional[int] = None) -> None:
        """Write ``call``'s stage into the status page (main-thread calls only: see
        core/stages.py); ``index``: 0 the return value, i + 1 item i."""
        page = self.client.status
        if page is not None and call.thread == self.main_thread:
            page[0] = stage
            if index is not None:
                page[1] = index

    def _storing(self) -> None:
        """``encode``'s hook: a main-thread call's value is pickled, now it is stored."""
        page = self.client.status
        if page is not None and threading.get_ident() == self.main_thread:
            page[0] = stages.STORING

    def on_store(self, call: Call) -> Any:
        return self._storing if call.thread == self.main_thread else None

    def _forget(self, call: Call) -> None:
        self.stage(call, stages.IDLE)
        self.running.pop(call.task_id, None)
        self.cancelled.discard(call.task_id)
        self.closing.discard(call.task_id)
        self.acks.pop(call.task_id, None)

    def prepare(self, call: Call, msg: protocol.Exec, target: Any) -> Any:
        """(fn, args, kwargs) of a call, or None if it already failed (reported)."""
        if threading.get_ident() != self.main_thread:
            # a Cancel that reached this process before the call started must be seen
            # now; the main thread, which reads the channel, may not have dispatched it
            # yet.  (On the main thread itself the SIGUSR2 handler and the check below,
            # before the body runs, see it.)
            self.client.catch_up()
        if call.task_id in self.cancelled:  # cancelled while it waited to start
            call.cancelled = True
            self.fail(call, TaskCancelledError(f"task {call.name} was cancelled"))
            return None
        try:
            if target is not None:
                fn = getattr(target, msg.method)
            else:
                fn = self.functions.get(msg.fn_id)
                if fn is None:
                    self.stage(call, stages.LOADING)
                    fn = self.functions[msg.fn_id] = cloudpickle.loads(msg.blob)
        except BaseException as exc:
            self.fail(call, exc, "while loading its function")
            return None
        try:
            self.stage(call, stages.ARGS)
            args, kwargs = self.resolve_args(call.task_id, msg.args, msg.deps)
        except BaseException as exc:
            self.fail(call, exc, "while reading its arguments")
            return None
        self.stage(call, stages.RUNNING)
        return fn, args, kwargs

    def _execute(self, call: Call, msg: protocol.Exec, target: Any) -> None:
        prepared = self.prepare(call, msg, target)
        if prepared is None:
            return
        fn, args, kwargs = prepared
        del prepared
        try:
            call.in_user = True
            try:
                self.check_cancelled(call)
                result = fn(*args, **kwargs)
                del args, kwargs
                if type(result) is types.CoroutineType:
                    result = self._run_coroutine(call, result)
            finally:
                call.in_user = False
        except BaseException as exc:
            self.fail(call, exc)
            return
        if self.client.forked:
            raise RuntimeError(
                f"a process forked by task {call.name} returned from the task into the "
                f"pygen worker, which is not its own: end a forked child with os._exit()")
        if type(result) in _GENERATOR_TYPES and is_generator_function(fn):
            self._run_generator(call, result)
        else:
            self.finish_plain(call, result)

    def resolve_args(self, task_id: bytes, payload: tuple,
                     deps: List[tuple]) -> Tuple[list, dict]:
        _, (args, kwargs) = self.client.decode(ids.args_id(task_id), payload)
        if deps:
            values = [self.client.decode(oid, dep_payload)[1] for oid, dep_payload in deps]
            args = [values[a.index] if type(a) is DepArg else a for a in args]
            kwargs = {k: values[v.index] if type(v) is DepArg else v for k, v in kwargs.items()}
        return args, kwargs

    def _run_coroutine(self, call: Call, coro: Any) -> Any:
        import asyncio

        loop = self._event_loop()
        task = call.async_task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise TaskCancelledError(f"task {call.name} was cancelled") from None
        finally:
            call.async_task = None

    def _event_loop(self) -> Any:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    # -- results -------------------------------------------------------------------------------
    def finish_plain(self, call: Call, result: Any) -> None:
        """Report a call that returned a value (not a generator)."""
        if type(result) in _GENERATOR_TYPES:
            self.fail(call, TypeError(
                f"task {call.name} is a plain function and returned a "
                f"{type(result).__name__} object, which cannot be pickled as a value (and "
                f"a plain function's result is never iterated): make {call.name} a "
                f"generator function, with yield, to return its values one by one"))
            return
        if call.kind != protocol.RETURNS_STATIC:
            kind = "streaming" if call.kind == protocol.RETURNS_STREAMING else "dynamic"
            self.fail(call, TypeError(
                f"num_returns={kind!r} needs a generator function, but {call.name} "
                f"returned {type(result).__name__}"))
            return
        k = call.num_returns
        if k == 0:
            values: Any = []
        elif k == 1:
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                values = None
            if values is None or len(values) != k:
                got = "a non-sequence" if values is None else f"{len(values)} values"
                self.fail(call, ValueError(
                    f"task {call.name} has num_returns={k} but returned {got}"))
                return
        returns = []
        on_store = self.on_store(call)
        try:
            for i, value in enumerate(values):
                self.stage(call, stages.PICKLING, 0)
                payload, contained = self.client.encode(value, ids.return_id(call.task_id, i),
                                                        on_store=on_store)
                returns.append((i, payload, contained))
        except BaseException as exc:  # e.g. an unpicklable return value
            self.fail(call, _could_not_store(exc, f"the return value of task {call.name}"))
            return
        del values, result
        self.stage(call, stages.REPORTING)
        self.report(call, protocol.Result(call.task_id, call.attempt, returns, False,
                                          time.perf_counter() - call.started))

    def error_payload(self, call: Call, exc: BaseException,
                      stage: str = "") -> Tuple[tuple, bool]:
        """Encode the error for ``exc`` (always inline) and whether it may be retried;
        ``stage`` says where it was raised, when not in the task's own code."""
        if isinstance(exc, TaskCancelledError) and call.cancelled:
            err: BaseException = (TaskCancelledError(f"task {call.name} was cancelled")
                                  if isinstance(exc, _AsyncCancel) else exc)
            retryable = False
        elif isinstance(exc, (TaskError, InconsistentRetryError)):
            err, retryable = exc, False
        else:
            err = TaskError.from_exception(call.name, exc, self.pid, stage)
            retryable = _matches(call.retry_exceptions, exc)
        try:
            sv = serialization.serialize_error(err)
        except Exception:
            # the exception cannot be pickled: keep its type, message and traceback
            stand_in = RemoteExceptionInfo(f"{type(exc).__module__}.{type(exc).__qualname__}",
                                           str(exc))
            tb = err.traceback_str if isinstance(err, TaskError) else ""
            sv = serialization.serialize(TaskError(call.name, tb, stand_in, self.pid, stage),
                                         error=True)
        return (sv.flags, sv.to_bytes(), sv.total_size), retryable

    def fail(self, call: Call, exc: BaseException, stage: str = "") -> None:
        if self.client.forked:
            raise exc  # a child the task forked is leaving (sys.exit...): its end, not the task's
        payload, retryable = self.error_payload(call, exc, stage)
        seconds = time.perf_counter() - call.started
        if call.kind == protocol.RETURNS_STATIC:
            returns = [(i, payload, []) for i in range(call.num_returns)]
            self.report(call, protocol.Result(call.task_id, call.attempt, returns, retryable,
                                              seconds))
        else:
            end = protocol.END_CANCELLED if call.cancelled else protocol.END_RAISED
            self.report(call, protocol.End(call.task_id, call.attempt, 0, payload, [],
                                           retryable, end, seconds))

    # -- generators ------------------------------------------------------------------------------
    def _run_generator(self, call: Call, gen: Any) -> None:
        """Drive a generator on this thread (an async one on this worker's event loop)."""
        run = GeneratorRun(self, call, gen)
        is_async = run.is_async
        while True:
            if run.at_yield():
                self._close_gen(gen, is_async)
                break
            run.before_step()
            try:
                call.in_user = True
                try:
                    if is_async:
                        value = self._run_coroutine(call, gen.__anext__())
                    else:
                        value = next(gen)
                finally:
                    call.in_user = False
            except BaseException as exc:
                run.stopped(exc)
                break
            if run.accept(value):
                self._close_gen(gen, is_async)
                break
            value = None  # the worker's copy is dropped as soon as the item is stored
            if run.must_wait():
                run.batch.flush()
                self._wait_for_consumer(run)
        run.finish()

    def _wait_for_consumer(self, run: "GeneratorRun") -> None:
        """Pause at the yield while ``backpressure`` items are produced but not taken."""
        while run.must_wait():
            self.client.pump(None)

    def _close_gen(self, gen: Any, is_async: bool) -> None:
        try:
            if is_async:
                self._event_loop().run_until_complete(gen.aclose())
            else:
                gen.close()
        except BaseException:
            pass  # an error in a finally block during close has nowhere to go but the end

    def end_generator(self, call: Call, count: int, outcome: Tuple[int, Any],
                      held: Optional[tuple]) -> None:
        """Report the end: the return value (the completion's value) or the error.

        For ``num_returns=k`` the k-th value (``held``) is reported only now, and only if
        the generator returned: one that raised after exactly k values (or yielded more,
        or was cancelled) leaves ref k to its error (SPEC §4.1), and the held value,
        never reported, is dropped (a retry is free to write it again).
        """
        end_kind, value = outcome
        payload: Optional[tuple] = None
        contained: list = []
        retryable = False
        if call.kind == protocol.RETURNS_STATIC:
            if end_kind == protocol.END_RETURNED and count < call.skip:
                # a retry that stops before the refs an earlier attempt made ready
                end_kind, value = protocol.END_RAISED, InconsistentRetryError(
                    f"task {call.name} was retried and its new attempt yielded {count} "
                    f"values, fewer than the {call.skip} already returned")
            elif end_kind == protocol.END_RETURNED and count < call.num_returns:
                end_kind, value = protocol.END_RAISED, ValueError(
                    f"task {call.name} has num_returns={call.num_returns} but its generator "
                    f"yielded only {count} values")
            if held is not None and end_kind == protocol.END_RETURNED:
                self.client.send(protocol.Item(call.task_id, call.attempt, call.num_returns - 1,
                                               held[1], held[2]))
            elif held is not None and held[1][1] is None:
                self.client.store.delete(held[0])  # stored, never reported: nobody sees it
        elif end_kind == protocol.END_RETURNED:
            self.stage(call, stages.PICKLING, 0)
            try:
                payload, contained = self.client.encode(value, ids.completion_id(call.task_id),
                                                        on_store=self.on_store(call))
            except BaseException as exc:  # an unpicklable return value
                end_kind, value = protocol.END_RAISED, _could_not_store(
                    exc, f"the return value of generator task {call.name}")
        if end_kind in (protocol.END_RAISED, protocol.END_CANCELLED):
            payload, retryable = self.error_payload(call, value)
        else:
            self.stage(call, stages.REPORTING, 0)
        self.report(call, protocol.End(call.task_id, call.attempt, count, payload, contained,
                                       retryable, end_kind, time.perf_counter() - call.started))


class GeneratorRun:
    """One generator call being driven: what is decided at each yield, for every driver
    (the sync loop here, the asyncio one of an async actor)."""

    __slots__ = ("ex", "call", "client", "is_async", "static", "k", "index", "held",
                 "outcome", "batch", "next_check", "page", "on_store")

    def __init__(self, ex: Executor, call: Call, gen: Any) -> None:
        self.ex = ex
        self.call = call
        self.client = ex.client
        self.is_async = type(gen) is types.AsyncGeneratorType
        self.static = call.kind == protocol.RETURNS_STATIC
        self.k = call.num_returns
        self.index = 0
        self.held: Optional[tuple] = None  # static: the k-th value, reported at the end
        self.outcome: Tuple[int, Any] = (protocol.END_RETURNED, None)
        self.batch = _ItemBatcher(ex.client, call, ex.flusher)
        self.next_check = 0.0
        # the status page, if this call writes it (core/stages.py): written inline, per item
        self.page = ex.client.status if call.thread == ex.main_thread else None
        self.on_store = ex.on_store(call)

    def at_yield(self) -> bool:
        """The generator is paused at a yield (or has not started): True if it must stop
        (closed, cancelled) -- the driver closes it then."""
        call = self.call
        now = time.perf_counter()
        if now >= self.next_check:
            self.next_check = now + CONTROL_CHECK_INTERVAL
            self.client.read_available()
        if call.task_id in self.ex.closing:
            self.outcome = (protocol.END_CLOSED, None)
            return True
        try:
            self.ex.check_cancelled(call)
        except TaskCancelledError as exc:
            self.outcome = (protocol.END_CANCELLED, exc)
            return True
        return False

    def before_step(self) -> None:
        self.batch.before_step()

    def stopped(self, exc: BaseException) -> None:
        """The step raised: how the generator ended."""
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.outcome = (protocol.END_RETURNED, getattr(exc, "value", None))
        elif isinstance(exc, TaskCancelledError):
            self.outcome = (protocol.END_CANCELLED if self.call.cancelled
                            else protocol.END_RAISED, exc)
        else:
            self.outcome = (protocol.END_RAISED, exc)

    def accept(self, value: Any) -> bool:
        """Store and report a yielded value; True if the generator must stop here (the
        driver closes it then)."""
        self.batch.after_step()
        call = self.call
        index = self.index
        if index < call.skip:  # a retry: this item was handed out by an earlier attempt
            self.index += 1
            return False
        if self.static and index >= self.k:
            self.outcome = (protocol.END_RAISED, ValueError(
                f"task {call.name} has num_returns={self.k} but its generator yielded more "
                f"than {self.k} values"))
            return True
        oid = (ids.return_id(call.task_id, index) if self.static
               else ids.item_id(call.task_id, index, call.attempt))
        page = self.page
        if page is not None:
            page[0] = stages.PICKLING
            page[1] = index + 1
        try:
            payload, contained = self.client.encode(value, oid, on_store=self.on_store)
        except BaseException as exc:  # unpicklable item, store full: the stream ends here
            self.outcome = (protocol.END_RAISED,
                            _could_not_store(exc, f"item {index} of generator task {call.name}"))
            return True
        if self.static and index == self.k - 1:
            self.held = (oid, payload, contained)
        else:
            if page is not None:
                page[0] = stages.REPORTING
            self.batch.write(index, payload, contained)
        if page is not None:
            page[0] = stages.RUNNING  # (paused by backpressure, or about to step)
        self.index += 1
        return False

    def must_wait(self) -> bool:
        """Backpressure: ``backpressure`` items are produced and not taken yet (a retry's
        skipped items were taken before it started, whatever the Acks say so far)."""
        call, ex = self.call, self.ex
        return bool(call.backpressure) and self.index > call.skip and (
            self.index - max(ex.acks.get(call.task_id, 0), call.skip) >= call.backpressure
            and call.task_id not in ex.closing and call.task_id not in ex.cancelled
            and not ex.exiting)

    def finish(self) -> None:
        self.batch.flush()
        self.ex.end_generator(self.call, self.index, self.outcome, self.held)


class _ItemBatcher:
    """Writes a generator's items in order: one at a time, or in batches while it is fast.

    A write wakes the driver (20-300 us here); a generator that yields every few
    microseconds would spend most of its time on that.  While the last step took less
    than FAST_STEP, items are gathered and written as one Items message when MAX_ITEMS
    are gathered or the first of them is MAX_DELAY old -- by the ``_Flusher`` thread if
    the generator is busy or blocked in its next step then, so no item waits longer.
    The first item always goes out at once (time to first item matters).  Every write
    goes through ``lock``, in index order.
    """

    FAST_STEP = 50e-6
    MAX_ITEMS = 64
    MAX_DELAY = 0.001

    __slots__ = ("client", "call", "flusher", "lock", "items", "first_at", "step_started",
                 "last_step", "sent_any")

    def __init__(self, client: WorkerClient, call: Call, flusher: "_Flusher") -> None:
        self.client = client
        self.call = call
        self.flusher = flusher
        self.lock = threading.Lock()
        self.items: list = []
        self.first_at = 0.0
        self.step_started = 0.0
        self.last_step = 1.0
        self.sent_any = False

    def before_step(self) -> None:
        if self.items:
            self.flusher.schedule(self, self.first_at + self.MAX_DELAY)
        self.step_started = time.perf_counter()

    def after_step(self) -> None:
        self.last_step = time.perf_counter() - self.step_started

    def write(self, index: int, payload: tuple, contained: list) -> None:
        now = time.perf_counter()
        with self.lock:
            if not self.items:
                self.first_at = now
            self.items.append((index, payload, contained))
            if (not self.sent_any or self.last_step >= self.FAST_STEP
                    or len(self.items) >= self.MAX_ITEMS or now - self.first_at >= self.MAX_DELAY):
                self.sent_any = True
                self._flush_locked()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        items, self.items = self.items, []
        call = self.call
        if len(items) == 1:
            index, payload, contained = items[0]
            self.client.send(protocol.Item(call.task_id, call.attempt, index, payload,
                                           contained))
        elif items:
            self.client.send(protocol.Items(call.task_id, call.attempt, items))


class _Flusher:
    """A thread that writes batches of items that have waited long enough.

    It sleeps until the earliest batch is due; a generator step that blocks (sleep, I/O,
    a lock) releases the GIL, so the items gathered before it go out within MAX_DELAY.
    Several generators (an actor's concurrent calls) may have batches waiting at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: List[Tuple[float, int, _ItemBatcher]] = []   # a heap by deadline
        self._scheduled: set = set()
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def schedule(self, batcher: _ItemBatcher, deadline: float) -> None:
        with self._cond:
            if id(batcher) in self._scheduled:
                return
            self._scheduled.add(id(batcher))
            heapq.heappush(self._due, (deadline, next(self._seq), batcher))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pygen-flusher",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                deadline, _, batcher = self._due[0]
                left = deadline - time.perf_counter()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._due)
                self._scheduled.discard(id(batcher))
            batcher.flush()


def _could_not_store(exc: BaseException, what: str) -> BaseException:
    """``exc`` with the value named: a pickling error becomes a TypeError that says which
    value could not be pickled; a full store keeps its own type (ObjectStoreFullError)
    and says what it was storing."""
    from ..exceptions import ObjectStoreFullError, PygenError

    if isinstance(exc, ObjectStoreFullError):  # the same error, saying what it was storing
        full = ObjectStoreFullError(f"could not store {what}: {exc}", exc.requested,
                                    exc.available)
        full.__cause__ = exc
        return full
    if isinstance(exc, PygenError) or not isinstance(exc, Exception):
        return exc
    err = TypeError(f"could not pickle {what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _matches(spec: Any, exc: BaseException) -> bool:
    """Whether ``retry_exceptions`` (bool or pickled tuple of classes) covers ``exc``."""
    if spec is True:
        return isinstance(exc, Exception)
    if not spec:
        return False
    try:
        classes = pickle.loads(spec)
    except Exception:
        return False
    return isinstance(exc, classes)


def install_cancel_signal(executor: Executor) -> None:
    signal.signal(signal.SIGUSR2, executor.on_cancel_signal)
    # a cancel must interrupt blocking calls (time.sleep) instead of restarting them
    signal.siginterrupt(signal.SIGUSR2, True)


__all__ = ["Executor", "GeneratorRun", "install_cancel_signal"]
