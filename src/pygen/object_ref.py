"""``ObjectRef``: a counted handle on one object.

Every live ``ObjectRef`` in any process counts.  A process tells the node when it starts
holding an id (its first ``ObjectRef`` for it) and when it stops (its last one is gone);
the node frees the object when no process holds it, no pending task needs it, no
stored value contains it and no zero-copy view pins it.

Pickling a ref (as a task argument, inside a put or returned value) records it in the
current serialization's list of contained refs, so the node keeps the object alive for
as long as the enclosing value exists; unpickling makes a new counted ``ObjectRef`` in
the receiving process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Generic, Optional, Tuple

from . import context, serialization
from ._typing import T_co

if TYPE_CHECKING:
    import concurrent.futures

    from .runtime import Runtime

__all__ = ["ObjectRef"]


class ObjectRef(Generic[T_co]):
    """A reference to an object that exists now or will once its task finishes.

    ``pygen.get(ref)`` gives its value (``ObjectRef[T]`` for a type checker: a ref to a
    ``T``).  Refs are hashable, ordered, picklable (a pickled ref keeps its object alive
    wherever it goes) and awaitable (``await ref``).
    """

    __slots__ = ("_id", "_client", "__weakref__")

    # ``_client`` is the runtime that made the ref (``pygen.runtime.Runtime``): it counts
    # the ref and answers get/wait/cancel for it.

    def __init__(self, object_id: bytes, *, _registered: bool = False,
                 _client: Optional["Runtime"] = None) -> None:
        if not isinstance(object_id, bytes) or len(object_id) != 20:
            raise TypeError("ObjectRef needs a 20-byte id; refs come from .remote() or pygen.put")
        self._id = object_id
        client = _client if _client is not None else context.current()
        self._client = client
        if client is not None and not client.closed:
            client.add_ref(object_id, _registered)

    @classmethod
    def _registered_with(cls, object_id: bytes, client: "Runtime") -> "ObjectRef[Any]":
        """A ref the node already counts for ``client``'s process (a task's return, a
        stream item just taken): ``__init__`` without its checks, on the hot paths."""
        ref = cls.__new__(cls)
        ref._id = object_id
        ref._client = client
        if not client.closed:
            client.add_ref(object_id, True)
        return ref

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.remove_ref(self._id)
            except Exception:  # interpreter shutdown: modules may already be gone
                pass

    # identity --------------------------------------------------------------------
    def binary(self) -> bytes:
        """The object's id, 20 bytes."""
        return self._id

    def hex(self) -> str:
        """The object's id in hex (what ``pygen.state.list_objects()`` shows as ``id``)."""
        return self._id.hex()

    def task_id(self) -> bytes:
        """The id of the task that makes this object (of the put, for ``pygen.put``)."""
        return self._id[:12]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: "ObjectRef[Any]") -> bool:
        return self._id < other._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    # pickling: the enclosing value now contains this ref --------------------------
    def __reduce__(self) -> Tuple[Callable[[bytes], "ObjectRef[Any]"], Tuple[bytes]]:
        collector = serialization.current_ref_collector()
        if collector is not None:
            collector.append(self._id)
        return (_rebuild, (self._id,))

    def __copy__(self) -> "ObjectRef[T_co]":
        return ObjectRef(self._id)

    def __deepcopy__(self, memo: Any) -> "ObjectRef[T_co]":
        return ObjectRef(self._id)

    # futures -----------------------------------------------------------------------
    def future(self) -> "concurrent.futures.Future[T_co]":
        """A ``concurrent.futures.Future`` that resolves to the value (or its error)."""
        return self._live_client().future(self)

    def __await__(self) -> Generator[Any, None, T_co]:
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()

    def _live_client(self) -> "Runtime":
        """The runtime of this ref (the process's, for a ref made before init)."""
        client = self._client
        if client is None:
            return context.ensure()
        if client.closed:
            raise context.closed_error(client, repr(self))
        return client


def _rebuild(object_id: bytes) -> ObjectRef[Any]:
    return ObjectRef(object_id)
