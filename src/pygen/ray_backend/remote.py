"""What runs inside Ray's workers: the user's functions and classes, wrapped so that
pygen's guarantees hold there too.

    driver: ray.remote(**options)(task_wrapper(fn, meta)) .remote(*args)
    worker: task_wrapper -> in_worker() (pygen calls in the task go to Ray)
                         -> the memory limit's watch (SPEC §7)
                         -> fn(*args) with pygen's semantics:
                              num_returns=k  the k-th value is held until the end: an error
                                             after exactly k values, or a (k+1)-th value,
                                             goes into ref k; fewer values: the rest hold
                                             an error (SPEC §4.1)
                              streaming      a generator's return value cannot reach
                                             completed() on Ray: an error says so
                              async          coroutines and async generators run on an
                                             event loop of the worker

Actors: ``actor_class(cls, is_async)`` is a class with the user's instance inside and
two methods that every call goes through (``_pygen_call``, ``_pygen_stream``); its name
is the user class's, so Ray prefixes the actor's output with it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional

from .. import context
from ..callables import is_generator_function
from ..exceptions import OutOfMemoryError, TaskError
from ..runtime import not_on

# How often the memory limit's watch reads RssAnon (as the local runtime's monitor).
MEMORY_POLL_INTERVAL = 0.05
# A task that keeps its memory past this after OutOfMemoryError was raised in it (it
# caught the error, or is stuck in C) is killed: the limit holds.
KILL_AFTER = 2.0


def in_worker() -> Any:
    """Make pygen in this Ray worker speak to Ray (nested calls, refs unpickled here)."""
    runtime = context.current()
    if runtime is None or runtime.closed:
        from .runtime import RayRuntime

        runtime = RayRuntime(is_worker=True)
        context.set_current(runtime)
    return runtime


def _as_pygen(args: tuple, kwargs: Dict[str, Any]) -> "tuple[tuple, Dict[str, Any]]":
    """The arguments as pygen gives them: Ray resolved a top-level ref to a dynamic
    generator into Ray's own DynamicObjectRefGenerator, of Ray's refs; the task sees
    pygen's, as it would from pygen.get."""
    runtime = in_worker()
    return (tuple(runtime._value(a) for a in args),
            {key: runtime._value(v) for key, v in kwargs.items()})


# -- tasks -------------------------------------------------------------------------------------

def task_wrapper(fn: Callable[..., Any], name: str, kind: str, k: int,
                 memory_limit: Optional[int]) -> Callable[..., Any]:
    """The function Ray runs for task ``fn`` (a generator function when ``fn`` is one)."""
    if is_generator_function(fn):
        def run_generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            args, kwargs = _as_pygen(args, kwargs)
            with _MemoryWatch(memory_limit, name):
                yield from _semantics(_iterate(fn(*args, **kwargs)), name, kind, k)
        wrapper: Callable[..., Any] = run_generator
    else:
        def run(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = _as_pygen(args, kwargs)
            with _MemoryWatch(memory_limit, name):
                return _call(fn, name, args, kwargs)
        wrapper = run
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def _call(fn: Callable[..., Any], name: str, args: tuple, kwargs: Dict[str, Any]) -> Any:
    """Call a plain function: a coroutine runs to its end; a generator object returned by
    a plain function is an error (SPEC §6); SystemExit reaches the caller as an error."""
    try:
        result = fn(*args, **kwargs)
        if _is_coroutine(result):
            import asyncio

            result = asyncio.run(result)
    except SystemExit as exc:  # a task's sys.exit must not end the worker (nor the caller)
        raise TaskError.from_exception(name, exc, os.getpid()) from None
    if _is_generator(result):
        raise TypeError(f"task {name} is a plain function and returned a "
                        f"{type(result).__name__} object, which cannot be pickled as a value "
                        f"(and a plain function's result is never iterated): make {name} a "
                        f"generator function, with yield, to return its values one by one")
    return result


def _iterate(gen: Any) -> Iterator[Any]:
    """A sync iterator over ``gen`` (an async generator is driven on an event loop);
    its ``return`` value is this iterator's."""
    if hasattr(gen, "__anext__"):
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    value = loop.run_until_complete(gen.__anext__())
                except StopAsyncIteration:
                    return None
                yield value
        finally:
            try:
                loop.run_until_complete(gen.aclose())
            finally:
                loop.close()
    # next() by hand, not ``yield from``: Ray sends values into the generator it runs,
    # which a user's ``yield from range(n)`` cannot take; closing still reaches the
    # user's generator, so its ``finally`` runs
    try:
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                return stop.value
            yield value
    finally:
        gen.close()


def _semantics(items: Iterator[Any], name: str, kind: str, k: int) -> Iterator[Any]:
    """pygen's meaning of a generator's values, for Ray to store (see the module doc)."""
    if kind != "static":
        result = yield from items
        if result is not None:
            raise not_on("ray", "a generator's return value (ObjectRefGenerator.completed())",
                         f"task {name} returned {type(result).__name__}; yield it instead")
        return
    count = 0
    held: Any = None
    for value in items:
        if count < k - 1:
            yield value
        elif count == k - 1:
            held = value
        else:
            items.close()  # type: ignore[attr-defined]
            raise ValueError(f"task {name} has num_returns={k} but its generator yielded more "
                             f"than {k} values")
        count += 1
    if count < k:
        raise ValueError(f"task {name} has num_returns={k} but its generator yielded only "
                         f"{count} values")
    if k:
        yield held


def _is_coroutine(value: Any) -> bool:
    return type(value).__name__ == "coroutine" and hasattr(value, "send")


def _is_generator(value: Any) -> bool:
    return type(value).__name__ in ("generator", "async_generator")


class _MemoryWatch:
    """The memory limit of the task running on this thread (SPEC §7), over Ray.

    A thread reads the worker's RssAnon; past the limit it raises OutOfMemoryError (naming
    the task, the limit and the peak) in the task's thread; a task that still holds its
    memory KILL_AFTER seconds later is killed with its worker.  The error is retried like
    a crash: the task's retry_exceptions include it.
    """

    def __init__(self, limit: Optional[int], name: str) -> None:
        self.limit = limit
        self.name = name
        self.done = threading.Event()
        self.thread = threading.get_ident()

    def __enter__(self) -> "_MemoryWatch":
        if self.limit is not None:
            threading.Thread(target=self._watch, name="pygen-memory", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()

    def _watch(self) -> None:
        peak = 0
        raised_at: Optional[float] = None
        limit = self.limit or 0
        while not self.done.wait(MEMORY_POLL_INTERVAL):
            rss = _rss_anon()
            peak = max(peak, rss)
            if rss <= limit:
                raised_at = None
                continue
            if raised_at is None:
                raised_at = time.monotonic()
                error = _oom_class(self.name, limit, peak)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread),
                                                           ctypes.py_object(error))
            elif time.monotonic() - raised_at > KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)


def _oom_class(name: str, limit: int, peak: int) -> type:
    """An OutOfMemoryError subclass whose no-argument construction (what an asynchronous
    exception gets) carries the message."""
    text = (f"task {name} was killed for using too much memory: its worker (pid "
            f"{os.getpid()}) reached {_mib(peak)} of private memory, over its limit of "
            f"{_mib(limit)}; give it a larger memory= option or worker_memory_limit=, "
            f"or yield its results one by one (a generator)")

    class TaskOutOfMemory(OutOfMemoryError):
        def __init__(self, *args: Any) -> None:
            super().__init__(*(args or (text,)))

        def __reduce__(self) -> Any:
            return (OutOfMemoryError, self.args)

    return TaskOutOfMemory


def _rss_anon() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB ({nbytes:,} bytes)"


# -- actors ------------------------------------------------------------------------------------

def actor_class(cls: type, is_async: bool, descriptor: bytes) -> type:
    """The class Ray instantiates for pygen actor class ``cls``."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        args, kwargs = _as_pygen(args, kwargs)
        self._pygen_instance = cls(*args, **kwargs)

    def descriptor_of(self: Any) -> bytes:
        return descriptor

    def pid(self: Any) -> int:
        return os.getpid()

    if is_async:
        async def call(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
            args, kwargs = _as_pygen(args, kwargs)
            fn = getattr(self._pygen_instance, method)
            name = f"{cls.__name__}.{method}"
            try:
                result = fn(*args, **kwargs)
                if _is_coroutine(result):
                    result = await result
            except SystemExit as exc:
                raise TaskError.from_exception(name, exc, os.getpid()) from None
            if _is_generator(result):
                raise TypeError(f"actor method {name} is a plain method and returned a "
                                f"{type(result).__name__} object: make it a generator method")
            return result

        async def stream(self: Any, method: str, kind: str, k: int, *args: Any,
                         **kwargs: Any) -> Any:
            args, kwargs = _as_pygen(args, kwargs)
            gen = getattr(self._pygen_instance, method)(*args, **kwargs)
            name = f"{cls.__name__}.{method}"
            if hasattr(gen, "__anext__"):
                count, held = 0, None
                async for value in gen:
                    if kind != "static" or count < k - 1:
                        yield value
                    elif count == k - 1:
                        held = value
                    else:
                        await gen.aclose()
                        raise ValueError(f"task {name} has num_returns={k} but its generator "
                                         f"yielded more than {k} values")
                    count += 1
                if kind == "static":
                    if count < k:
                        raise ValueError(f"task {name} has num_returns={k} but its generator "
                                         f"yielded only {count} values")
                    if k:
                        yield held
            else:
                for value in _semantics(_iterate(gen), name, kind, k):
                    yield value
    else:
        def call(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
            args, kwargs = _as_pygen(args, kwargs)
            return _call(getattr(self._pygen_instance, method), f"{cls.__name__}.{method}",
                         args, kwargs)

        def stream(self: Any, method: str, kind: str, k: int, *args: Any,
                   **kwargs: Any) -> Iterator[Any]:
            args, kwargs = _as_pygen(args, kwargs)
            gen = getattr(self._pygen_instance, method)(*args, **kwargs)
            yield from _semantics(_iterate(gen), f"{cls.__name__}.{method}", kind, k)

    namespace = {"__init__": init, "_pygen_call": call, "_pygen_stream": stream,
                 "_pygen_descriptor": descriptor_of, "_pygen_pid": pid,
                 "__module__": cls.__module__, "__doc__": cls.__doc__}
    # A method of its own for each of the user's methods: a call then carries only the
    # user's arguments.  Through _pygen_call the method's name was one more argument for
    # Ray to serialize, which took a call without arguments off Ray's fast path (1,000
    # calls of a no-op method: 200 ms instead of 130 ms measured here).
    for method in _methods(cls):
        if method not in namespace:
            namespace[method] = _caller(call, method, is_async)
    return type(cls.__name__, (), namespace)


def _methods(cls: type) -> "list[str]":
    """The names of ``cls``'s methods a handle can call (dunders go through _pygen_call)."""
    import inspect

    return [name for name, value in inspect.getmembers(cls)
            if not name.startswith("__") and (inspect.isfunction(value)
                                              or inspect.ismethod(value))]


def _caller(call: Callable[..., Any], method: str, is_async: bool) -> Callable[..., Any]:
    if is_async:
        async def caller(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await call(self, method, *args, **kwargs)
        wrapper: Callable[..., Any] = caller
    else:
        def sync_caller(self: Any, *args: Any, **kwargs: Any) -> Any:
            return call(self, method, *args, **kwargs)
        wrapper = sync_caller
    wrapper.__name__ = wrapper.__qualname__ = method
    return wrapper
