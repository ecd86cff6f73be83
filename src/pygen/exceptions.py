"""Every error pygen raises, in one table (SPEC §6).

Each class derives from :class:`PygenError` and, where one fits, from the builtin a
Python user would catch (``GetTimeoutError`` is a ``TimeoutError``,
``ObjectStoreFullError`` a ``MemoryError``).  Ray users port code by renaming:

    RayError -> PygenError            RayTaskError -> TaskError
    RayActorError -> ActorDiedError   (the other names are the same)

Errors cross process boundaries by pickling, so every class keeps the arguments it
needs in ``args``-compatible attributes and defines ``__reduce__`` where its
constructor takes more than a message.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Optional, Tuple

__all__ = [
    "PygenError",
    "TaskError",
    "WorkerCrashedError",
    "OutOfMemoryError",
    "ActorDiedError",
    "TaskCancelledError",
    "GetTimeoutError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "InconsistentRetryError",
    "ObjectStoreError",
    "ObjectNotFoundError",
    "ObjectExistsError",
    "ObjectNotSealedError",
    "RemoteExceptionInfo",
]


class PygenError(Exception):
    """Base of every pygen error."""


class WorkerCrashedError(PygenError):
    """The worker process died while running the task (exit, signal, segfault)."""


class OutOfMemoryError(WorkerCrashedError):
    """The worker was killed because its private memory passed its limit."""


class ActorDiedError(PygenError):
    """The actor is dead; the message says why."""


class TaskCancelledError(PygenError):
    """The task was cancelled with ``pygen.cancel``."""


class GetTimeoutError(PygenError, TimeoutError):
    """``get`` (or ``next`` on a generator with a timeout) ran out of time."""


class ObjectLostError(PygenError):
    """The object's data is gone and cannot be rebuilt."""


class ObjectStoreError(PygenError):
    """The object store refused an operation for a reason other than space."""


class ObjectNotFoundError(ObjectStoreError, KeyError):
    """No object with this id is in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ObjectExistsError(ObjectStoreError):
    """An object with this id was already created."""


class ObjectNotSealedError(ObjectStoreError):
    """The object exists but its writer has not sealed it yet."""


class ObjectStoreFullError(PygenError, MemoryError):
    """No room in the object store, even after spilling.

    ``requested`` and ``available`` are byte counts (``available`` is the largest
    block that could have been handed out, when the store knows it).
    """

    def __init__(self, message: str, requested: Optional[int] = None,
                 available: Optional[int] = None) -> None:
        super().__init__(message)
        self.requested = requested
        self.available = available

    def __reduce__(self):
        return (type(self), (str(self), self.requested, self.available))


class InconsistentRetryError(PygenError):
    """A re-executed generator yielded fewer items than were already handed out."""


class RemoteExceptionInfo(Exception):
    """Stands in for an exception that could not be pickled in the worker.

    It carries what survives: the original type's qualified name and its message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.message))


class TaskError(PygenError):
    """The task raised.  ``cause`` is the original exception.

    ``str()`` holds the remote traceback.  What ``get`` raises is built by
    :meth:`as_instanceof_cause`, so it is also an instance of the cause's class:
    ``except ValueError`` catches a remote ``ValueError``.

    ``stage`` says where the error was raised when it was not in the task's own code:
    "while loading its function", "while reading its arguments" (unpickling them in the
    worker), "while the caller read its return value" (unpickling it in ``get``).
    """

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException,
                 pid: Optional[int] = None, stage: str = "") -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.stage = stage
        super().__init__(function_name, traceback_str, cause, pid)

    def __reduce__(self):
        cause: Any = self.cause
        if self.__dict__.get("_cause_by_state"):
            cause = _CauseByState(cause)
        return (TaskError, (self.function_name, self.traceback_str, cause, self.pid,
                            self.__dict__.get("stage", "")))

    def with_cause_by_state(self) -> "TaskError":
        """A copy whose cause travels by state: rebuilt from its class, ``args`` and
        attributes without calling its ``__init__``.  For a cause that pickles but cannot
        be rebuilt by calling its class with its ``args`` (an ``__init__(self, a, b)``
        that passes one message up): it keeps its class, so ``except E`` catches it."""
        err = TaskError(self.function_name, self.traceback_str, self.cause, self.pid,
                        self.__dict__.get("stage", ""))
        err._cause_by_state = True
        return err

    def __str__(self) -> str:
        where = f" (pid={self.pid})" if self.pid is not None else ""
        cause = self.cause
        if isinstance(cause, RemoteExceptionInfo):
            name, message = cause.type_name, cause.message
        else:
            name, message = type(cause).__name__, str(cause)
        message = message.splitlines()[0] if message else ""
        stage = self.__dict__.get("stage", "")
        headline = (f"{name} in task {self.function_name}{where}" + (f" {stage}" if stage else "")
                    + (f": {message}" if message else ""))
        return f"{headline}\n{self.traceback_str.rstrip()}"

    @classmethod
    def from_exception(cls, function_name: str, exc: BaseException,
                       pid: Optional[int] = None, stage: str = "") -> "TaskError":
        """The TaskError of ``exc`` raised by task ``function_name`` (``stage``: where, if
        not in its own code), with its traceback (from the first frame of user code on)."""
        frames = _from_user_code(exc.__traceback__)
        tb = "".join(traceback.format_exception(type(exc), exc, frames))
        return cls(function_name, tb, exc, pid, stage)

    def as_instanceof_cause(self) -> "TaskError":
        """A TaskError that is also an instance of ``type(self.cause)``.

        Not for a cause that is not an ``Exception`` (``SystemExit``,
        ``KeyboardInterrupt``, ``GeneratorExit``): a task that called ``sys.exit`` must
        not exit its caller, so the caller gets the plain TaskError, which ``except
        Exception`` catches; ``.cause`` still holds the original.
        """
        cause_cls = type(self.cause)
        if isinstance(self.cause, TaskError):
            return self.cause.as_instanceof_cause()
        if issubclass(TaskError, cause_cls) or not issubclass(cause_cls, Exception):
            return self
        derived = _dual_class(cause_cls)
        if derived is None:
            return self
        # The cause's class makes and initialises the instance (OSError's errno..., the
        # C-level __new__ of MemoryError); TaskError's fields are plain attributes.
        args = self.cause.args
        try:
            # calling the type runs its real tp_new (a C-level one for MemoryError, OSError;
            # ``cause_cls.__new__`` may name another base's and be refused as unsafe)
            err = derived(*args)
        except Exception:
            return self
        try:
            cause_cls.__init__(err, *args)
        except Exception:
            BaseException.__init__(err, *args)
        err.function_name = self.function_name
        err.traceback_str = self.traceback_str
        err.cause = self.cause
        err.pid = self.pid
        err.stage = self.__dict__.get("stage", "")
        return err


def _runtime_dirs() -> Tuple[str, ...]:
    """Where the code that calls a task lives: pygen, and asyncio for coroutine tasks."""
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    asyncio = sys.modules.get("asyncio")  # not imported: no coroutine task ran
    if asyncio is not None and getattr(asyncio, "__file__", None):
        dirs.append(os.path.dirname(os.path.abspath(asyncio.__file__)))
    return tuple(d + os.sep for d in dirs)


def _from_user_code(tb: Any) -> Any:
    """``tb`` from the first frame of user code on: the frames that led from pygen's
    worker into the task are not the user's (a local traceback would not have them).
    An error raised before any user code ran (reading the arguments) keeps them all."""
    dirs = _runtime_dirs()
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(dirs):
        first = first.tb_next
    return first if first is not None else tb


class _CauseByState:
    """Pickles as the exception it wraps, rebuilt by ``_rebuild_by_state``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return (_rebuild_by_state, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def _rebuild_by_state(cls: type, args: tuple, state: dict) -> BaseException:
    # the class's __new__ (BaseException's, or a C type's) makes it; its __init__, which
    # may want other arguments than ``args``, is not called
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def raisable(err: BaseException) -> BaseException:
    """What ``get`` raises for a stored error: a ``TaskError`` that is also its cause's class."""
    return err.as_instanceof_cause() if isinstance(err, TaskError) else err


_DUAL_CLASSES: dict = {}


def _no_init(self: BaseException, *args: Any, **kwargs: Any) -> None:
    pass


def _dual_class(cause_cls: type) -> Optional[type]:
    """``class TaskError(<cause>)(TaskError, cause_cls)``, cached; None if impossible."""
    if cause_cls in _DUAL_CLASSES:
        return _DUAL_CLASSES[cause_cls]

    def __getattr__(self, name: str) -> Any:
        # Attributes of the original exception (e.g. ``errno``) read through.
        cause = self.__dict__.get("cause")
        if cause is None:
            raise AttributeError(name)
        return getattr(cause, name)

    try:
        # cause_cls first: its C-level __new__ (MemoryError, OSError) must make the instance;
        # TaskError's behaviour comes from the methods set here
        derived = type(
            f"TaskError({cause_cls.__name__})",
            (cause_cls, TaskError),
            {
                "__init__": _no_init,  # as_instanceof_cause initialises it
                "__str__": TaskError.__str__,
                "__repr__": lambda self: f"{type(self).__name__}({str(self.cause)!r})",
                "__reduce__": TaskError.__reduce__,
                "__getattr__": __getattr__,
                "__module__": __name__,
            },
        )
    except TypeError:  # final class or incompatible layout (e.g. some C extensions)
        derived = None
    _DUAL_CLASSES[cause_cls] = derived
    return derived
