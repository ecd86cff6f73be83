"""``@pygen.remote`` on a function: ``RemoteFunction``, its ``.options()`` and ``.remote()``."""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Dict, Generic, Optional, Tuple, Union, overload


from . import context, options, serialization
from ._typing import P, R
from .callables import is_generator_function
from .core import protocol

_KINDS = {"dynamic": protocol.RETURNS_DYNAMIC, "streaming": protocol.RETURNS_STREAMING}


class _PickledFunction:
    """The function pickled once (lazily: globals may be defined after decoration)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.blob: Optional[bytes] = None
        self.fn_id = b""

    def get(self) -> "tuple[bytes, bytes]":
        if self.blob is None:
            blob = serialization.dumps_by_value(self.fn)
            self.fn_id = hashlib.blake2b(blob, digest_size=16).digest()
            self.blob = blob
        return self.fn_id, self.blob


class RemoteFunction(Generic[P, R]):
    """A function that runs as a task in a worker process when called with ``.remote()``.

    Made by ``@pygen.remote``.  ``RemoteFunction[P, R]`` for a type checker: ``.remote()``
    takes the function's own parameters ``P`` and returns ``R``, an ``ObjectRef`` of what
    the function returns, or an ``ObjectRefGenerator`` of what a generator function yields.
    """

    def __init__(self, fn: Any, task_options: Dict[str, Any],
                 _pickled: Optional[_PickledFunction] = None) -> None:
        self._function = fn
        self._options = options.with_defaults(options.TASK_OPTIONS, task_options)
        self._is_generator = is_generator_function(fn)
        self._pickled = _pickled or _PickledFunction(fn)
        self._cached: Optional[tuple] = None
        self._name = getattr(fn, "__name__", "task")
        kind = self._options["num_returns"]
        if kind in options.NUM_RETURNS_KINDS and not self._is_generator:
            raise TypeError(
                f"num_returns={kind!r} needs a generator function, but {self._name} is a "
                f"plain function: its result is one value. Make it a generator function "
                f"(with yield), or use an int num_returns")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._name} cannot be called directly: "
                        f"use {self._name}.remote(...) to run it as a task")

    @overload
    def options(self, *, num_returns: Union[int, str], **task_options: Any
                ) -> "RemoteFunction[P, Any]": ...

    @overload
    def options(self, **task_options: Any) -> "RemoteFunction[P, R]": ...

    def options(self, **task_options: Any) -> "RemoteFunction[P, Any]":
        """A copy with some options changed (validated now, not at ``.remote()``): the
        options of ``@pygen.remote``.  With ``num_returns``, what ``.remote()`` returns
        changes (a list of refs, a generator), and the type checker sees ``Any``."""
        checked = options.validate(options.TASK_OPTIONS, task_options, f"task {self._name}")
        merged = {k: v for k, v in self._options.items()}
        merged.update(checked)
        return RemoteFunction(self._function, merged, self._pickled)

    def _submission(self) -> tuple:
        """What every call shares, computed once: (fn_id, name, kind, count, ...)."""
        if self._cached is None:
            opts = self._options
            fn_id, blob = self._pickled.get()
            num_returns = opts["num_returns"]
            if num_returns is None:
                num_returns = "streaming" if self._is_generator else 1
            kind = _KINDS.get(num_returns, protocol.RETURNS_STATIC)
            retry = opts["retry_exceptions"]
            if isinstance(retry, tuple):
                retry = serialization.dumps_by_value(retry)
            self._cached = (fn_id, blob, opts["name"] or self._name, kind,
                            num_returns if kind == protocol.RETURNS_STATIC else 1,
                            opts["max_retries"], retry, opts["num_cpus"], opts["memory"],
                            opts["generator_backpressure"] or 0)
        return self._cached

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Submit a task running the function with these arguments: an ``ObjectRef`` to its
        result (a list of refs for ``num_returns=k``, None for 0), or an
        ``ObjectRefGenerator`` for a streaming generator.  It returns at once; the task runs
        in a worker."""
        return context.ensure().submit_task(self, args, kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"RemoteFunction({self._name})"

    def __reduce__(self) -> Tuple[type, Tuple[Any, Dict[str, Any]]]:
        return (RemoteFunction, (self._function, self._options))
