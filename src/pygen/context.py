"""The runtime of this process: the one object refs, generators and handles talk to.

Set once at start-up: in the driver by ``pygen.init`` (a ``LocalRuntime`` over the
in-process node, or a ``RayRuntime``), in a worker by its main loop (a ``LocalRuntime``
over a client that sends messages to the node; in a Ray worker, a ``RayRuntime``).
Everything in the face (``ObjectRef``, the generators, actor handles, ``api``) reaches the
runtime only through the methods of :class:`pygen.runtime.Runtime`, never by importing
the node or Ray.

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
from typing import Any, List, Optional

from .runtime import Runtime


_current: Optional[Runtime] = None
_lock = threading.RLock()
# Set in a process forked from one that had started pygen, until it calls init itself.
_inherited_from: Optional[int] = None
# The clients a fork inherited: kept here, and immortal, so they are never freed in the
# child (freeing the store handle would release the parent's slot, see _keep_forever).
_inherited: List[Runtime] = []


def current() -> Optional[Runtime]:
    """The runtime of this process, or None before ``init``."""
    return _current


def set_current(client: Optional[Runtime]) -> None:
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


def closed_error(client: Runtime, what: str) -> Exception:
    """The error for a use of ``what`` (a ref, a generator) whose client is closed."""
    if getattr(client, "forked", False):
        return forked_error(what)
    return ValueError(f"{what} belongs to a pygen session that was shut down")


def ensure() -> Runtime:
    """The runtime of this process, initialising pygen with defaults in a driver."""
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
