"""The client of this process: the one object refs and generators talk to.

Set once at start-up: in the driver by ``pygen.init`` (the in-process node's client),
in a worker by the worker's main loop (a client that sends messages to the node).
Everything in the shared-types floor (``ObjectRef``, the generators, ``api``) reaches
the runtime only through the methods of :class:`Client`, never by importing the node.

A process forked after ``init`` inherits a copy of its parent's client, node and store
handle, but none of the runtime is its own: the node's thread does not exist in the copy,
its sockets and the store's slot are the parent's.  So in the child (``_after_fork``)
the inherited client is marked ``forked`` and closed, and set aside, never used, closed
or freed there: closing it would shut down the parent's workers and release the
parent's slot in the store.  Every use of pygen in the child raises ``RuntimeError``
saying to call ``pygen.init()``, after which the child has a runtime of its own.
"""
from __future__ import annotations

import os
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


_current: Optional[Client] = None
_lock = threading.RLock()
# Set in a process forked from one that had started pygen, until it calls init itself.
_inherited_from: Optional[int] = None
# The clients a fork inherited: kept here, and immortal, so they are never freed in the
# child (freeing the store handle would release the parent's slot, see _keep_forever).
_inherited: List[Client] = []


def current() -> Optional[Client]:
    """The client of this process, or None before ``init``."""
    return _current


def set_current(client: Optional[Client]) -> None:
    global _current, _inherited_from
    _current = client
    if client is not None:
        _inherited_from = None  # this process started a runtime of its own


def forked_error(what: str = "pygen") -> RuntimeError:
    """The error for a use of the runtime a forked child inherited from its parent."""
    parent = _inherited_from if _inherited_from is not None else "its parent"
    return RuntimeError(
        f"{what} cannot be used in this process: it was forked from process {parent}, "
        f"which started pygen, and a forked child does not share its parent's runtime. "
        f"Call pygen.init() in the child to start a runtime of its own (refs and "
        f"generators made by the parent cannot be used there)")


def closed_error(client: Client, what: str) -> Exception:
    """The error for a use of ``what`` (a ref, a generator) whose client is closed."""
    if getattr(client, "forked", False):
        return forked_error(what)
    return ValueError(f"{what} belongs to a pygen session that was shut down")


def ensure() -> Client:
    """The client of this process, initialising pygen with defaults in a driver."""
    client = _current
    if client is not None and not client.closed:
        return client
    with _lock:
        client = _current
        if client is None or client.closed:
            if _inherited_from is not None:  # no silent auto-init in a forked child
                raise forked_error()
            from . import api  # late: api imports this module

            api.init()
            client = _current
        assert client is not None
        return client


def _keep_forever(obj: Any) -> None:
    """Make ``obj`` immortal in this process: never freed, not even at interpreter exit.

    An inherited store handle must never be closed in a forked child: its close releases
    the slot it names -- the parent's -- dropping the parent's pins, and waits for a
    prefault thread that exists only in the parent.  Module globals are cleared at
    interpreter exit, so a plain reference is not enough: one reference is leaked.
    """
    _inherited.append(obj)
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except (ImportError, AttributeError, OSError):
        pass  # no ctypes: the reference in _inherited is the best there is


def _after_fork() -> None:
    """In a forked child: set the parent's runtime aside (see the module docstring)."""
    global _current, _lock, _inherited_from
    _lock = threading.RLock()  # another thread of the parent may have held it
    client = _current
    if client is None or client.closed:
        return
    client.forked = True
    client.closed = True
    _current = None
    _inherited_from = os.getppid()
    _keep_forever(client)
    if client.is_worker:
        # the child is not a worker: pygen.init() there starts a runtime of its own
        os.environ.pop("PYGEN_WORKER_ID", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
