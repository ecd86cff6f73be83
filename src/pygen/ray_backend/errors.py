"""Ray's exceptions as pygen's: what a pygen program catches is the same on both backends.

    RayTaskError(cause)          -> TaskError, also an instance of the cause's class
                                    (a cancellation inside the task: TaskCancelledError)
    ActorDiedError, RayActorError,
    ActorUnavailableError        -> ActorDiedError
    OutOfMemoryError (Ray's)     -> OutOfMemoryError (a WorkerCrashedError)
    WorkerCrashedError, NodeDiedError, LocalRayletDiedError -> WorkerCrashedError
    ObjectLostError, OwnerDiedError, ObjectFreedError,
    ObjectReconstructionFailedError -> ObjectLostError
    GetTimeoutError              -> GetTimeoutError
    TaskCancelledError           -> TaskCancelledError
    ObjectStoreFullError         -> ObjectStoreFullError
    any other RayError           -> PygenError

Each keeps Ray's message (which says what happened and where) and chains Ray's own error
as ``__cause__``.
"""
from __future__ import annotations

import re
from typing import Optional

from .. import exceptions as px


def convert(err: BaseException) -> BaseException:
    """The pygen exception for ``err`` (``err`` itself if it is not one of Ray's)."""
    from ray import exceptions as rx

    if isinstance(err, rx.RayTaskError):
        return _task_error(err, rx)
    table = [
        (rx.TaskCancelledError, px.TaskCancelledError),
        ((rx.ActorDiedError, rx.RayActorError, rx.ActorUnavailableError,
          rx.ActorUnschedulableError), px.ActorDiedError),
        (rx.OutOfMemoryError, px.OutOfMemoryError),
        ((rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError),
         px.WorkerCrashedError),
        ((rx.ObjectLostError, rx.OwnerDiedError, rx.ObjectFreedError,
          rx.ObjectReconstructionFailedError, rx.ObjectFetchTimedOutError), px.ObjectLostError),
        (rx.GetTimeoutError, px.GetTimeoutError),
        (rx.ObjectStoreFullError, px.ObjectStoreFullError),
    ]
    for ray_types, ours in table:
        if isinstance(err, ray_types):
            text = _plain(str(err)).strip()
            if ours is px.ActorDiedError:
                # pygen.kill is ray.kill underneath: say it in the program's own words
                text = text.replace("killed by `ray.kill`", "killed by pygen.kill")
            return _wrap(ours, err, text)
    if isinstance(err, rx.RayError):
        return _wrap(px.PygenError, err)
    return err


def _wrap(cls: type, err: BaseException, text: Optional[str] = None) -> BaseException:
    new = cls(text if text is not None else str(err).strip())
    new.__cause__ = err
    return new


def _task_error(err: BaseException, rx: object) -> BaseException:
    cause = getattr(err, "cause", None)
    if cause is None:
        return _wrap(px.PygenError, err)
    if isinstance(cause, px.PygenError) and not isinstance(cause, px.TaskError):
        return cause  # raised by pygen itself in the task (e.g. OutOfMemoryError, see remote)
    if isinstance(cause, getattr(rx, "TaskCancelledError")):
        return _wrap(px.TaskCancelledError, err)
    if isinstance(cause, BaseException) and not isinstance(cause, Exception):
        cause = px.RemoteExceptionInfo(type(cause).__name__, str(cause))
    if isinstance(cause, px.TaskError):
        return cause.as_instanceof_cause()
    # Ray's instance (of its class and the cause's) keeps its fields only in its text,
    # which starts "ray::<task name>() (pid=N, ...)" and holds the remote traceback
    tb = _plain(str(err))
    found = re.search(r"ray::([^\s(]+)\(\)", tb)
    name = found.group(1) if found else getattr(err, "function_name", "task")
    pid_found = re.search(r"\(pid=(\d+)", tb)
    pid = int(pid_found.group(1)) if pid_found else None
    task_error = px.TaskError(_task_name(str(name)), tb, cause, pid)
    return task_error.as_instanceof_cause()


def _task_name(function_name: str) -> str:
    # Ray names a task by its function's qualified name; pygen's wrappers are named after
    # the user's function, so the last part is what the user wrote
    return function_name.rsplit(".", 1)[-1] if function_name else "task"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    """Ray colours its messages for a terminal; pygen's are plain text."""
    return _ANSI.sub("", text)
