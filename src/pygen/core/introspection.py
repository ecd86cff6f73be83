"""What ``pygen.state`` shows: tasks, objects, actors and the store, as plain dicts.
Snapshots taken under the node's lock."""
from __future__ import annotations

from typing import TYPE_CHECKING, List

from .. import ids
from .tasks import Task, returns_label

if TYPE_CHECKING:
    from .node import Node

# ids that name no value: what generators and actor handles count on
_HANDLE_KINDS = (ids.KIND_STREAM, ids.KIND_ACTOR)


class Introspection:
    def __init__(self, node: "Node") -> None:
        self.node = node

    @staticmethod
    def _describe_task(task: Task) -> dict:
        return {
            "task_id": task.spec.task_id.hex(),
            "name": task.spec.name,
            "state": task.ended_as or task.state,
            "attempt": task.attempt,
            "worker_pid": task.worker.pid if task.worker is not None else None,
            "cancelled": task.cancelled,
            "error": task.error,
            "num_returns": returns_label(task.spec.returns_kind, task.spec.num_returns),
        }

    def list_tasks(self) -> List[dict]:
        node = self.node
        with node.lock:
            finished = [{"task_id": f.task_id.hex(), "name": f.name, "state": f.state,
                         "attempt": f.attempt, "worker_pid": None, "cancelled": f.cancelled,
                         "error": f.error,
                         "num_returns": returns_label(f.returns_kind, f.num_returns)}
                        for f in node.tasks.history]
            return finished + [self._describe_task(t) for t in node.tasks.values()]

    def list_actors(self) -> List[dict]:
        with self.node.lock:
            return self.node.actors.describe_all()

    def list_objects(self) -> List[dict]:
        node = self.node
        with node.lock:
            out = []
            for entry in node.objects.entries.values():
                if ids.kind_of(entry.oid) in _HANDLE_KINDS:
                    continue
                desc = node.objects.describe(entry)
                desc["driver_refs"] = node.driver_refs.get(entry.oid, 0)
                info = node.store.info(entry.oid) if entry.in_store else None
                desc["zero_copy_views"] = len(info["pinned_slots"]) if info else 0
                out.append(desc)
            # No ref keeps these any more, but a zero-copy view still pins the memory.
            for oid in node.store.list_ids():
                if oid in node.objects.entries:
                    continue
                info = node.store.info(oid)
                if info is None or not info["delete_pending"]:
                    continue
                out.append({"id": oid.hex(), "kind": "released", "state": "released",
                            "size": info["data_size"] + info["meta_size"], "location": "store",
                            "is_error": False, "holders": [], "internal_refs": 0,
                            "spilled": False, "driver_refs": 0,
                            "zero_copy_views": len(info["pinned_slots"])})
            return out

    def store_stats(self) -> dict:
        node = self.node
        with node.lock:
            stats = dict(node.store.stats())
            entries = node.objects.entries.values()
            spilled = [e for e in entries if e.spilled is not None]
            stats["spilled_objects"] = len(spilled)
            stats["spilled_bytes"] = sum(e.spilled[1] + e.spilled[2] for e in spilled)
            stats["spill_file_bytes"] = node.spill.allocated_bytes()
            stats["tracked_objects"] = len([e for e in entries
                                            if ids.kind_of(e.oid) not in _HANDLE_KINDS])
            return stats
