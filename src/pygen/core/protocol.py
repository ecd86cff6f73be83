"""Every control message, defined in one place.

A message is a tuple of plain data (ints, floats, bytes, str, None, lists and tuples of
them) whose first element is its kind; ``transport`` frames and marshals it.  Values
ride in messages only below the inline threshold: a payload is

    (flags, inline bytes or None, size)   -- None: the value is in the store under its id

Worker -> node                               Node -> worker
  HELLO   worker_id pid store_slot             EXEC    task (see ``exec_message``)
  RESULT  task attempt returns retryable       CANCEL  task_id force
  ITEM    task attempt index payload contained ACK     task_id consumed   (backpressure)
  ITEMS   task attempt [(index payload contained), ...]   (a batch of a fast generator)
  END     task attempt count payload contained CLOSE   task_id            (stop a stream)
          retryable kind                       REPLY   req_id status body
  SUBMIT  spec                                 EXIT
  PUT     oid payload contained
  GET     req_id oids timeout
  WAIT    req_id oids streams num_returns timeout
  NEXT    req_id task_id timeout
  REFS    added removed
  CANCEL_REQ oid force recursive
  CLOSE_REQ  task_id
  FN      fn_id blob
  ROOM    req_id nbytes                        (ask the node to spill to make room)
  SUBSCRIBE oid                                READY oid            (futures in workers)
  RECLAIMED task_ids                           RECLAIM task_ids     (take back queued tasks)

RESULT and END also carry the task's run time, from which the node learns which
functions are short enough to pipeline (send a worker its next task before the
current one ends).
"""
from __future__ import annotations

# worker -> node
HELLO = 1
RESULT = 2
ITEM = 3
END = 4
SUBMIT = 5
PUT = 6
GET = 7
WAIT = 8
NEXT = 9
REFS = 10
CANCEL_REQ = 11
CLOSE_REQ = 12
FN = 13
ROOM = 14
SUBSCRIBE = 15
RECLAIMED = 16
ITEMS = 17

# node -> worker
EXEC = 31
CANCEL = 32
ACK = 33
CLOSE = 34
REPLY = 35
EXIT = 36
READY = 37
RECLAIM = 38

# REPLY statuses
OK = 0
TIMEOUT = 1
END_OF_STREAM = 2
FAILED = 3

# how a task hands back its values (EXEC field and node bookkeeping)
RETURNS_STATIC = 0     # num_returns = k: fixed return ids
RETURNS_DYNAMIC = 1    # one ref whose value lists the items
RETURNS_STREAMING = 2  # ObjectRefGenerator

# END kinds: why a generator ended
END_RETURNED = 0
END_RAISED = 1
END_CANCELLED = 2
END_CLOSED = 3


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
