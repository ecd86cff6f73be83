"""What a generator task returns to its caller.

``ObjectRefGenerator`` (``num_returns="streaming"``, the default for generator
functions) is a handle on a stream kept by the node: ``next`` asks the node for the
next item and gets an ordinary ``ObjectRef``.  The handle is itself counted like a ref
(on the stream's id): when the last handle in any process is gone, the node frees
every item nobody took.  Because the cursor lives in the node, ``next`` is thread-safe
and the generator can be passed to another task, which iterates it there.

``DynamicObjectRefGenerator`` (``num_returns="dynamic"``) is a plain value: the list
of item refs of a finished task.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, List, Optional, Tuple

from . import ids, options, serialization
from ._typing import Y_co
from .object_ref import ObjectRef, _rebuild

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["ObjectRefGenerator", "DynamicObjectRefGenerator"]


class ObjectRefGenerator(Generic[Y_co]):
    """An iterator over the item refs of a streaming generator task, as they are yielded.

    What ``.remote()`` returns for a generator function (``num_returns="streaming"``, the
    default): ``next(gen)`` blocks until the next item exists and returns its ``ObjectRef``;
    ``for``, ``async for`` and ``pygen.wait`` work on it.  ``ObjectRefGenerator[Y]`` for a
    type checker: its items are refs to ``Y``, the type the generator yields.
    """

    __slots__ = ("_task_id", "_handle", "__weakref__")

    def __init__(self, task_id: bytes, *, _registered: bool = False) -> None:
        self._task_id = task_id
        # a counted handle on the stream: while any exists, the stream keeps its items
        self._handle: ObjectRef[Any] = ObjectRef(ids.stream_id(task_id), _registered=_registered)

    def _client(self) -> "Runtime":
        """The runtime of this generator's task."""
        return self._handle._live_client()

    # -- synchronous iteration -----------------------------------------------------------------
    def __iter__(self) -> "ObjectRefGenerator[Y_co]":
        return self

    def __next__(self) -> "ObjectRef[Y_co]":
        return self._next(None)

    def _next(self, timeout: Optional[float]) -> "ObjectRef[Y_co]":
        ref = self._client().stream_next(self, timeout)
        if ref is None:
            raise StopIteration
        return ref

    def next_ready(self, timeout: Optional[float] = None) -> "ObjectRef[Y_co]":
        """``next`` with a timeout: ``GetTimeoutError`` if no item comes in time."""
        return self._next(options.timeout_seconds(timeout))

    # -- asynchronous iteration ---------------------------------------------------------------
    def __aiter__(self) -> "ObjectRefGenerator[Y_co]":
        return self

    async def __anext__(self) -> "ObjectRef[Y_co]":
        ref = await self._client().stream_anext(self)
        if ref is None:
            raise StopAsyncIteration
        return ref

    # -- the task ----------------------------------------------------------------------------------
    def completed(self) -> "ObjectRef[Any]":
        """A ref that is ready when the task ends: its ``return`` value, or its error."""
        return self._client().stream_completed(self)

    def close(self) -> None:
        """Stop the task at its current ``yield`` (its ``finally`` runs); free what is left."""
        self._client().stream_close(self)

    def task_id(self) -> bytes:
        """The id of the generator's task."""
        return self._task_id

    def _stream_key(self) -> bytes:
        return ids.stream_id(self._task_id)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"

    def __reduce__(self) -> Tuple[Callable[[bytes], "ObjectRefGenerator[Any]"], Tuple[bytes]]:
        collector = serialization.current_ref_collector()
        if collector is not None:  # whatever holds this pickled handle keeps the stream
            collector.append(ids.stream_id(self._task_id))
        return (_rebuild_generator, (self._task_id,))


def _rebuild_generator(task_id: bytes) -> "ObjectRefGenerator[Any]":
    return ObjectRefGenerator(task_id)


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: its item refs, iterable many times,
    with ``len()``; picklable, so it (or the ref to it) can be passed to other tasks."""

    def __init__(self, refs: List[Any]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> "Iterator[ObjectRef[Any]]":
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

    def __reduce__(self) -> Tuple[type, Tuple[List[Any]]]:
        return (DynamicObjectRefGenerator, (self._refs,))

    @classmethod
    def _from_ids(cls, oids: List[bytes]) -> "DynamicObjectRefGenerator":
        """For the node to encode the value without counting refs of its own."""
        return cls([_RefToken(oid) for oid in oids])


class _RefToken:
    """Pickles exactly like an ``ObjectRef`` but is not counted where it is made."""

    __slots__ = ("_id",)

    def __init__(self, oid: bytes) -> None:
        self._id = oid

    def __reduce__(self):
        collector = serialization.current_ref_collector()
        if collector is not None:
            collector.append(self._id)
        return (_rebuild, (self._id,))
