"""pygen's refs, generators and actor handles around Ray's.

Each is a subclass of the public type (``isinstance(ref, pygen.ObjectRef)`` holds) that
keeps Ray's object in ``_backing`` and the ``RayRuntime`` of its process.  Counting is
Ray's: a wrapper holds Ray's ref, so Ray frees the object when the last wrapper (and
every copy Ray itself tracks) is gone.  Pickling hands Ray's own object to the pickler:
inside a task argument or a stored value Ray records it as a borrowed ref, and
unpickling in another process wraps it again for that process's runtime.
"""
from __future__ import annotations

import threading
from typing import Any, Optional, Tuple

from .. import context
from ..actor import ActorHandle, Descriptor
from ..generators import ObjectRefGenerator
from ..object_ref import ObjectRef
from ..runtime import not_on


def _runtime() -> Any:
    from .remote import in_worker

    runtime = context.current()
    if runtime is None or getattr(runtime, "backend", "") != "ray" or runtime.closed:
        in_worker()
        runtime = context.current()
    return runtime


class RayObjectRef(ObjectRef):
    """A pygen ref to an object of the Ray cluster."""

    __slots__ = ("_backing", "_is_put")

    def __init__(self, backing: Any, runtime: Any = None, is_put: bool = False) -> None:
        self._backing = backing
        self._is_put = is_put
        self._id = backing.binary()
        self._client = runtime if runtime is not None else _runtime()

    def __del__(self) -> None:
        pass  # Ray counts its own ref, held in _backing

    def task_id(self) -> bytes:
        return self._backing.task_id().binary()

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> Tuple[Any, Tuple[Any, bool]]:
        return (_rebuild_ref, (self._backing, self._is_put))

    def __copy__(self) -> "RayObjectRef":
        return RayObjectRef(self._backing, self._client, self._is_put)

    def __deepcopy__(self, memo: Any) -> "RayObjectRef":
        return self.__copy__()


def _rebuild_ref(backing: Any, is_put: bool) -> RayObjectRef:
    return RayObjectRef(backing, None, is_put)


class RayObjectRefGenerator(ObjectRefGenerator):
    """A pygen streaming generator over Ray's ``ObjectRefGenerator``; ``next`` is made
    thread-safe here (Ray's is not)."""

    __slots__ = ("_backing", "_rt", "_lock", "_closed")

    def __init__(self, backing: Any, runtime: Any) -> None:
        self._backing = backing
        self._rt = runtime
        self._lock = threading.Lock()
        self._closed = False
        self._task_id = b""

    def _client(self) -> Any:
        if self._rt.closed:
            raise context.closed_error(self._rt, repr(self))
        return self._rt

    def task_id(self) -> bytes:
        return self._backing._generator_ref.task_id().binary()

    def _stream_key(self) -> bytes:
        return self._backing._generator_ref.binary()

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._stream_key().hex()})"

    def __reduce__(self) -> Any:
        raise not_on("ray", "passing an ObjectRefGenerator to another task or actor",
                     "Ray's generators cannot leave the process that started them; pass "
                     "the item refs, or consume the generator where it was made")


class RayActorHandle(ActorHandle):
    """A pygen actor handle over Ray's."""

    __slots__ = ("_backing", "_rt")

    def __init__(self, backing: Any, descriptor: Descriptor, runtime: Any = None) -> None:
        self._backing = backing
        self._rt = runtime if runtime is not None else _runtime()
        self._descriptor = descriptor
        self._method_cache = {}
        self._actor_id = _actor_id(backing)

    def _client(self) -> Any:
        if self._rt.closed:
            raise context.closed_error(self._rt, repr(self))
        return self._rt

    def __reduce__(self) -> Any:
        return (_rebuild_handle, (self._backing, self._descriptor.blob))


def _rebuild_handle(backing: Any, blob: bytes) -> RayActorHandle:
    return RayActorHandle(backing, Descriptor.from_blob(blob))


def _actor_id(backing: Any) -> bytes:
    actor_id: Optional[Any] = getattr(backing, "_actor_id", None)
    return actor_id.binary() if actor_id is not None else repr(backing).encode()
