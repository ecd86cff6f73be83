"""Introspection (SPEC §8): what exists and what keeps it alive.  Tests use it to prove
that nothing leaks."""
from __future__ import annotations

from typing import Any, Dict, List

from . import context


def _node() -> Any:
    """The local runtime's node (for tests and tools that look inside it)."""
    runtime = context.ensure()
    return runtime._driver_node()  # type: ignore[attr-defined]


def list_objects() -> List[Dict[str, Any]]:
    """One dict per object: id (``ref.hex()``), state, size, location, and what keeps it:
    holders (process ids; 0 is the driver), internal_refs (pending tasks, containers,
    streams), zero_copy_views (processes pinning it), spilled."""
    return context.ensure().list_objects()


def list_tasks() -> List[Dict[str, Any]]:
    """Pending and running tasks, and the most recently finished ones."""
    return context.ensure().list_tasks()


def list_actors() -> List[Dict[str, Any]]:
    """One dict per actor, live and recently dead: actor_id, class_name, name, state
    (pending, starting, alive, restarting, dead), pid, restarts, death_cause,
    pending_calls (not sent to it yet), running_calls (sent, not finished)."""
    return context.ensure().list_actors()


def store_stats() -> Dict[str, Any]:
    """The arena: capacity, used, free, largest_free, objects (in the arena),
    spilled_objects, spilled_bytes, spill_file_bytes (disk space the spill file holds),
    tracked_objects (all objects, inline included)."""
    return context.ensure().store_stats()
