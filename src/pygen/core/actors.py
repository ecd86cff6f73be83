"""The actor table: every actor's life, and the queue of calls to it.

    Cls.remote() --> PENDING (arguments, CPUs) --> STARTING (a worker of its own runs
    __init__) --> ALIVE (calls flow) --worker died--> RESTARTING (max_restarts left) -->
    STARTING ... --> DEAD (killed, crashed for good, __init__ raised, all handles gone)

One process per actor, for its whole life.  The actor's creation task (``spec.method ==
"__init__"``) keeps ``__init__``'s arguments alive and stays RUNNING while the actor
lives, so a restart runs ``__init__`` again with the same arguments.

Calls: each call is a task whose outputs (refs, generators) work exactly like a plain
task's.  The table keeps, per actor, the calls not yet sent (``queue``, in submission
order) and the calls sent to the worker (``in_flight``).  A call is sent once its
arguments are ready and no earlier call *from the same caller* is still waiting for
its own: calls from one caller run in submission order, and one caller's slow
argument does not hold up the others.  The worker runs what it gets in order (sync),
or up to ``max_concurrency`` at once (threaded, async).

Death: calls in flight are re-run on the restarted actor while ``max_task_retries``
allows, else they fail with ``ActorDiedError`` saying they may or may not have run;
queued calls wait for the restart, or fail with ``ActorDiedError`` (and so does every
later call) when the actor is dead for good.  The error always says why it died.
Everything here runs under the node's lock.
"""
from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional

from .. import ids, serialization
from ..exceptions import ActorDiedError
from . import protocol, workers
from .tasks import QUEUED, RUNNING, WAITING, Task

if TYPE_CHECKING:
    from .node import Node

PENDING, STARTING, ALIVE, RESTARTING, DEAD = "pending", "starting", "alive", "restarting", "dead"
# Dead actors remembered for pygen.state.list_actors().
DEAD_ACTOR_HISTORY = 1000


class ActorState:
    __slots__ = ("actor_id", "class_name", "name", "creation", "descriptor", "model",
                 "max_concurrency", "max_restarts", "num_cpus", "memory_limit", "detached",
                 "state", "worker", "queue", "in_flight", "restarts", "death", "kill_asked",
                 "no_restart", "on_dead", "orphaned", "blocked_calls", "pid")

    def __init__(self, creation: Task, class_name: str, name: Optional[str],
                 descriptor: bytes, options: Dict[str, Any], default_memory: Optional[int]) -> None:
        self.actor_id = creation.spec.task_id
        self.creation: Optional[Task] = creation   # None once dead
        self.class_name = class_name
        self.name = name
        self.descriptor = descriptor      # what a handle is rebuilt from (get_actor)
        self.model = options["model"]
        self.max_concurrency = options["max_concurrency"]
        self.max_restarts = options["max_restarts"]
        self.num_cpus = creation.spec.num_cpus
        self.memory_limit = creation.spec.memory or default_memory
        self.detached = options.get("lifetime") == "detached"
        self.state = PENDING
        self.worker: Optional[workers.WorkerHandle] = None
        self.queue: Deque[Task] = collections.deque()   # calls not sent yet, in order
        self.in_flight: Dict[bytes, Task] = {}           # sent to the worker, in order
        self.restarts = 0
        self.death = ""                   # why it is dead (the ActorDiedError's message)
        self.kill_asked = False           # pygen.kill is killing its process
        self.no_restart = False
        self.on_dead: List[Callable[[], None]] = []      # kill() waiting for the process
        self.orphaned = False             # no handle on it exists any more
        self.blocked_calls = 0            # calls waiting in get/wait/next (CPU lending)
        self.pid: Optional[int] = None

    def restarts_left(self) -> bool:
        return self.max_restarts < 0 or self.restarts < self.max_restarts

    def describe(self) -> str:
        return f"actor {self.class_name} ({self.actor_id.hex()})"


class ActorTable:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.actors: Dict[bytes, ActorState] = {}          # live ones
        self.named: Dict[str, bytes] = {}
        # dead ones, so that a later call says why it died (bounded: oldest forgotten)
        self.dead: "collections.OrderedDict[bytes, ActorState]" = collections.OrderedDict()

    # -- creation ---------------------------------------------------------------------------
    def create(self, creation: Task, class_name: str, name: Optional[str], descriptor: bytes,
               options: Dict[str, Any], get_if_exists: bool) -> "tuple[bytes, bytes]":
        """Register a new actor, or return the live one named ``name`` (get_if_exists).

        Returns (actor_id, descriptor) of the actor the caller's handle must point to;
        raises ValueError when the name is taken.  The creation task is submitted by
        the node once this returned the new actor's own id.
        """
        if name is not None and name in self.named:
            existing = self.actors[self.named[name]]
            if get_if_exists:
                return existing.actor_id, existing.descriptor
            raise ValueError(f"an actor named {name!r} already exists ({existing.describe()}); "
                             f"pick another name, use pygen.get_actor({name!r}), or pass "
                             f"get_if_exists=True")
        actor = ActorState(creation, class_name, name, descriptor, options,
                           self.node.worker_memory_limit)
        self.actors[actor.actor_id] = actor
        if name is not None:
            self.named[name] = actor.actor_id
        return actor.actor_id, descriptor

    def place(self, creation: Task) -> None:
        """The creation task's arguments are ready and its CPUs taken: find it a worker."""
        actor = self.actors.get(creation.spec.actor_id or b"")
        if actor is None or actor.state == DEAD:
            return
        actor.state = STARTING
        creation.state = RUNNING
        self.node.pool.for_actor(lambda w: self._start_on(actor, w))

    def _start_on(self, actor: ActorState, w: workers.WorkerHandle) -> None:
        node = self.node
        if actor.state == DEAD:  # killed while it waited for a worker
            w.state = workers.EXITING
            node.outbox.send(w, protocol.Exit())
            return
        w.actor = actor
        w.state = workers.BUSY
        actor.worker = w
        actor.pid = w.pid
        creation = actor.creation
        assert creation is not None
        creation.worker = w
        spec = creation.spec
        blob = None
        if spec.fn_id not in w.sent_functions:
            blob = node.functions[spec.fn_id]
            w.sent_functions.add(spec.fn_id)
        deps = [(dep, node.payload_for_reading(dep)) for dep in spec.deps]
        node.outbox.send(w, protocol.StartActor(
            spec.task_id, creation.attempt, actor.actor_id, spec.fn_id, blob,
            actor.class_name, spec.args, deps, actor.model, actor.max_concurrency))
        if w.memory_limit is not None:
            node.pool.watch_memory()

    def init_done(self, creation: Task, payload: Optional[tuple]) -> None:
        """The worker reported how ``__init__`` went (None: it returned)."""
        actor = self.actors.get(creation.spec.task_id)
        if actor is None or actor.state == DEAD:
            return
        if payload is not None and payload[0] & serialization.FLAG_ERROR:
            w = actor.worker
            self._die(actor, f"it died in __init__: {_error_headline(payload)}")
            if w is not None:
                w.state = workers.EXITING
                self.node.outbox.send(w, protocol.Exit())
            return
        actor.state = ALIVE
        self._dispatch(actor)

    def creation_failed(self, creation: Task, error: tuple) -> None:
        """The creation task failed before the actor started (an argument's error, shutdown)."""
        actor = self.actors.get(creation.spec.task_id)
        if actor is not None and actor.state != DEAD:
            self._die(actor, f"it could not be created: {_error_headline(error)}",
                      finish_creation=False)

    # -- calls ------------------------------------------------------------------------------
    def accept_call(self, call: Task) -> bool:
        """A new call: queue it (in order), or fail it if its actor is dead."""
        actor_id = call.spec.actor_id or b""
        actor = self.actors.get(actor_id)
        if actor is None:
            self.node.fail(call, self._died_error(self.dead.get(actor_id), call,
                                                  in_flight=False))
            return False
        actor.queue.append(call)
        return True

    def call_ready(self, call: Task) -> None:
        actor = self.actors.get(call.spec.actor_id or b"")
        if actor is not None:
            self._dispatch(actor)

    def requeue(self, call: Task) -> None:
        """A call to run again (a retry): first in its actor's queue."""
        actor = self.actors.get(call.spec.actor_id or b"")
        if actor is None or actor.state == DEAD:
            self.node.fail(call, self._died_error(actor, call, in_flight=True))
            return
        call.state = QUEUED
        actor.queue.appendleft(call)
        self._dispatch(actor)

    def _dispatch(self, actor: ActorState) -> None:
        """Send the actor every call whose turn has come (see the module docstring)."""
        if actor.state != ALIVE or actor.worker is None:
            return
        queue = actor.queue
        while queue and queue[0].state == QUEUED:
            self._send(actor, queue.popleft())
        if not queue:
            self._maybe_retire(actor)
            return
        # the head waits for an argument: later calls of *other* callers may go
        waiting_callers = set()
        kept: Deque[Task] = collections.deque()
        for call in queue:
            if call.owner in waiting_callers or call.state != QUEUED:
                waiting_callers.add(call.owner)
                kept.append(call)
            else:
                self._send(actor, call)
        actor.queue = kept

    def _send(self, actor: ActorState, call: Task) -> None:
        w = actor.worker
        assert w is not None
        call.state = RUNNING
        call.worker = w
        actor.in_flight[call.spec.task_id] = call
        self.node.exec_on(call, w)

    def call_left_worker(self, call: Task) -> None:
        """The call's Result or End came in."""
        actor = self.actors.get(call.spec.actor_id or b"")
        call.worker = None
        if actor is not None:
            actor.in_flight.pop(call.spec.task_id, None)
            if actor.orphaned:
                self._maybe_retire(actor)

    def forget_call(self, call: Task) -> None:
        """``call`` ends early (cancelled, failed): it is in no queue any more."""
        actor = self.actors.get(call.spec.actor_id or b"")
        call.worker = None
        if actor is None:
            return
        actor.in_flight.pop(call.spec.task_id, None)
        if call.state in (WAITING, QUEUED):
            try:
                actor.queue.remove(call)
            except ValueError:
                pass
            self._dispatch(actor)  # a call it held back may go now

    # -- a call waits in get/wait/next: lend the actor's CPUs ---------------------------------
    def call_blocked(self, call: Task) -> None:
        actor = self.actors.get(call.spec.actor_id or b"")
        if actor is None or actor.state == DEAD:
            return
        actor.blocked_calls += 1
        if actor.blocked_calls == 1 and actor.num_cpus:
            self.node.scheduler.free_cpus += actor.num_cpus
            self.node.dispatch()

    def call_unblocked(self, call: Task) -> None:
        actor = self.actors.get(call.spec.actor_id or b"")
        if actor is None or actor.blocked_calls == 0:
            return
        actor.blocked_calls -= 1
        if actor.blocked_calls == 0 and actor.num_cpus and actor.state != DEAD:
            self.node.scheduler.free_cpus -= actor.num_cpus

    # -- death ----------------------------------------------------------------------------------
    def worker_died(self, w: workers.WorkerHandle) -> None:
        """The actor's process is gone (crash, kill, memory limit, exit)."""
        actor: ActorState = w.actor
        if actor.worker is w:
            actor.worker = None
        if actor.state == DEAD:
            self._fire_dead(actor)
            return
        if actor.kill_asked:
            reason = "it was killed by pygen.kill"
        elif w.oom is not None:
            from .node import describe_oom

            reason = f"it was killed for using too much memory: {describe_oom(w)}"
        else:
            reason = f"the actor process (pid {w.pid}) {w.describe_exit()}"
        restart = not actor.no_restart and actor.restarts_left() and not self.node.closed
        if not restart and actor.restarts:
            reason += f" (after {actor.restarts} restart{'s' if actor.restarts > 1 else ''})"
        self._unblock_all(actor)
        in_flight = list(actor.in_flight.values())
        actor.in_flight.clear()
        # a sync actor runs its calls one by one: its status page says where the first
        # one was (a threaded or async actor runs several: no one stage to tell)
        running = in_flight[0] if in_flight and actor.model == protocol.MODEL_SYNC else None
        retried: List[Task] = []
        for call in in_flight:
            call.worker = None
            if restart and self.node.scheduler.should_retry(call):
                call.attempt += 1
                if call.stream is not None:
                    self.node.streams.new_attempt(call.stream, call.attempt)
                call.state = QUEUED
                retried.append(call)
            else:
                stage = w.stage() if call is running else ""
                self.node.fail(call, self._died_error(actor, call, in_flight=True,
                                                      reason=reason, restarted=restart,
                                                      stage=stage))
        if restart:
            actor.queue.extendleft(reversed(retried))
            actor.restarts += 1
            actor.kill_asked = False
            actor.state = RESTARTING
            assert actor.creation is not None
            actor.creation.attempt += 1
            actor.creation.worker = None
            self._fire_dead(actor)  # kill() returns once the old process is gone
            actor.state = STARTING
            self.node.pool.for_actor(lambda nw: self._start_on(actor, nw))
            return
        self._die(actor, reason)

    def _die(self, actor: ActorState, reason: str, finish_creation: bool = True) -> None:
        """The actor is dead for good: every call not done fails, later ones fail at once."""
        was_placed = actor.state not in (PENDING, DEAD)
        self._unblock_all(actor)
        actor.state = DEAD
        actor.death = reason
        if actor.name is not None and self.named.get(actor.name) == actor.actor_id:
            del self.named[actor.name]
        self.actors.pop(actor.actor_id, None)
        self.dead[actor.actor_id] = actor
        if len(self.dead) > DEAD_ACTOR_HISTORY:
            self.dead.popitem(last=False)
        if was_placed and actor.num_cpus:
            self.node.scheduler.free_cpus += actor.num_cpus
        calls = list(actor.in_flight.values())
        actor.in_flight.clear()
        for call in calls:
            self.node.fail(call, self._died_error(actor, call, in_flight=True))
        queued = list(actor.queue)
        actor.queue.clear()
        for call in queued:
            self.node.fail(call, self._died_error(actor, call, in_flight=False))
        if finish_creation and actor.creation is not None:
            self.node.finish_actor_creation(actor.creation, "finished")
        actor.creation = None  # what history keeps of a dead actor is small
        if actor.worker is None or actor.worker.state == workers.DEAD:
            self._fire_dead(actor)
        self.node.dispatch()  # its CPUs may run something else now

    def _unblock_all(self, actor: ActorState) -> None:
        if actor.blocked_calls and actor.num_cpus and actor.state != DEAD:
            self.node.scheduler.free_cpus -= actor.num_cpus
        actor.blocked_calls = 0

    def _fire_dead(self, actor: ActorState) -> None:
        callbacks, actor.on_dead = actor.on_dead, []
        self.node.objects.callbacks.extend(callbacks)

    def _died_error(self, actor: Optional[ActorState], call: Task, in_flight: bool,
                    reason: Optional[str] = None, restarted: bool = False,
                    stage: str = "") -> tuple:
        if actor is None:
            text = (f"the actor of call {call.spec.name} is dead or does not exist (it "
                    f"belongs to another pygen session, or died long ago)")
        else:
            state = "died and is being restarted" if restarted else "is dead"
            text = f"{actor.describe()} {state}: {reason or actor.death}"
            if in_flight:
                where = (" (it had not started when the actor died)"
                         if stage == " before it started"
                         else f" (the actor died{stage})" if stage else "")
                text += (f"; the call {call.spec.name} was in flight{where}, so it may or "
                         f"may not have run{self.node.scheduler.no_retry_reason(call)}")
        return self.node.system_error(ActorDiedError(text))

    def kill(self, actor_id: bytes, no_restart: bool, done: Callable[[], None]) -> None:
        """Kill the actor's process; ``done`` runs (outside the lock) once it is gone."""
        actor = self.actors.get(actor_id)
        if actor is None:
            self.node.objects.callbacks.append(done)
            return
        actor.on_dead.append(done)
        actor.no_restart = actor.no_restart or no_restart
        w = actor.worker
        if w is not None and w.state != workers.DEAD:
            actor.kill_asked = True
            workers.kill(w.pid)  # its pidfd tells the pool; worker_died does the rest
        else:
            self._die(actor, "it was killed by pygen.kill before it started")

    def handles_gone(self, actor_id: bytes) -> None:
        """No handle on the actor exists any more: it ends once its calls are done."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.detached:
            return
        actor.orphaned = True
        self._maybe_retire(actor)

    def _maybe_retire(self, actor: ActorState) -> None:
        if not actor.orphaned or actor.queue or actor.in_flight or actor.state == DEAD:
            return
        w = actor.worker
        self._die(actor, "all of its handles were gone (it was garbage-collected)")
        if w is not None and w.state != workers.DEAD:
            w.state = workers.EXITING
            self.node.outbox.send(w, protocol.Exit())

    def no_workers(self, why: str) -> None:
        for actor in list(self.actors.values()):
            if actor.state in (STARTING, RESTARTING) and actor.worker is None:
                self._die(actor, f"no worker process could be started for it: {why}")

    def shut_down(self, why: str) -> None:
        for actor in list(self.actors.values()):
            self._die(actor, why)

    # -- lookup ------------------------------------------------------------------------------------
    def by_name(self, name: str) -> Optional[ActorState]:
        actor_id = self.named.get(name)
        return self.actors.get(actor_id) if actor_id is not None else None

    def describe_all(self) -> List[dict]:
        out = []
        for actor in list(self.dead.values()) + list(self.actors.values()):
            out.append({
                "actor_id": actor.actor_id.hex(),
                "class_name": actor.class_name,
                "name": actor.name,
                "state": actor.state,
                "pid": actor.pid,
                "restarts": actor.restarts,
                "death_cause": actor.death or None,
                "pending_calls": len(actor.queue),
                "running_calls": len(actor.in_flight),
            })
        return out


def _error_headline(payload: tuple) -> str:
    try:
        err = serialization.deserialize(payload[1])[1]
    except Exception:
        return "an error that could not be decoded"
    cause = getattr(err, "cause", None)
    if cause is not None:
        text = str(cause).splitlines()[0] if str(cause) else ""
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


__all__ = ["ActorTable", "ActorState", "ids"]
