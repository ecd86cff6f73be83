"""A value as the control channel carries it: a payload, inline or in the store.

    encode(value) --small--> (flags, bytes, size)          travels inside the message
                  --large--> (flags, None, size)           written into the arena under oid

Both clients (driver and worker) encode through here, so the threshold, the fast path
for scalars and the spilling retries are decided once.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from .. import serialization
from ..exceptions import ObjectStoreFullError

# How many times a write that does not fit asks for spilling and tries again: another
# process may take the room that was made first.
ROOM_ATTEMPTS = 20


def store_with_room(sv: serialization.SerializedValue, store: Any, oid: bytes,
                    make_room: Callable[[int], bool]) -> None:
    """Write ``sv`` into ``store``; when it is full, ``make_room`` (spill) and try again
    while it reports progress.  Raises ObjectStoreFullError when no room can be made."""
    for _ in range(ROOM_ATTEMPTS):
        try:
            sv.write_to(store, oid)
            return
        except ObjectStoreFullError:
            if not make_room(sv.total_size):
                raise
    sv.write_to(store, oid)


def encode(value: Any, oid: bytes, store: Any, make_room: Callable[[int], bool], *,
           error: bool = False, on_store: Optional[Callable[[], None]] = None
           ) -> Tuple[tuple, List[bytes]]:
    """(payload, contained refs) of ``value``; large values are written under ``oid``
    (``on_store`` is called first: pickling is done, storing begins)."""
    if not error and type(value) in serialization.SCALARS:
        data = serialization.encode_small(value)
        if data is not None:
            return (0, data, len(data)), []
    sv = serialization.serialize(value, error=error)
    if sv.total_size < serialization.INLINE_THRESHOLD:
        return (sv.flags, sv.to_bytes(), sv.total_size), sv.contained_refs
    if on_store is not None:
        on_store()
    store_with_room(sv, store, oid, make_room)
    return (sv.flags, None, sv.total_size), sv.contained_refs
