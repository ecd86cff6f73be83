"""The public functions: init, shutdown, remote, put, get, wait, cancel."""
from __future__ import annotations

import atexit
import numbers
import os
import threading
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, List, Optional,
                    Sequence, Tuple, Type, TypeVar, Union, overload)

from . import context, options
from ._typing import C, P, T, Y
from .generators import ObjectRefGenerator
from .object_ref import ObjectRef

if TYPE_CHECKING:
    from typing import Coroutine

    from ._typing import RemoteDecorator
    from .actor import ActorClass, ActorHandle
    from .remote_function import RemoteFunction

# what pygen.wait takes and gives back: refs and streaming generators, as given
W = TypeVar("W", bound=Union[ObjectRef[Any], ObjectRefGenerator[Any]])

__all__ = ["init", "shutdown", "is_initialized", "remote", "put", "get", "wait", "cancel",
           "get_actor", "kill", "method"]

_lock = threading.RLock()
_atexit_registered = False


def _fresh_lock_after_fork() -> None:
    # a thread of the parent may have held it when the child was forked
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)

# Smallest arena worth starting: room for the object table and a few large values.
MIN_OBJECT_STORE_MEMORY = 16 * 2**20
# Share of RAM the arena takes by default (as Ray does), bounded by /dev/shm's free space.
DEFAULT_STORE_FRACTION = 0.30
SHM_DIR = "/dev/shm"


def _in_worker() -> bool:
    runtime = context.current()
    if runtime is not None:
        return runtime.is_worker
    if "PYGEN_WORKER_ID" in os.environ:
        return True
    from .ray_backend.connect import in_ray_worker

    return in_ray_worker()


def _shm_free() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def _default_store_size() -> int:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(MIN_OBJECT_STORE_MEMORY, min(int(ram * DEFAULT_STORE_FRACTION),
                                           int(_shm_free() * 0.9)))


def init(num_cpus: Optional[float] = None, object_store_memory: Optional[int] = None, *,
         address: Optional[str] = None, worker_memory_limit: Optional[int] = None,
         spill_dir: Optional[str] = None, ignore_reinit_error: bool = False,
         log_to_driver: bool = True) -> None:
    """Start pygen: the object store, the node and ``num_cpus`` worker processes.

    With ``address`` (``"auto"`` or ``"HOST:PORT"``; default: the environment variable
    PYGEN_ADDRESS), pygen runs on that Ray cluster instead, through Ray's public API
    (``pip install 'pygen[ray]'``; docs/cluster.md says what differs).
    Inside a worker this does nothing (a module that calls it at import time is fine).
    Arguments left out default to the environment variables PYGEN_NUM_CPUS,
    PYGEN_OBJECT_STORE_MEMORY and PYGEN_WORKER_MEMORY_LIMIT when set.
    """
    if _in_worker():
        return
    with _lock:
        runtime = context.current()
        if runtime is not None and not runtime.closed:
            if ignore_reinit_error:
                return
            raise RuntimeError("pygen.init() was already called; call pygen.shutdown() first, "
                               "or pass ignore_reinit_error=True")
        from_env = address is None
        if from_env:
            address = os.environ.get("PYGEN_ADDRESS") or None
        if address is not None:
            from .ray_backend.connect import connect

            local_only = {"num_cpus": num_cpus, "object_store_memory": object_store_memory,
                          "spill_dir": spill_dir}
            worker_memory_limit = _checked(
                worker_memory_limit, "PYGEN_WORKER_MEMORY_LIMIT", int,
                lambda v: options.TASK_OPTIONS["memory"][1]("worker_memory_limit", v))
            context.set_current(connect(address, local_only, from_env=from_env,
                                        worker_memory_limit=worker_memory_limit,
                                        log_to_driver=log_to_driver))
            _register_atexit()
            return
        # Every argument is checked before anything is made: a bad one leaves nothing.
        # Left out, they default to the environment (read here, once), checked the same way.
        cpus = _checked(num_cpus, "PYGEN_NUM_CPUS", float, _check_num_cpus)
        size = _checked(object_store_memory, "PYGEN_OBJECT_STORE_MEMORY", int, _store_size)
        worker_memory_limit = _checked(
            worker_memory_limit, "PYGEN_WORKER_MEMORY_LIMIT", int,
            lambda v: options.TASK_OPTIONS["memory"][1]("worker_memory_limit", v))
        if spill_dir is not None:
            if not isinstance(spill_dir, (str, os.PathLike)):
                raise TypeError(f"spill_dir must be a path (str), got {type(spill_dir).__name__}")
            if not os.path.isdir(spill_dir):
                raise ValueError(f"spill_dir {spill_dir!r} is not a directory")

        from . import _store
        from .core.driver_client import DriverClient
        from .core.local_runtime import LocalRuntime
        from .core.node import Node

        store = _store.Store.create(size)
        node = None
        try:
            store.unlink()  # from now on only descriptors keep the arena: nothing is left behind
            node = Node(cpus, store, worker_memory_limit=worker_memory_limit,
                        spill_dir=spill_dir, log_to_driver=log_to_driver)
            node.start()
            context.set_current(LocalRuntime(DriverClient(node)))
        except BaseException:
            # A failed init releases what it made: workers, threads, descriptors, arena.
            if node is not None:
                node.shutdown()
            store.close()
            raise
        _register_atexit()


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True


def _checked(value: Any, env: str, kind: type, check: Callable[[Any], Any]) -> Any:
    """``check(value)``; for a value left out (None), ``check`` of environment variable
    ``env`` read as a ``kind`` (or of None when it is unset), its errors naming ``env``."""
    raw = os.environ.get(env) if value is None else None
    if raw is None:
        return check(value)
    try:
        return check(kind(raw))
    except (TypeError, ValueError) as e:
        what = "an integer" if kind is int else "a number"
        reason = str(e) if not str(e).startswith(("invalid literal", "could not convert")) \
            else f"not {what}"
        raise ValueError(f"environment variable {env}={raw!r}: {reason}") from None


def _check_num_cpus(num_cpus: Any) -> float:
    """``num_cpus`` as a float: a finite number >= 0 (0: no task runs; put/get work)."""
    if num_cpus is None:
        return float(os.cpu_count() or 1)
    return options.cpu_count("num_cpus", num_cpus)


def _store_size(requested: Optional[int]) -> int:
    free = _shm_free()
    if requested is None:
        return _default_store_size()
    if isinstance(requested, bool) or not isinstance(requested, numbers.Integral):
        # floats too, NaN and infinity among them: a size in bytes is a whole number
        raise TypeError(f"object_store_memory must be an int (bytes), "
                        f"got {type(requested).__name__}")
    if requested < MIN_OBJECT_STORE_MEMORY:
        raise ValueError(f"object_store_memory must be at least {MIN_OBJECT_STORE_MEMORY} bytes, "
                         f"got {requested}")
    if requested > free:
        raise ValueError(
            f"object_store_memory={requested} bytes does not fit in {SHM_DIR}, which has "
            f"{free} bytes free: pass a smaller object_store_memory (at most {free}), or make "
            f"{SHM_DIR} larger (e.g. `mount -o remount,size=<bytes> {SHM_DIR}`, or "
            f"`--shm-size` for a container)")
    return int(requested)


def shutdown() -> None:
    """Stop the workers and remove the store; a later ``init`` starts afresh.

    Only the process that started the runtime shuts it down: in a child forked after
    ``init`` (whose exit runs this through ``atexit``) there is nothing to shut down.
    """
    if _in_worker():
        return
    with _lock:
        runtime = context.current()
        if runtime is None:
            return
        context.set_current(None)
        runtime.shutdown()


def is_initialized() -> bool:
    """True between ``init`` (or the first call that starts pygen) and ``shutdown``."""
    runtime = context.current()
    return runtime is not None and not runtime.closed


@overload
def remote(cls: Type[C], /) -> ActorClass[C]: ...  # type: ignore[overload-overlap]


@overload
def remote(fn: Callable[P, Iterator[Y]], /  # type: ignore[overload-overlap]
           ) -> RemoteFunction[P, ObjectRefGenerator[Y]]: ...


@overload
def remote(fn: Callable[P, AsyncIterator[Y]], /  # type: ignore[overload-overlap]
           ) -> RemoteFunction[P, ObjectRefGenerator[Y]]: ...


@overload
def remote(fn: Callable[P, Coroutine[Any, Any, T]], /) -> RemoteFunction[P, ObjectRef[T]]: ...


@overload
def remote(fn: Callable[P, T], /) -> RemoteFunction[P, ObjectRef[T]]: ...


@overload
def remote(*, num_returns: Union[int, str], **task_options: Any
           ) -> Callable[[Callable[P, Any]], RemoteFunction[P, Any]]: ...


@overload
def remote(**task_options: Any) -> RemoteDecorator: ...


def remote(*args: Any, **kwargs: Any) -> Any:
    """``@remote`` or ``@remote(**options)`` on a function (a task) or a class (an actor).

    Options (SPEC §2): ``num_returns`` (an int >= 0, ``"dynamic"`` or ``"streaming"``),
    ``max_retries`` (default 3), ``retry_exceptions`` (False, True or a list of exception
    classes), ``num_cpus`` (default 1), ``memory`` (bytes of private memory the worker may
    use while the task runs), ``generator_backpressure`` (items a streaming generator may
    have unconsumed before it pauses), ``name``.  A wrong option raises ``ValueError`` or
    ``TypeError`` here, naming it.  A type checker keeps the function's parameters for
    ``.remote(...)``, and sees a class become an ``ActorClass`` of it.
    """
    from .actor import ActorClass
    from .remote_function import RemoteFunction

    def make(target: Any, opts: dict) -> Any:
        if isinstance(target, type):
            checked = options.validate(options.ACTOR_OPTIONS, opts, f"actor {target.__name__}")
            return ActorClass(target, checked)
        if not callable(target):
            raise TypeError(f"@pygen.remote needs a function or a class, got {target!r}")
        checked = options.validate(options.TASK_OPTIONS, opts,
                                   f"task {getattr(target, '__name__', target)}")
        return RemoteFunction(target, checked)

    if len(args) == 1 and not kwargs and callable(args[0]):
        return make(args[0], {})
    if args:
        raise TypeError("@pygen.remote takes options as keywords only, e.g. "
                        "@pygen.remote(num_returns=2)")
    return lambda target: make(target, kwargs)


def method(**method_options: Any) -> Any:
    """Default options of an actor method: ``@pygen.method(num_returns=2)``."""
    from .actor import method as _method

    return _method(**method_options)


def get_actor(name: str) -> "ActorHandle[Any]":
    """The handle of the live actor created with ``.options(name=name)``.

    Raises ``ValueError`` naming the actor when there is none (never created, dead, or
    every handle to it was dropped, which ends an actor).
    """
    if not isinstance(name, str):
        raise TypeError(f"pygen.get_actor() takes the actor's name (a str), "
                        f"got {type(name).__name__}")
    found = context.ensure().get_actor(name)
    if found is None:
        raise ValueError(f"no live actor is named {name!r}: create it with "
                         f"Cls.options(name={name!r}).remote(...) first (an actor ends when "
                         f"it is killed, crashes for good, or every handle to it is gone)")
    return found


def kill(actor: "ActorHandle[Any]", *, no_restart: bool = True) -> None:
    """Kill an actor's process now.  Synchronous: when this returns, the process is gone
    and every later call to the actor raises ``ActorDiedError`` ("killed by pygen.kill").
    With ``no_restart=False`` an actor that has ``max_restarts`` left is restarted."""
    from .actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(f"pygen.kill() takes an actor handle, got {type(actor).__name__}; "
                        f"to stop a task use pygen.cancel(ref, force=True)")
    actor._client().kill_actor(actor, bool(no_restart))


def put(value: T) -> ObjectRef[T]:
    """Store ``value`` in the object store and return a ref to it (``get`` of a numpy array
    put this way is a zero-copy, read-only view)."""
    if isinstance(value, ObjectRef):
        raise TypeError("pygen.put() of an ObjectRef is not allowed: pass the ref itself, "
                        "or put a container that holds it (e.g. [ref])")
    return context.ensure().put(value)


@overload
def get(refs: ObjectRef[T], *, timeout: Optional[float] = None) -> T: ...


@overload
def get(refs: Sequence[ObjectRef[T]], *, timeout: Optional[float] = None) -> List[T]: ...


def get(refs: Union[ObjectRef[Any], Sequence[ObjectRef[Any]]], *,
        timeout: Optional[float] = None) -> Any:
    """The value of a ref, or the values of a list of refs, waiting for them as needed.

    Raises the task's error (a ``TaskError`` that is also an instance of the original
    exception's class), ``GetTimeoutError`` after ``timeout`` seconds, ``TypeError`` for
    anything that is not a ref (an ``ObjectRefGenerator`` is iterated, not passed to get).
    """
    timeout = options.timeout_seconds(timeout)
    if isinstance(refs, ObjectRef):
        return refs._live_client().get([refs], timeout)[0]
    if isinstance(refs, (ObjectRefGenerator,)):
        raise TypeError("pygen.get() does not take an ObjectRefGenerator: iterate it "
                        "(for ref in gen: pygen.get(ref)) or wait for the task with "
                        "pygen.get(gen.completed())")
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"pygen.get() takes an ObjectRef or a list of ObjectRefs, "
                        f"got {type(refs).__module__}.{type(refs).__qualname__}")
    for i, ref in enumerate(refs):
        if isinstance(ref, ObjectRefGenerator):
            raise TypeError(f"pygen.get() got an ObjectRefGenerator at index {i}: iterate it, "
                            f"or use gen.completed() to wait for its task")
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"pygen.get() takes ObjectRefs, got {type(ref).__name__} at index {i}")
    if not refs:
        return []
    return refs[0]._live_client().get(list(refs), timeout)


def wait(refs: Sequence[W], *, num_returns: int = 1, timeout: Optional[float] = None,
         fetch_local: bool = True) -> Tuple[List[W], List[W]]:
    """(ready, not_ready), both in input order; a generator is ready when ``next`` would not block.

    ``ready`` holds at most ``num_returns`` entries.  ``fetch_local`` is accepted for
    compatibility: on one machine every object is local.
    """
    timeout = options.timeout_seconds(timeout)
    if isinstance(refs, (ObjectRef, ObjectRefGenerator)) or not isinstance(refs, (list, tuple)):
        raise TypeError("pygen.wait() takes a list of ObjectRefs and ObjectRefGenerators")
    if isinstance(num_returns, bool) or not isinstance(num_returns, numbers.Integral):
        raise TypeError(f"num_returns must be an int, got {type(num_returns).__name__}")
    if num_returns < 1:
        raise ValueError(f"num_returns must be >= 1, got {num_returns}")
    if num_returns > len(refs):
        raise ValueError(f"num_returns={num_returns} is larger than the number of refs "
                         f"given ({len(refs)})")
    for i, ref in enumerate(refs):
        if not isinstance(ref, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"pygen.wait() takes ObjectRefs and ObjectRefGenerators, "
                            f"got {type(ref).__name__} at index {i}")
    flags = context.ensure().wait(list(refs), num_returns, timeout)
    ready: List[W] = []
    not_ready: List[W] = []
    for ref, ok in zip(refs, flags):
        if ok and len(ready) < num_returns:
            ready.append(ref)
        else:
            not_ready.append(ref)
    return ready, not_ready


def cancel(ref: Union[ObjectRef[Any], ObjectRefGenerator[Any]], *, force: bool = False,
           recursive: bool = True) -> None:
    """Cancel the task behind ``ref``: see SPEC §2 (queued: never runs; running:
    ``TaskCancelledError`` raised inside it; ``force``: its worker is killed)."""
    if isinstance(ref, ObjectRefGenerator):
        runtime = ref._client()
    elif isinstance(ref, ObjectRef):
        runtime = ref._live_client()
    else:
        raise TypeError(f"pygen.cancel() takes an ObjectRef or ObjectRefGenerator, "
                        f"got {type(ref).__name__}")
    runtime.cancel(ref, bool(force), bool(recursive))  # force on an actor call: ValueError


