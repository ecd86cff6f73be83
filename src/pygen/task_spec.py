"""``TaskSpec``: everything the node needs to run one task, as plain data.

A driver hands it to the in-process node directly; a worker sends it as a SUBMIT
message (``to_message``/``from_message``).  Arguments are already encoded: a payload
(flags, inline bytes or None, size) whose value is ``(args, kwargs)`` with each
top-level ``ObjectRef`` replaced by ``DepArg(i)``; ``deps[i]`` is that ref's id.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from . import ids, serialization
from .core import protocol
from .object_ref import ObjectRef


class TaskSpec:
    __slots__ = ("task_id", "name", "fn_id", "args", "deps", "contained", "returns_kind",
                 "num_returns", "max_retries", "retry_exceptions", "num_cpus", "memory",
                 "backpressure", "actor_id", "method")

    def __init__(self, task_id: bytes, name: str, fn_id: bytes, args: tuple,
                 deps: List[bytes], contained: List[bytes], returns_kind: int,
                 num_returns: int, max_retries: int, retry_exceptions: object,
                 num_cpus: float, memory: Optional[int], backpressure: int,
                 actor_id: Optional[bytes] = None, method: Optional[str] = None) -> None:
        self.task_id = task_id
        self.name = name
        self.fn_id = fn_id
        self.args = args                # payload: (flags, inline or None, size)
        self.deps = deps                # top-level refs, resolved before dispatch
        self.contained = contained      # refs nested in the arguments, kept alive
        self.returns_kind = returns_kind
        self.num_returns = num_returns  # for RETURNS_STATIC
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions  # bool, or pickled tuple of classes (bytes)
        self.num_cpus = num_cpus
        self.memory = memory
        self.backpressure = backpressure  # 0: none
        self.actor_id = actor_id
        self.method = method

    def return_ids(self) -> List[bytes]:
        if self.returns_kind == protocol.RETURNS_STATIC:
            return [ids.return_id(self.task_id, i) for i in range(self.num_returns)]
        if self.returns_kind == protocol.RETURNS_DYNAMIC:
            return [ids.return_id(self.task_id, 0)]
        return []

    def args_oid(self) -> Optional[bytes]:
        """The id the arguments are stored under when they were too large to inline."""
        return ids.args_id(self.task_id) if self.args[1] is None else None

    def to_message(self) -> Tuple:
        return (protocol.SUBMIT, self.task_id, self.name, self.fn_id, self.args, self.deps,
                self.contained, self.returns_kind, self.num_returns, self.max_retries,
                self.retry_exceptions, self.num_cpus, self.memory, self.backpressure,
                self.actor_id, self.method)

    @classmethod
    def from_message(cls, msg: Tuple) -> "TaskSpec":
        return cls(*msg[1:])


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
