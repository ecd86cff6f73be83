"""Identifiers: every task and every object has a fixed-size binary id.

    TaskID   (12 bytes) = process prefix (6 random bytes) | counter (6 bytes, big endian)
    ObjectID (20 bytes) = TaskID | kind (1) | attempt (3 bytes) | index (4 bytes)

Any process mints ids without asking anyone: the random prefix keeps processes apart,
the counter keeps one process's ids apart.  An object id says where its value comes
from, so a retried task writes the same ids for its fixed returns and distinct ids
(``attempt`` differs) for streamed items: items of an older attempt can never be
confused with a newer one's.
"""
from __future__ import annotations

import itertools
import os
import struct

TASK_ID_SIZE = 12
OBJECT_ID_SIZE = 20

KIND_RETURN = 1      # return i of a task (fixed before the task runs)
KIND_ITEM = 2        # item i of a streaming or dynamic generator, per attempt
KIND_PUT = 3         # pygen.put
KIND_COMPLETION = 4  # value of ObjectRefGenerator.completed()
KIND_STREAM = 5      # the stream itself: what an ObjectRefGenerator holds on to
KIND_ARGS = 6        # arguments too large to travel inline
KIND_ACTOR = 7       # an actor: what its handles hold on to (no value)

_prefix = os.urandom(6)
_counter = itertools.count(1)


def _fresh_prefix() -> None:
    """A forked child must not mint its parent's ids."""
    global _prefix, _counter
    _prefix = os.urandom(6)
    _counter = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_prefix)


def new_task_id() -> bytes:
    """A task id unique across every process of this machine's pygen."""
    # next() on itertools.count is atomic under the GIL: no lock needed
    return _prefix + next(_counter).to_bytes(6, "big")


_TAIL = struct.Struct(">II")  # (kind << 24 | attempt), index


def object_id(task_id: bytes, kind: int, index: int = 0, attempt: int = 0) -> bytes:
    return task_id + _TAIL.pack((kind << 24) | attempt, index)


def return_id(task_id: bytes, index: int) -> bytes:
    return object_id(task_id, KIND_RETURN, index)


def item_id(task_id: bytes, index: int, attempt: int) -> bytes:
    return object_id(task_id, KIND_ITEM, index, attempt)


def completion_id(task_id: bytes) -> bytes:
    return object_id(task_id, KIND_COMPLETION)


def stream_id(task_id: bytes) -> bytes:
    return object_id(task_id, KIND_STREAM)


def put_id() -> bytes:
    return object_id(new_task_id(), KIND_PUT)


def args_id(task_id: bytes) -> bytes:
    return object_id(task_id, KIND_ARGS)


def actor_handle_id(actor_id: bytes) -> bytes:
    """The id every handle on actor ``actor_id`` (its creation task's id) counts on."""
    return object_id(actor_id, KIND_ACTOR)


def task_of(oid: bytes) -> bytes:
    return oid[:TASK_ID_SIZE]


def kind_of(oid: bytes) -> int:
    return oid[TASK_ID_SIZE]


def index_of(oid: bytes) -> int:
    return int.from_bytes(oid[16:20], "big")
