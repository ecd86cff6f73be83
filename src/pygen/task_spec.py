"""``TaskSpec``: everything the node needs to run one task, as plain data.

A driver hands it to the in-process node directly; a worker sends it inside a
``protocol.Submit`` message (``to_wire``/``from_wire``).  Arguments are already encoded: a payload
(flags, inline bytes or None, size) whose value is ``(args, kwargs)`` with each
top-level ``ObjectRef`` replaced by ``DepArg(i)``; ``deps[i]`` is that ref's id.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

from . import ids, serialization
from .core import protocol
from .object_ref import ObjectRef


class TaskSpec(NamedTuple):
    """One task or actor call, as submitted (immutable)."""
    task_id: bytes
    name: str
    fn_id: bytes
    args: tuple                  # payload: (flags, inline or None, size)
    deps: List[bytes]            # top-level refs, resolved before dispatch
    contained: List[bytes]       # refs nested in the arguments, kept alive
    returns_kind: int
    num_returns: int             # for RETURNS_STATIC
    max_retries: int             # an actor call: its actor's max_task_retries
    retry_exceptions: object     # bool, or pickled tuple of classes (bytes)
    num_cpus: float
    memory: Optional[int]
    backpressure: int            # 0: none
    actor_id: Optional[bytes] = None
    method: Optional[str] = None  # an actor call's method; "__init__" creates the actor

    def return_ids(self) -> List[bytes]:
        if self.returns_kind == protocol.RETURNS_STATIC:
            return [ids.return_id(self.task_id, i) for i in range(self.num_returns)]
        if self.returns_kind == protocol.RETURNS_DYNAMIC:
            return [ids.return_id(self.task_id, 0)]
        return []

    def args_oid(self) -> Optional[bytes]:
        """The id the arguments are stored under when they were too large to inline."""
        return ids.args_id(self.task_id) if self.args[1] is None else None

    def to_wire(self) -> tuple:
        return tuple(self)

    @classmethod
    def from_wire(cls, wire: tuple) -> "TaskSpec":
        return cls._make(wire)


_NO_ARGS: Optional[tuple] = None


def encode_args(client: object, task_id: bytes, args: tuple, kwargs: dict,
                name: str = "task") -> Tuple[tuple, List[bytes], List[bytes]]:
    """(payload, deps, contained) for a call's arguments.

    Top-level ``ObjectRef`` arguments become ``DepArg(i)`` (resolved before dispatch),
    anything else is pickled as is; refs met deeper are collected as ``contained``.
    Arguments too large to inline are written to the store under ``ids.args_id``.
    """
    global _NO_ARGS
    if not args and not kwargs:
        if _NO_ARGS is None:
            sv = serialization.serialize(((), {}))
            _NO_ARGS = (sv.flags, sv.to_bytes(), sv.total_size)
        return _NO_ARGS, [], []
    scalars = serialization.SCALARS
    if all(type(a) in scalars for a in args) and all(type(v) in scalars for v in kwargs.values()):
        # nothing in here can hold a ref or a large buffer: the short path
        data = serialization.encode_small((args, kwargs))
        if data is not None:
            return (0, data, len(data)), [], []
    deps: List[bytes] = []

    def swap(value: object) -> object:
        if type(value) is ObjectRef:
            deps.append(value.binary())
            return protocol.DepArg(len(deps) - 1)
        return value

    swapped = ([swap(a) for a in args], {k: swap(v) for k, v in kwargs.items()})
    try:
        sv = serialization.serialize(swapped)
    except Exception as exc:
        raise TypeError(f"could not pickle the arguments of task {name}: {exc}") from exc
    if sv.total_size < serialization.INLINE_THRESHOLD:
        payload = (sv.flags, sv.to_bytes(), sv.total_size)
    else:
        client.store_value(sv, ids.args_id(task_id))  # type: ignore[attr-defined]
        payload = (sv.flags, None, sv.total_size)
    return payload, deps, sv.contained_refs
