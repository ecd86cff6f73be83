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

from typing import TYPE_CHECKING, Any, Optional

from . import context, serialization

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["ObjectRef"]


class ObjectRef:
    """A reference to an object that exists now or will once its task finishes."""

    __slots__ = ("_id", "_client", "__weakref__")

    def __init__(self, object_id: bytes, *, _registered: bool = False,
                 _client: Optional[context.Client] = None) -> None:
        if not isinstance(object_id, bytes) or len(object_id) != 20:
            raise TypeError("ObjectRef needs a 20-byte id; refs come from .remote() or pygen.put")
        self._id = object_id
        client = _client if _client is not None else context.current()
        self._client = client
        if client is not None and not client.closed:
            client.add_ref(object_id, _registered)

    @classmethod
    def _registered_with(cls, object_id: bytes, client: context.Client) -> "ObjectRef":
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
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:12]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: "ObjectRef") -> bool:
        return self._id < other._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    # pickling: the enclosing value now contains this ref --------------------------
    def __reduce__(self):
        collector = serialization.current_ref_collector()
        if collector is not None:
            collector.append(self._id)
        return (_rebuild, (self._id,))

    def __copy__(self) -> "ObjectRef":
        return ObjectRef(self._id)

    def __deepcopy__(self, memo: Any) -> "ObjectRef":
        return ObjectRef(self._id)

    # futures -----------------------------------------------------------------------
    def future(self) -> "concurrent.futures.Future":
        """A ``concurrent.futures.Future`` that resolves to the value (or its error)."""
        import concurrent.futures  # not at import time: workers start faster without it

        fut: concurrent.futures.Future = concurrent.futures.Future()
        client = self._live_client()
        oid = self._id
        keep = self  # the future keeps the ref (hence the object) alive until it resolves

        def resolve() -> None:
            nonlocal keep
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(client.get([oid], 0)[0])
                except BaseException as exc:  # the stored error, delivered through the future
                    fut.set_exception(exc)
            keep = None

        client.on_ready(oid, resolve)
        return fut

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()

    def _live_client(self) -> context.Client:
        client = self._client
        if client is None:
            return context.ensure()
        if client.closed:
            raise context.closed_error(client, repr(self))
        return client


def _rebuild(object_id: bytes) -> ObjectRef:
    return ObjectRef(object_id)
