"""A worker that became an actor: its instance, and the execution model of its calls.

    StartActor --> build the class, run __init__ --> Result (None, or __init__'s error)
    Exec(method) --> host.submit --> SyncHost      the main thread, one call at a time, in order
                                     ThreadedHost  a pool of max_concurrency threads
                                     AsyncHost     one asyncio loop (its own thread), up to
                                                   max_concurrency calls at once

In every model the main thread keeps reading the control channel (the executor's
serve loop), so calls arrive, acks and cancels are seen, and replies to requests made
by calls on other threads are handed to them while those calls run.  Generator methods
are driven by the executor's ``GeneratorRun`` (sync loop) or by ``AsyncHost``'s asyncio
twin of that loop: the same decisions at each yield.
"""
from __future__ import annotations

import logging
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Dict, Optional

import cloudpickle

from ..callables import is_generator_function
from ..exceptions import TaskCancelledError
from . import calls, output, protocol
from .calls import Call
from .executor import _GENERATOR_TYPES, GeneratorRun

if TYPE_CHECKING:
    from .executor import Executor


def start_actor(ex: "Executor", msg: protocol.StartActor) -> Any:
    """Run ``__init__``; report how it went; return the host of the actor's calls (None
    if ``__init__`` raised: the node ends this worker)."""
    client = ex.client
    output.set_task_name(msg.name)  # every line of this process is the actor's now
    call = Call(msg.task_id, msg.attempt, f"{msg.name}.__init__")
    token = calls.enter(call)
    ex.running[call.task_id] = call
    try:
        cls = ex.functions.get(msg.class_id)
        if cls is None:
            cls = ex.functions[msg.class_id] = cloudpickle.loads(msg.blob)
        args, kwargs = ex.resolve_args(msg.task_id, msg.args, msg.deps)
        call.in_user = True
        try:
            instance = cls(*args, **kwargs)
        finally:
            call.in_user = False
    except BaseException as exc:
        payload, _ = ex.error_payload(call, exc)
        client.send(protocol.Result(msg.task_id, msg.attempt, [(0, payload, [])], False,
                                    time.perf_counter() - call.started))
        return None
    finally:
        ex._forget(call)
        calls.leave(token)
    host_class = {protocol.MODEL_SYNC: SyncHost, protocol.MODEL_THREADED: ThreadedHost,
                  protocol.MODEL_ASYNC: AsyncHost}[msg.model]
    host = host_class(ex, instance, msg.max_concurrency)
    none = ex.client.encode(None, b"")[0]
    client.send(protocol.Result(msg.task_id, msg.attempt, [(0, none, [])], False,
                                time.perf_counter() - call.started))
    return host


class SyncHost:
    """Calls run on the main thread, one at a time, in the order they came."""

    def __init__(self, ex: "Executor", instance: Any, max_concurrency: int) -> None:
        self.ex = ex
        self.instance = instance

    def submit(self, msg: protocol.Exec) -> None:
        self.ex.execute(msg, self.instance)

    def wake_generator(self, task_id: bytes) -> None:
        pass  # its generator waits in pump(), which returns on every message

    def stop(self) -> None:
        pass


class ThreadedHost:
    """Calls run on up to ``max_concurrency`` threads; they start in the order they came."""

    def __init__(self, ex: "Executor", instance: Any, max_concurrency: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.ex = ex
        self.instance = instance
        self.threads = ThreadPoolExecutor(max_workers=max_concurrency,
                                          thread_name_prefix="pygen-actor")

    def submit(self, msg: protocol.Exec) -> None:
        self.threads.submit(self._run, msg)

    def _run(self, msg: protocol.Exec) -> None:
        try:
            self.ex.execute(msg, self.instance)
        except BaseException:  # a cancellation that came after the call ended, or a bug
            _internal_error(f"running {msg.name}")

    def wake_generator(self, task_id: bytes) -> None:
        pass  # its generator waits in pump(), which returns on every message

    def stop(self) -> None:
        self.threads.shutdown(wait=False)


class AsyncHost:
    """Calls run as asyncio tasks on one event loop in a thread of its own, up to
    ``max_concurrency`` at once (the others wait for a slot, in order)."""

    def __init__(self, ex: "Executor", instance: Any, max_concurrency: int) -> None:
        import asyncio

        self.asyncio = asyncio
        self.ex = ex
        self.instance = instance
        self.limit = max_concurrency
        self.loop = asyncio.new_event_loop()
        self.slots: Any = None            # an asyncio.Semaphore, made on the loop
        self.wakeups: Dict[bytes, Any] = {}  # task id -> asyncio.Event of a paused generator
        self.thread = threading.Thread(target=self._serve, name="pygen-actor-loop",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.asyncio.set_event_loop(self.loop)
        self.slots = self.asyncio.Semaphore(self.limit)
        self.loop.run_forever()

    def submit(self, msg: protocol.Exec) -> None:
        self.loop.call_soon_threadsafe(self._start, msg)

    def _start(self, msg: protocol.Exec) -> None:
        # on the loop, in the order calls came: each becomes a task at once (so that a
        # cancel finds it), and waits for a slot inside
        self.loop.create_task(self._run(msg))

    async def _run(self, msg: protocol.Exec) -> None:
        ex = self.ex
        call = Call.of(msg)
        token = calls.enter(call)
        call.async_task = self.asyncio.current_task()
        ex.running[call.task_id] = call
        try:
            async with self.slots:
                await self._execute(call, msg)
        except self.asyncio.CancelledError:  # cancelled while it waited for a slot
            call.cancelled = True
            ex.fail(call, TaskCancelledError(f"task {call.name} was cancelled"))
        except BaseException:
            _internal_error(f"running {call.name}")
        finally:
            ex._forget(call)
            self.wakeups.pop(call.task_id, None)
            calls.leave(token)

    async def _execute(self, call: Call, msg: protocol.Exec) -> None:
        ex = self.ex
        prepared = ex.prepare(call, msg, self.instance)
        if prepared is None:
            return
        fn, args, kwargs = prepared
        del prepared
        try:
            ex.check_cancelled(call)
            result = fn(*args, **kwargs)
            del args, kwargs
            # not asyncio.iscoroutine: before Python 3.12 it is true of plain generators too
            if type(result) is types.CoroutineType:
                result = await result
        except self.asyncio.CancelledError:
            call.cancelled = True
            ex.fail(call, TaskCancelledError(f"task {call.name} was cancelled"))
            return
        except BaseException as exc:
            ex.fail(call, exc)
            return
        if type(result) in _GENERATOR_TYPES and is_generator_function(fn):
            await self._run_generator(call, result)
        else:
            ex.finish_plain(call, result)

    async def _run_generator(self, call: Call, gen: Any) -> None:
        """The executor's generator loop, with ``await`` at each step and pause."""
        run = GeneratorRun(self.ex, call, gen)
        is_async = run.is_async
        while True:
            if run.at_yield():
                await self._close(gen, is_async)
                break
            run.before_step()
            try:
                value = await gen.__anext__() if is_async else next(gen)
            except self.asyncio.CancelledError:
                call.cancelled = True
                run.stopped(TaskCancelledError(f"task {call.name} was cancelled"))
                await self._close(gen, is_async)
                break
            except BaseException as exc:
                run.stopped(exc)
                break
            if run.accept(value):
                await self._close(gen, is_async)
                break
            value = None  # the worker's copy is dropped as soon as the item is stored
            if run.must_wait():
                run.batch.flush()
                await self._wait_for_consumer(run)
        run.finish()

    async def _wait_for_consumer(self, run: GeneratorRun) -> None:
        task_id = run.call.task_id
        event = self.wakeups.setdefault(task_id, self.asyncio.Event())
        while run.must_wait():
            event.clear()
            if not run.must_wait():  # an Ack came between the check and the clear
                break
            try:
                # the main thread reads Acks and sets the event; the timeout is a safety
                # net for an Ack read by a thread that found no event to set yet
                await self.asyncio.wait_for(event.wait(), 0.05)
            except self.asyncio.TimeoutError:
                pass

    def wake_generator(self, task_id: bytes) -> None:
        event = self.wakeups.get(task_id)
        if event is not None:
            self.loop.call_soon_threadsafe(event.set)

    async def _close(self, gen: Any, is_async: bool) -> None:
        try:
            if is_async:
                await gen.aclose()
            else:
                gen.close()
        except BaseException:
            pass  # an error in a finally block during close has nowhere to go but the end

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _internal_error(what: str) -> None:
    """A bug in pygen, with the traceback being handled, through the "pygen" logger."""
    logging.getLogger("pygen").error("pygen internal error %s", what, exc_info=True)


__all__ = ["start_actor", "SyncHost", "ThreadedHost", "AsyncHost", "Optional"]
