"""A task as the node tracks it, and the states it goes through.

    WAITING (for arguments) -> QUEUED -> RUNNING (on a worker, maybe queued behind
    another short task there) -> DONE
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, List, Optional, Set

from ..task_spec import TaskSpec
from .streams import StreamState

if TYPE_CHECKING:
    from .workers import WorkerHandle

WAITING, QUEUED, RUNNING, DONE = "waiting", "queued", "running", "done"


class Task:
    __slots__ = ("spec", "owner", "parent", "children", "state", "attempt", "worker",
                 "pending_deps", "kept", "cancelled", "force", "stream", "reported",
                 "submitted", "ended_as", "error", "took_from")

    def __init__(self, spec: TaskSpec, owner: int, parent: Optional[bytes]) -> None:
        self.spec = spec
        self.owner = owner
        self.parent = parent
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
        # could not see those items again, so the task is not retried (see _should_retry)
        self.took_from: Optional[str] = None
