"""What the local runtime asks of its client: the byte-level interface under
``LocalRuntime`` (object ids are 20-byte ``bytes``, values are encoded payloads).

Two implementations: ``DriverClient`` (calls the in-process node directly) and
``WorkerClient`` (messages to the node over the worker's socket).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple


class Client(Protocol):
    """What a process can ask of the runtime.  Object ids are 20-byte ``bytes``."""

    is_worker: bool
    closed: bool
    forked: bool  # this is a forked child's copy of its parent's client: never usable

    # reference counting: add is synchronous; remove may run inside __del__ on any thread
    def add_ref(self, oid: bytes, registered: bool = False) -> None: ...
    def remove_ref(self, oid: bytes) -> None: ...

    # objects
    def put(self, value: Any) -> bytes: ...
    def get(self, oids: Sequence[bytes], timeout: Optional[float]) -> List[Any]: ...
    def encode(self, value: Any, oid: bytes) -> Tuple[tuple, list]: ...
    def store_value(self, sv: Any, oid: bytes) -> None: ...
    def wait(self, keys: Sequence[bytes], num_returns: int,
             timeout: Optional[float]) -> List[bool]:
        """Ready flags for object ids and stream ids (``ids.stream_id``), in order."""
        ...

    def on_ready(self, oid: bytes, callback: Callable[[], None]) -> None: ...

    # tasks
    def register_function(self, fn_id: bytes, blob: bytes) -> None: ...
    def submit(self, spec: Any) -> None: ...
    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None: ...

    # streams (a streaming generator's items, by its task id)
    def stream_next(self, task_id: bytes, timeout: Optional[float]) -> Optional[bytes]: ...
    def stream_close(self, task_id: bytes) -> None: ...

    # actors
    def create_actor(self, spec: Any, class_name: str, name: Optional[str], descriptor: bytes,
                     options: Dict[str, Any], get_if_exists: bool) -> Tuple[bytes, bytes]:
        """(actor_id, descriptor): the new actor's, or the live one named ``name``."""
        ...

    def get_actor(self, name: str) -> Optional[Tuple[bytes, bytes]]: ...
    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        """Returns once the actor's process is gone."""
        ...


