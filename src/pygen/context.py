"""The client of this process: the one object refs and generators talk to.

Set once at start-up: in the driver by ``pygen.init`` (the in-process node's client),
in a worker by the worker's main loop (a client that sends messages to the node).
Everything in the shared-types floor (``ObjectRef``, the generators, ``api``) reaches
the runtime only through the methods of :class:`Client`, never by importing the node.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    from typing import Protocol
except ImportError:  # Python < 3.8
    Protocol = object  # type: ignore


class Client(Protocol):
    """What a process can ask of the runtime.  Object ids are 20-byte ``bytes``."""

    is_worker: bool
    closed: bool

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


_current: Optional[Client] = None
_lock = threading.RLock()


def current() -> Optional[Client]:
    """The client of this process, or None before ``init``."""
    return _current


def set_current(client: Optional[Client]) -> None:
    global _current
    _current = client


def ensure() -> Client:
    """The client of this process, initialising pygen with defaults in a driver."""
    client = _current
    if client is not None and not client.closed:
        return client
    with _lock:
        client = _current
        if client is None or client.closed:
            from . import api  # late: api imports this module

            api.init()
            client = _current
        assert client is not None
        return client
