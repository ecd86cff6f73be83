"""A task as the node tracks it, its states, and the table of tasks.

    WAITING (for arguments) -> QUEUED -> RUNNING (on a worker, maybe queued behind
    another short task there; or sent to an actor) -> DONE

An actor call is a task with ``spec.actor_id`` set: it waits in its actor's queue instead
of the scheduler's, and runs on the actor's worker.  An actor's creation task stays
RUNNING for as long as the actor lives (it keeps ``__init__``'s arguments alive for
restarts).
"""
from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Deque, Dict, List, NamedTuple, Optional, Set

from ..task_spec import TaskSpec
from . import protocol
from .streams import StreamState

if TYPE_CHECKING:
    from .workers import WorkerHandle

WAITING, QUEUED, RUNNING, DONE = "waiting", "queued", "running", "done"

# Finished tasks remembered for pygen.state.list_tasks(): a summary each, never the task
# itself (its arguments and item lists would keep the driver growing with work done).
FINISHED_TASK_HISTORY = 1000


class Task:
    __slots__ = ("spec", "owner", "parent", "children", "state", "attempt", "worker",
                 "pending_deps", "kept", "cancelled", "force", "stream", "reported",
                 "submitted", "ended_as", "error", "took_from", "cancel_stage")

    def __init__(self, spec: TaskSpec, owner: int, parent: Optional[bytes]) -> None:
        self.spec = spec
        self.owner = owner                # the process that submitted it (objects.DRIVER...)
        self.parent = parent              # the task that submitted it, if any
        self.children: Set[bytes] = set()
        self.state = WAITING
        self.attempt = 0
        self.worker: Optional["WorkerHandle"] = None
        self.pending_deps = 0
        self.kept: List[bytes] = []       # ids this task keeps alive until it is done
        self.cancelled = False
        self.force = False
        self.stream: Optional[StreamState] = None
        self.reported = 0                 # num_returns=k: returns already reported
        self.submitted = time.time()
        self.ended_as = ""
        self.error: Optional[str] = None
        # a streaming generator this task did not start and took items from: a new attempt
        # could not see those items again, so the task is not retried
        self.took_from: Optional[str] = None
        self.cancel_stage = ""            # where a cancel found it (" while running"...)

    @property
    def is_actor_call(self) -> bool:
        return self.spec.actor_id is not None and self.spec.method != "__init__"

    @property
    def is_actor_creation(self) -> bool:
        return self.spec.method == "__init__"


class FinishedTask(NamedTuple):
    """What ``list_tasks`` shows of a task that is over."""
    task_id: bytes
    name: str
    state: str
    attempt: int
    cancelled: bool
    error: Optional[str]
    returns_kind: int
    num_returns: int


def returns_label(returns_kind: int, num_returns: int) -> object:
    if returns_kind == protocol.RETURNS_STATIC:
        return num_returns
    return "dynamic" if returns_kind == protocol.RETURNS_DYNAMIC else "streaming"


class TaskTable:
    """Live tasks by id, the parent/child links used by recursive cancellation, and a
    bounded history of finished ones."""

    def __init__(self) -> None:
        self.live: Dict[bytes, Task] = {}
        self.history: Deque[FinishedTask] = collections.deque(maxlen=FINISHED_TASK_HISTORY)

    def add(self, task: Task) -> None:
        self.live[task.spec.task_id] = task
        parent = self.live.get(task.parent) if task.parent is not None else None
        if parent is not None:
            parent.children.add(task.spec.task_id)

    def get(self, task_id: bytes) -> Optional[Task]:
        return self.live.get(task_id)

    def remove(self, task: Task, how: str) -> None:
        """``task`` is over: forget it, keep its summary."""
        task.state = DONE
        task.ended_as = how
        self.live.pop(task.spec.task_id, None)
        if task.parent is not None:
            parent = self.live.get(task.parent)
            if parent is not None:
                parent.children.discard(task.spec.task_id)
        spec = task.spec
        self.history.append(FinishedTask(spec.task_id, spec.name, how, task.attempt,
                                         task.cancelled, task.error, spec.returns_kind,
                                         spec.num_returns))

    def name_of(self, task_id: bytes) -> Optional[str]:
        """The name of a live or recently finished task (for error messages)."""
        task = self.live.get(task_id)
        if task is not None:
            return task.spec.name
        for finished in reversed(self.history):
            if finished.task_id == task_id:
                return finished.name
        return None

    def __getitem__(self, task_id: bytes) -> Task:
        return self.live[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.live

    def __len__(self) -> int:
        return len(self.live)

    def values(self):  # type: ignore[no-untyped-def]
        return self.live.values()
