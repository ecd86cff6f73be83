"""Runs tasks inside a worker process and reports what they produce.

    EXEC --> load function --> resolve arguments --> call
        plain value        --> RESULT (every return at once)
        coroutine          --> run on the worker's event loop, then as above
        generator / async  --> per yield: serialize (the value is captured now), store,
        generator              report ITEM, drop the value; then END with the return
                               value or the error

Everything a generator produces is a task return that arrives early: the node maps
item i to return i (``num_returns=k``) or to a new item ref (streaming, dynamic).

Between two yields the executor reads the control channel without blocking: a CLOSE
closes the generator at its ``yield`` (its ``finally`` runs), a CANCEL ends it with
``TaskCancelledError``, and with ``generator_backpressure=N`` it waits at the ``yield``
while N items are produced but not yet taken by the caller.

Cancellation of running code: the node sends CANCEL and then SIGUSR2.  The signal
interrupts blocking calls (``time.sleep``); its handler raises ``TaskCancelledError`` in
the task's own code, but never inside the runtime's (there the request loop sees the
CANCEL and raises at a safe point).
"""
from __future__ import annotations

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
from . import output, protocol
from .protocol import DepArg
from .transport import IDLE_SPIN_SECONDS
from .worker_client import WorkerClient


class Running:
    """The task this worker is executing now."""

    __slots__ = ("task_id", "attempt", "fn_id", "name", "kind", "num_returns", "skip",
                 "backpressure", "retry_exceptions", "in_user", "async_task", "cancelled",
                 "started")

    def __init__(self, msg: tuple) -> None:
        (_, self.task_id, self.attempt, self.fn_id, _blob, self.name, _args, _deps, self.kind,
         self.num_returns, self.skip, self.backpressure, retry_exc) = msg[:13]
        self.started = time.perf_counter()
        self.retry_exceptions = retry_exc
        self.in_user = False
        self.async_task: Any = None  # the asyncio.Task of a coroutine task
        self.cancelled = False


class Executor:
    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.pid = os.getpid()
        self.functions: Dict[bytes, Any] = {}
        self.current: Optional[Running] = None
        self.cancelled: set = set()
        self.closing: set = set()
        self.acks: Dict[bytes, int] = {}
        self.exiting = False
        self._loop: Any = None  # asyncio loop, made on first use (asyncio is not imported before)
        self.flusher = _Flusher()
        client.on_control = self.on_control
        client.check_cancelled = self.check_cancelled

    # -- control messages -----------------------------------------------------------------
    def on_control(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == protocol.EXEC:
            self.client.inbox.append(msg)
        elif kind == protocol.RECLAIM:
            # the node takes back tasks queued here that have not started
            wanted = set(msg[1])
            inbox = self.client.inbox
            given = [m[1] for m in inbox if m[0] == protocol.EXEC and m[1] in wanted]
            if given:
                kept = [m for m in inbox if not (m[0] == protocol.EXEC and m[1] in wanted)]
                inbox.clear()
                inbox.extend(kept)
            # this may run in the signal handler: send only if no runtime code was
            # interrupted (it may hold the send lock); otherwise it goes with the next send
            self.client.send_soon((protocol.RECLAIMED, given))
        elif kind == protocol.CANCEL:
            self.cancelled.add(msg[1])
        elif kind == protocol.ACK:
            if msg[2] > self.acks.get(msg[1], 0):
                self.acks[msg[1]] = msg[2]
        elif kind == protocol.CLOSE:
            self.closing.add(msg[1])
        elif kind == protocol.EXIT:
            self.exiting = True

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelledError`` if the running task was cancelled."""
        state = self.current
        if state is not None and state.task_id in self.cancelled and not state.cancelled:
            state.cancelled = True
            raise TaskCancelledError(f"task {state.name} was cancelled")

    def on_cancel_signal(self, signum: int, frame: Any) -> None:
        client = self.client
        client.read_available()  # takes the CANCEL, unless a thread of ours is reading now
        state = self.current
        if state is None or state.task_id not in self.cancelled:
            return
        if state.async_task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(state.async_task.cancel)
        elif state.in_user and client.busy == 0 and not state.cancelled:
            state.cancelled = True
            raise TaskCancelledError(f"task {state.name} was cancelled")

    # -- the loop -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        inbox = self.client.inbox
        spin = IDLE_SPIN_SECONDS
        while not self.exiting:
            if inbox:
                self.execute(inbox.popleft())
                spin = IDLE_SPIN_SECONDS
                continue
            self.client.flush()
            self.client.pump(1.0, spin)
            spin = 0.0  # still idle a second later: sleep without polling

    def _report(self, state: Running, msg: tuple) -> None:
        """Send a task's result; batch it while short tasks wait in the inbox.

        The node queues a task here only when its function is short, so holding a result
        back until the inbox is empty delays it by at most a few short tasks.
        """
        seconds = time.perf_counter() - state.started
        inbox = self.client.inbox
        self.client.send(msg + (seconds,), flush=not inbox or len(inbox) > 64)

    def execute(self, msg: tuple) -> None:
        state = Running(msg)
        self.current = state
        output.set_task_name(state.name)
        try:
            self._execute(state, msg)
        finally:
            self.current = None
            self.cancelled.discard(state.task_id)
            self.closing.discard(state.task_id)
            self.acks.pop(state.task_id, None)

    def _execute(self, state: Running, msg: tuple) -> None:
        fn_id, blob, args_payload, deps = msg[3], msg[4], msg[6], msg[7]
        if state.task_id in self.cancelled:  # cancelled while it waited in the inbox
            state.cancelled = True
            self._fail(state, TaskCancelledError(f"task {state.name} was cancelled"))
            return
        try:
            fn = self.functions.get(fn_id)
            if fn is None:
                fn = self.functions[fn_id] = cloudpickle.loads(blob)
            args, kwargs = self._resolve_args(state.task_id, args_payload, deps)
        except BaseException as exc:
            self._fail(state, exc)
            return
        try:
            state.in_user = True
            try:
                self.check_cancelled()
                result = fn(*args, **kwargs)
                del args, kwargs
                if type(result) is types.CoroutineType:
                    result = self._run_coroutine(state, result)
            finally:
                state.in_user = False
        except BaseException as exc:
            self._fail(state, exc)
            return
        if self.client.forked:
            raise RuntimeError(
                f"a process forked by task {state.name} returned from the task into the "
                f"pygen worker, which is not its own: end a forked child with os._exit()")
        if type(result) in _GENERATOR_TYPES and is_generator_function(fn):
            self._run_generator(state, result)
        elif type(result) in _GENERATOR_TYPES:
            self._fail(state, TypeError(
                f"task {state.name} is a plain function and returned a "
                f"{type(result).__name__} object, which cannot be pickled as a value (and "
                f"a plain function's result is never iterated): make {state.name} a "
                f"generator function, with yield, to return its values one by one"))
        elif state.kind != protocol.RETURNS_STATIC:
            kind = "streaming" if state.kind == protocol.RETURNS_STREAMING else "dynamic"
            self._fail(state, TypeError(
                f"num_returns={kind!r} needs a generator function, but {state.name} "
                f"returned {type(result).__name__}"))
        else:
            self._finish_static(state, result)

    def _resolve_args(self, task_id: bytes, payload: tuple, deps: List[tuple]) -> Tuple[list, dict]:
        _, (args, kwargs) = self.client.decode(ids.args_id(task_id), payload)
        if deps:
            values = [self.client.decode(oid, dep_payload)[1] for oid, dep_payload in deps]
            args = [values[a.index] if type(a) is DepArg else a for a in args]
            kwargs = {k: values[v.index] if type(v) is DepArg else v for k, v in kwargs.items()}
        return args, kwargs

    def _run_coroutine(self, state: Running, coro: Any) -> Any:
        import asyncio

        loop = self._event_loop()
        task = state.async_task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise TaskCancelledError(f"task {state.name} was cancelled") from None
        finally:
            state.async_task = None

    def _event_loop(self) -> Any:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    # -- results -------------------------------------------------------------------------------
    def _finish_static(self, state: Running, result: Any) -> None:
        k = state.num_returns
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
                self._fail(state, ValueError(
                    f"task {state.name} has num_returns={k} but returned {got}"))
                return
        returns = []
        try:
            for i, value in enumerate(values):
                payload, contained = self.client.encode(value, ids.return_id(state.task_id, i))
                returns.append((i, payload, contained))
        except BaseException as exc:  # e.g. an unpicklable return value
            self._fail(state, _could_not_store(exc, f"the return value of task {state.name}"))
            return
        del values, result
        self._report(state, (protocol.RESULT, state.task_id, state.attempt, returns, False))

    def _error_payload(self, state: Running, exc: BaseException) -> Tuple[tuple, bool]:
        """Encode the error for ``exc`` (always inline) and whether it may be retried."""
        if isinstance(exc, TaskCancelledError) and state.cancelled:
            err: BaseException = exc
            retryable = False
        elif isinstance(exc, (TaskError, InconsistentRetryError)):
            err, retryable = exc, False
        else:
            err = TaskError.from_exception(state.name, exc, self.pid)
            retryable = _matches(state.retry_exceptions, exc)
        try:
            sv = serialization.serialize_error(err)
        except Exception:
            # the exception cannot be pickled: keep its type, message and traceback
            stand_in = RemoteExceptionInfo(f"{type(exc).__module__}.{type(exc).__qualname__}",
                                           str(exc))
            tb = err.traceback_str if isinstance(err, TaskError) else ""
            sv = serialization.serialize(TaskError(state.name, tb, stand_in, self.pid), error=True)
        return (sv.flags, sv.to_bytes(), sv.total_size), retryable

    def _fail(self, state: Running, exc: BaseException) -> None:
        if self.client.forked:
            raise exc  # a child the task forked is leaving (sys.exit...): its end, not the task's
        payload, retryable = self._error_payload(state, exc)
        if state.kind == protocol.RETURNS_STATIC:
            returns = [(i, payload, []) for i in range(state.num_returns)]
            self._report(state, (protocol.RESULT, state.task_id, state.attempt, returns,
                                 retryable))
        else:
            end = protocol.END_CANCELLED if state.cancelled else protocol.END_RAISED
            self._report(state, (protocol.END, state.task_id, state.attempt, 0, payload, [],
                                 retryable, end))

    # -- generators ------------------------------------------------------------------------------
    def _run_generator(self, state: Running, gen: Any) -> None:
        is_async = type(gen) is types.AsyncGeneratorType
        static = state.kind == protocol.RETURNS_STATIC
        k = state.num_returns
        index = 0
        held: Optional[tuple] = None  # static: the k-th value, reported once the end is known
        outcome: Tuple[int, Any] = (protocol.END_RETURNED, None)
        client = self.client
        batch = _ItemBatcher(client, state, self.flusher)
        next_check = 0.0
        while True:
            # control point: the generator is paused at a yield (or has not started)
            now = time.perf_counter()
            if now >= next_check:
                next_check = now + CONTROL_CHECK_INTERVAL
                client.read_available()
            if state.task_id in self.closing:
                self._close_gen(gen, is_async)
                outcome = (protocol.END_CLOSED, None)
                break
            try:
                self.check_cancelled()
            except TaskCancelledError as exc:
                self._close_gen(gen, is_async)
                outcome = (protocol.END_CANCELLED, exc)
                break
            batch.before_step()
            try:
                state.in_user = True
                try:
                    if is_async:
                        value = self._run_coroutine(state, gen.__anext__())
                    else:
                        value = next(gen)
                finally:
                    state.in_user = False
            except (StopIteration, StopAsyncIteration) as stop:
                outcome = (protocol.END_RETURNED, getattr(stop, "value", None))
                break
            except TaskCancelledError as exc:
                outcome = (protocol.END_CANCELLED if state.cancelled else protocol.END_RAISED, exc)
                break
            except BaseException as exc:
                outcome = (protocol.END_RAISED, exc)
                break
            batch.after_step()
            if index < state.skip:  # a retry: this item was handed out by an earlier attempt
                index += 1
                value = None
                continue
            if static and index >= k:
                self._close_gen(gen, is_async)
                outcome = (protocol.END_RAISED, ValueError(
                    f"task {state.name} has num_returns={k} but its generator yielded more "
                    f"than {k} values"))
                break
            oid = (ids.return_id(state.task_id, index) if static
                   else ids.item_id(state.task_id, index, state.attempt))
            try:
                payload, contained = client.encode(value, oid)
            except BaseException as exc:  # unpicklable item, store full: the stream ends here
                self._close_gen(gen, is_async)
                outcome = (protocol.END_RAISED,
                           _could_not_store(exc, f"item {index} of generator task {state.name}"))
                break
            value = None  # the worker's copy is dropped as soon as the item is stored
            if static and index == k - 1:
                held = (oid, payload, contained)
            else:
                batch.write(index, payload, contained)
            index += 1
            if state.backpressure:
                batch.flush()
                self._wait_for_consumer(state, index)
        batch.flush()
        self._end_generator(state, index, outcome, held)

    def _wait_for_consumer(self, state: Running, produced: int) -> None:
        """Pause at the yield while ``backpressure`` items are produced but not taken."""
        while (produced - self.acks.get(state.task_id, 0) >= state.backpressure
               and state.task_id not in self.closing and state.task_id not in self.cancelled
               and not self.exiting):
            self.client.pump(None)

    def _close_gen(self, gen: Any, is_async: bool) -> None:
        try:
            if is_async:
                self._event_loop().run_until_complete(gen.aclose())
            else:
                gen.close()
        except BaseException:
            pass  # an error in a finally block during close has nowhere to go but the end

    def _end_generator(self, state: Running, count: int, outcome: Tuple[int, Any],
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
        if state.kind == protocol.RETURNS_STATIC:
            if end_kind == protocol.END_RETURNED and count < state.skip:
                # a retry that stops before the refs an earlier attempt made ready
                end_kind, value = protocol.END_RAISED, InconsistentRetryError(
                    f"task {state.name} was retried and its new attempt yielded {count} "
                    f"values, fewer than the {state.skip} already returned")
            elif end_kind == protocol.END_RETURNED and count < state.num_returns:
                end_kind, value = protocol.END_RAISED, ValueError(
                    f"task {state.name} has num_returns={state.num_returns} but its generator "
                    f"yielded only {count} values")
            if held is not None and end_kind == protocol.END_RETURNED:
                self.client.send((protocol.ITEM, state.task_id, state.attempt,
                                  state.num_returns - 1, held[1], held[2]))
            elif held is not None and held[1][1] is None:
                self.client.store.delete(held[0])  # stored, never reported: nobody sees it
        elif end_kind == protocol.END_RETURNED:
            try:
                payload, contained = self.client.encode(value, ids.completion_id(state.task_id))
            except BaseException as exc:  # an unpicklable return value
                end_kind, value = protocol.END_RAISED, _could_not_store(
                    exc, f"the return value of generator task {state.name}")
        if end_kind in (protocol.END_RAISED, protocol.END_CANCELLED):
            payload, retryable = self._error_payload(state, value)
        self._report(state, (protocol.END, state.task_id, state.attempt, count, payload,
                             contained, retryable, end_kind))


_GENERATOR_TYPES = (types.GeneratorType, types.AsyncGeneratorType)

# How often a running generator reads its control channel between yields.  CLOSE and
# CANCEL do not wait for it: they come with SIGUSR2, whose handler reads them at once, so
# the check at each yield is a set lookup; this read only picks up ACKs and stragglers.
CONTROL_CHECK_INTERVAL = 0.001


class _ItemBatcher:
    """Writes a generator's items in order: one at a time, or in batches while it is fast.

    A write wakes the driver (20-300 us here); a generator that yields every few
    microseconds would spend most of its time on that.  While the last step took less
    than FAST_STEP, items are gathered and written as one ITEMS message when MAX_ITEMS
    are gathered or the first of them is MAX_DELAY old -- by the ``_Flusher`` thread if
    the generator is busy or blocked in its next step then, so no item waits longer.
    The first item always goes out at once (time to first item matters).  Every write
    goes through ``lock``, in index order.
    """

    FAST_STEP = 50e-6
    MAX_ITEMS = 64
    MAX_DELAY = 0.001

    __slots__ = ("client", "state", "flusher", "lock", "items", "first_at", "step_started",
                 "last_step", "sent_any")

    def __init__(self, client: WorkerClient, state: Running, flusher: "_Flusher") -> None:
        self.client = client
        self.state = state
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
        if len(items) == 1:
            index, payload, contained = items[0]
            self.client.send((protocol.ITEM, self.state.task_id, self.state.attempt, index,
                              payload, contained))
        elif items:
            self.client.send((protocol.ITEMS, self.state.task_id, self.state.attempt, items))


class _Flusher:
    """A thread that writes a batch of items that has waited long enough.

    It sleeps until a batch is due; a generator step that blocks (sleep, I/O, a lock)
    releases the GIL, so the items gathered before it go out within MAX_DELAY.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: Optional[Tuple[_ItemBatcher, float]] = None
        self._thread: Optional[threading.Thread] = None

    def schedule(self, batcher: _ItemBatcher, deadline: float) -> None:
        with self._cond:
            if self._due is not None and self._due[0] is batcher:
                return
            self._due = (batcher, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pygen-flusher", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._due is None:
                    self._cond.wait()
                batcher, deadline = self._due
                left = deadline - time.perf_counter()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._due = None
            batcher.flush()


def _could_not_store(exc: BaseException, what: str) -> BaseException:
    """``exc`` with the value named: a pickling error becomes a TypeError that says which
    value could not be pickled; a full store keeps its own type (ObjectStoreFullError)."""
    from ..exceptions import PygenError

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


__all__ = ["Executor", "install_cancel_signal", "threading", "InconsistentRetryError"]
