"""What ``pygen.state`` shows: tasks, objects and the store, as plain dicts."""
from __future__ import annotations

from typing import List

from .. import ids
from . import protocol
from .tasks import Task


class Introspection:
    """Part of ``Node``: snapshots taken under its lock."""

    def _describe_task(self, task: Task) -> dict:
        return {
            "task_id": task.spec.task_id.hex(),
            "name": task.spec.name,
            "state": task.ended_as or task.state,
            "attempt": task.attempt,
            "worker_pid": task.worker.pid if task.worker is not None else None,
            "cancelled": task.cancelled,
            "error": task.error,
            "num_returns": (task.spec.num_returns
                            if task.spec.returns_kind == protocol.RETURNS_STATIC else
                            "dynamic" if task.spec.returns_kind == protocol.RETURNS_DYNAMIC
                            else "streaming"),
        }

    def list_tasks(self) -> List[dict]:
        with self.lock:
            return ([self._describe_task(t) for t, _ in self.finished] +
                    [self._describe_task(t) for t in self.tasks.values()])

    def list_objects(self) -> List[dict]:
        with self.lock:
            out = []
            for entry in self.objects.entries.values():
                if ids.kind_of(entry.oid) == ids.KIND_STREAM:
                    continue
                desc = self.objects.describe(entry)
                desc["driver_refs"] = self.driver_refs.get(entry.oid, 0)
                info = self.store.info(entry.oid) if entry.in_store else None
                desc["zero_copy_views"] = len(info["pinned_slots"]) if info else 0
                out.append(desc)
            # No ref keeps these any more, but a zero-copy view still pins the memory.
            for oid in self.store.list_ids():
                if oid in self.objects.entries:
                    continue
                info = self.store.info(oid)
                if info is None or not info["delete_pending"]:
                    continue
                out.append({"id": oid.hex(), "kind": "released", "state": "released",
                            "size": info["data_size"] + info["meta_size"], "location": "store",
                            "is_error": False, "holders": [], "internal_refs": 0,
                            "spilled": False, "driver_refs": 0,
                            "zero_copy_views": len(info["pinned_slots"])})
            return out

    def store_stats(self) -> dict:
        with self.lock:
            stats = dict(self.store.stats())
            spilled = [e for e in self.objects.entries.values() if e.spilled is not None]
            stats["spilled_objects"] = len(spilled)
            stats["spilled_bytes"] = sum(e.spilled[1] + e.spilled[2] for e in spilled)
            stats["spill_file_bytes"] = self.spill.allocated_bytes()
            stats["tracked_objects"] = len([e for e in self.objects.entries.values()
                                            if ids.kind_of(e.oid) != ids.KIND_STREAM])
            return stats
