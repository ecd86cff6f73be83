"""Every control message, defined in one place and read by field name.

A message is a ``NamedTuple`` of plain data (ints, floats, bytes, str, None, lists and
tuples of them).  On the wire it is the plain tuple ``(KIND, *fields)``, marshalled and
framed by ``transport``; ``decode`` turns it back into its class.  Values ride in messages
only below the inline threshold: a *payload* is the triple

    (flags, inline bytes or None, size)   -- None: the value is in the store under its id

and a *report* of one output is ``(index, payload, contained ids)``.

    worker -> node                                 node -> worker
      Hello      a worker is up                      Exec        run a task or an actor call
      Result     a task's returns (or its error)     StartActor  become this actor
      Item/Items generator items, one or a batch     Cancel      stop a task
      End        a generator ended                   Ack         items taken (backpressure)
      Submit     a nested task or actor call         Close       stop a stream
      Put        a nested put                        Reply       answer to a request
      Get/Wait/Next  requests (answered by Reply)    Exit        leave
      Refs       refs this process got / dropped     Ready       an awaited object is ready
      CancelReq/CloseReq  cancel, close()            Reclaim     give back queued tasks
      Fn         a function's pickled code
      Room       ask for spilling (Reply)
      Subscribe  tell me when an object is ready
      Reclaimed  queued tasks given back

Requests from workers name the task that makes them (``caller``): an actor runs several
calls at once, so "the worker's task" is not enough to know whose CPUs to lend, or who
took an item of a stream.

Result and End carry the task's run time, from which the node learns which functions
are short enough to pipeline (send a worker its next task before the current one ends).
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Type

Payload = Tuple[int, Optional[bytes], int]
Report = Tuple[int, Payload, List[bytes]]

# -- worker -> node ---------------------------------------------------------------------------


class Hello(NamedTuple):
    worker_id: int
    pid: int
    store_slot: int
    KIND = 1


class Result(NamedTuple):
    task_id: bytes
    attempt: int
    returns: List[Report]
    retryable: bool
    seconds: float
    KIND = 2


class Item(NamedTuple):
    task_id: bytes
    attempt: int
    index: int
    payload: Payload
    contained: List[bytes]
    KIND = 3


class End(NamedTuple):
    task_id: bytes
    attempt: int
    count: int                   # items yielded by this attempt
    payload: Optional[Payload]   # the return value, or the error
    contained: List[bytes]
    retryable: bool
    end_kind: int                # END_*
    seconds: float
    KIND = 4


class Submit(NamedTuple):
    spec: tuple                  # TaskSpec.to_wire()
    caller: Optional[bytes]      # the submitting task
    KIND = 5


class Put(NamedTuple):
    oid: bytes
    payload: Payload
    contained: List[bytes]
    KIND = 6


class Get(NamedTuple):
    req_id: int
    oids: List[bytes]
    timeout: Optional[float]
    caller: Optional[bytes]
    KIND = 7


class Wait(NamedTuple):
    req_id: int
    keys: List[bytes]
    num_returns: int
    timeout: Optional[float]
    caller: Optional[bytes]
    KIND = 8


class Next(NamedTuple):
    req_id: int
    task_id: bytes               # the stream's task
    timeout: Optional[float]
    caller: Optional[bytes]
    KIND = 9


class Refs(NamedTuple):
    added: List[bytes]
    removed: List[bytes]
    KIND = 10


class CancelReq(NamedTuple):
    oid: bytes
    force: bool
    recursive: bool
    KIND = 11


class CloseReq(NamedTuple):
    task_id: bytes
    KIND = 12


class Fn(NamedTuple):
    fn_id: bytes
    blob: bytes
    KIND = 13


class Room(NamedTuple):
    req_id: int
    nbytes: int
    KIND = 14


class Subscribe(NamedTuple):
    oid: bytes
    KIND = 15


class Reclaimed(NamedTuple):
    task_ids: List[bytes]
    KIND = 16


class Items(NamedTuple):
    task_id: bytes
    attempt: int
    items: List[Report]
    KIND = 17


class KillActor(NamedTuple):
    actor_id: bytes
    no_restart: bool
    req_id: int                  # answered by Reply once the actor process is gone
    KIND = 18


class ActorReq(NamedTuple):
    """Create, look up or list actors from a worker (answered by Reply)."""
    req_id: int
    op: str                      # "get" (by name)
    arg: Any
    KIND = 19


# -- node -> worker ---------------------------------------------------------------------------


class Exec(NamedTuple):
    task_id: bytes
    attempt: int
    fn_id: bytes
    blob: Optional[bytes]        # the function's code, the first time this worker needs it
    name: str
    args: Payload
    deps: List[Tuple[bytes, Payload]]  # resolved top-level ref arguments
    returns_kind: int
    num_returns: int
    skip: int                    # a retry: outputs already handed out, not to store again
    backpressure: int
    retry_exceptions: Any
    method: Optional[str]        # an actor call: the method's name (fn_id is then unused)
    KIND = 31


class Cancel(NamedTuple):
    task_id: bytes
    force: bool
    KIND = 32


class Ack(NamedTuple):
    task_id: bytes
    consumed: int
    KIND = 33


class Close(NamedTuple):
    task_id: bytes
    KIND = 34


class Reply(NamedTuple):
    req_id: int
    status: int
    body: Any
    KIND = 35


class Exit(NamedTuple):
    KIND = 36


class Ready(NamedTuple):
    oid: bytes
    KIND = 37


class Reclaim(NamedTuple):
    task_ids: List[bytes]
    KIND = 38


class StartActor(NamedTuple):
    """Become actor ``actor_id``: build the class, run ``__init__``, then serve calls.

    Answered by a ``Result`` for ``task_id`` (the creation task): one return, None or the
    error ``__init__`` raised.
    """
    task_id: bytes
    attempt: int
    actor_id: bytes
    class_id: bytes
    blob: Optional[bytes]
    name: str                    # the class's name: the prefix of the actor's output
    args: Payload
    deps: List[Tuple[bytes, Payload]]
    model: int                   # MODEL_*
    max_concurrency: int
    KIND = 39


MESSAGES: Tuple[Type[Any], ...] = (
    Hello, Result, Item, End, Submit, Put, Get, Wait, Next, Refs, CancelReq, CloseReq, Fn,
    Room, Subscribe, Reclaimed, Items, KillActor, ActorReq,
    Exec, Cancel, Ack, Close, Reply, Exit, Ready, Reclaim, StartActor,
)
_BY_KIND: Dict[int, Any] = {cls.KIND: cls for cls in MESSAGES}
assert len(_BY_KIND) == len(MESSAGES), "two messages share a KIND"


def encode(msg: Any) -> tuple:
    """The wire form of a message: a plain tuple (marshal takes no tuple subclasses)."""
    return (msg.KIND,) + msg


def decode(wire: tuple) -> Any:
    return _BY_KIND[wire[0]]._make(wire[1:])


# Reply statuses
OK = 0
TIMEOUT = 1
END_OF_STREAM = 2
FAILED = 3

# how a task hands back its values (Exec field and node bookkeeping)
RETURNS_STATIC = 0     # num_returns = k: fixed return ids
RETURNS_DYNAMIC = 1    # one ref whose value lists the items
RETURNS_STREAMING = 2  # ObjectRefGenerator

# End kinds: why a generator ended
END_RETURNED = 0
END_RAISED = 1
END_CANCELLED = 2
END_CLOSED = 3

# actor execution models
MODEL_SYNC = 0      # one call at a time, on the worker's main thread
MODEL_THREADED = 1  # up to max_concurrency calls at once, in a thread pool
MODEL_ASYNC = 2     # up to max_concurrency calls at once, on one asyncio loop


class DepArg:
    """Placeholder for a top-level ``ObjectRef`` argument, replaced by its value.

    The caller pickles ``DepArg(i)`` where the ref stood; the node resolves dependency
    ``i`` before dispatch and the worker swaps the value in.  Refs nested deeper in
    containers are pickled as refs and stay refs.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (DepArg, (self.index,))
