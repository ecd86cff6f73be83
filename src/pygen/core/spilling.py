"""Spilling: when the arena is full, sealed objects nobody reads go to the spill file.

Least recently read first; an object pinned by a zero-copy view is never spilled (its
memory is in use).  A spilled object is restored into the arena when somebody reads it.
The node calls both under its lock.
"""
from __future__ import annotations

from typing import Any

from ..exceptions import ObjectStoreFullError
from .objects import ObjectDirectory, ObjEntry
from .spill import SpillFile


class Spiller:
    def __init__(self, store: Any, objects: ObjectDirectory, spill: SpillFile) -> None:
        self.store = store
        self.objects = objects
        self.spill = spill

    def make_room(self, nbytes: int) -> bool:
        """Spill sealed objects nobody reads until a block of ``nbytes`` may fit.

        False when that is impossible: nothing spillable is left, or ``nbytes`` is larger
        than the whole arena (then nothing is spilled for nothing).
        """
        if nbytes > self.store.capacity:
            return False
        stats = self.store.stats()
        if stats["largest_free"] >= nbytes:
            return True
        candidates = sorted((e for e in self.objects.entries.values()
                             if e.in_store and e.ready and e.spilled is None),
                            key=lambda e: e.last_access)
        for entry in candidates:
            info = self.store.info(entry.oid)
            if info is None or info["pinned_slots"] or info["state"] != "sealed":
                continue
            buf = self.store.get(entry.oid, timeout=0.0)
            if buf is None:
                continue
            try:
                location = self.spill.write(buf)
            finally:
                buf.release()
            if not self.store.delete(entry.oid):  # someone pinned it meanwhile
                self.spill.release(location)
                continue
            entry.in_store = False
            entry.spilled = location
            if self.store.stats()["largest_free"] >= nbytes:
                return True
        return self.store.stats()["largest_free"] >= nbytes

    def restore(self, entry: ObjEntry) -> None:
        """Read a spilled object back into the arena (spilling others if it must)."""
        location = entry.spilled
        assert location is not None
        size = location[1] + location[2]
        for _ in range(2):
            try:
                writer = self.store.create_object(entry.oid, location[2], location[1])
                break
            except ObjectStoreFullError:
                self.make_room(size)
        else:
            writer = self.store.create_object(entry.oid, location[2], location[1])
        try:
            self.spill.read_into(location, writer)
        except BaseException:
            self.store.abort(entry.oid)
            raise
        del writer
        self.store.seal(entry.oid)
        self.spill.release(location)
        entry.spilled = None
        entry.in_store = True

