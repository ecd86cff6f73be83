"""``@pygen.remote`` on a class: ``ActorClass``, ``ActorHandle`` and ``ActorMethod``.

    Counter = pygen.remote(Counter)          # ActorClass
    c = Counter.remote(0)                    # ActorHandle: one process runs Counter(0)
    ref = c.incr.remote()                    # ActorMethod.remote -> ObjectRef
    gen = c.stream.remote(3)                 # a generator method -> ObjectRefGenerator

A handle is a counted reference to its actor (on ``ids.actor_handle_id``), like an
``ObjectRef`` is to its object: it pickles (into task arguments, other actors, stored
values), and when the last handle in every process is gone the actor ends once its
pending calls are done (as in Ray; ``lifetime="detached"`` keeps it until ``kill`` or
``shutdown``).

The execution model is decided here, from the class: any ``async def`` method makes an
async actor (one asyncio loop, up to ``max_concurrency`` calls at once, default 1000);
otherwise ``max_concurrency > 1`` makes a threaded actor; otherwise calls run one at a
time, in order.
"""
from __future__ import annotations

import inspect
import pickle
from typing import TYPE_CHECKING, Any, Dict, Generic, Optional, Tuple

from . import context, ids, options
from ._typing import C
from .core import protocol
from .object_ref import ObjectRef
from .callables import is_generator_function
from .remote_function import _KINDS, _PickledFunction

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "method"]

DEFAULT_ASYNC_CONCURRENCY = 1000
_METHOD_OPTIONS_ATTR = "__pygen_method_options__"


def method(**method_options: Any) -> Any:
    """Decorate an actor method with default options, e.g. ``@pygen.method(num_returns=2)``."""
    checked = options.validate(options.METHOD_OPTIONS, method_options, "an actor method")

    def mark(fn: Any) -> Any:
        setattr(fn, _METHOD_OPTIONS_ATTR, checked)
        return fn
    return mark


def _methods_of(cls: type) -> Dict[str, Dict[str, Any]]:
    """Every method a handle offers: name -> its default options."""
    found: Dict[str, Dict[str, Any]] = {}
    for name, attr in inspect.getmembers(cls):
        if name.startswith("__") and name.endswith("__"):
            continue
        fn = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
        if not callable(fn) or isinstance(fn, type):
            continue
        opts = dict(getattr(fn, _METHOD_OPTIONS_ATTR, {}))
        generator = is_generator_function(fn)
        opts["_generator"] = generator  # not an option: what the method is
        if opts.get("num_returns") is None:
            opts["num_returns"] = "streaming" if generator else 1
        _check_kind(f"{cls.__name__}.{name}", opts["num_returns"], generator)
        found[name] = opts
    return found


def _check_kind(name: str, num_returns: Any, generator: bool) -> None:
    """``"streaming"``/``"dynamic"`` need a generator method (SPEC §6)."""
    if isinstance(num_returns, str) and not generator:
        raise TypeError(f"num_returns={num_returns!r} needs a generator method, but {name} is "
                        f"a plain method: its result is one value. Make it a generator "
                        f"(with yield), or use an int num_returns")


def _is_async(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
               for _, fn in inspect.getmembers(cls, inspect.isfunction))


class Descriptor:
    """What a handle needs to know of its actor's class (shared by all its handles)."""

    __slots__ = ("class_name", "methods", "max_task_retries", "blob")

    def __init__(self, class_name: str, methods: Dict[str, Dict[str, Any]],
                 max_task_retries: int) -> None:
        self.class_name = class_name
        self.methods = methods
        self.max_task_retries = max_task_retries
        self.blob = pickle.dumps((class_name, methods, max_task_retries))

    @classmethod
    def from_blob(cls, blob: bytes) -> "Descriptor":
        return cls(*pickle.loads(blob))


class ActorClass(Generic[C]):
    """A class whose instances run in processes of their own: create one with ``.remote()``.

    Made by ``@pygen.remote`` on a class.  ``ActorClass[C]`` for a type checker (``C``: the
    decorated class): ``.remote(...)`` gives an ``ActorHandle[C]``, ``.options(...)`` an
    ``ActorClass[C]``.
    """

    def __init__(self, cls: type, actor_options: Dict[str, Any],
                 _pickled: Optional[_PickledFunction] = None) -> None:
        self._cls = cls
        self._name = cls.__name__
        self._options = options.with_defaults(options.ACTOR_OPTIONS, actor_options)
        self._pickled = _pickled or _PickledFunction(cls)
        self._methods = _methods_of(cls)
        self._async = _is_async(cls)
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self._name} cannot be instantiated directly: use "
                        f"{self._name}.remote(...) to create an actor")

    def options(self, **actor_options: Any) -> "ActorClass[C]":
        """A copy with some options changed (validated now, not at ``.remote()``): ``name``,
        ``get_if_exists``, ``lifetime``, ``max_concurrency``, ``max_restarts``,
        ``max_task_retries``, ``num_cpus``, ``memory``."""
        checked = options.validate(options.ACTOR_OPTIONS, actor_options, f"actor {self._name}")
        merged = dict(self._options)
        merged.update(checked)
        return ActorClass(self._cls, merged, self._pickled)

    def _model(self) -> Tuple[int, int]:
        """(execution model, max_concurrency)."""
        limit = self._options["max_concurrency"]
        if self._async:
            return protocol.MODEL_ASYNC, limit or DEFAULT_ASYNC_CONCURRENCY
        if limit is not None and limit > 1:
            return protocol.MODEL_THREADED, limit
        return protocol.MODEL_SYNC, 1

    def _descriptor(self) -> "Descriptor":
        return Descriptor(self._name, self._methods, self._options["max_task_retries"])

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle[C]":
        """Start the actor (its ``__init__`` runs in its own process) and return a handle."""
        return context.ensure().create_actor(self, args, kwargs)

    def __repr__(self) -> str:
        return f"ActorClass({self._name})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (ActorClass, (self._cls, self._options))


class ActorHandle(Generic[C]):
    """A reference to a live actor: call its methods with ``handle.method.remote(...)``.

    ``ActorHandle[C]`` for a type checker: a handle to an actor of class ``C``; each of its
    methods is an ``ActorMethod`` (what ``.remote()`` returns depends on the method and its
    options, so a type checker sees ``Any`` there).
    """

    __slots__ = ("_actor_id", "_descriptor", "_handle", "_method_cache", "__weakref__")

    def __init__(self, actor_id: bytes, descriptor: Descriptor, *,
                 _registered: bool = False) -> None:
        self._actor_id = actor_id
        self._descriptor = descriptor
        self._method_cache: Dict[str, ActorMethod] = {}
        # counted like a ref: while any handle exists anywhere, the actor lives
        self._handle = ObjectRef(ids.actor_handle_id(actor_id), _registered=_registered)

    def __getattr__(self, name: str) -> "ActorMethod":
        if name.startswith("__"):
            raise AttributeError(name)
        cached = self._method_cache.get(name)
        if cached is not None:
            return cached
        descriptor = self._descriptor
        if name not in descriptor.methods:
            raise AttributeError(f"actor {descriptor.class_name} has no method {name!r}")
        found = self._method_cache[name] = ActorMethod(self, name, descriptor.methods[name])
        return found

    def _client(self) -> "Runtime":
        """The runtime of this actor."""
        return self._handle._live_client()

    @property
    def actor_id(self) -> bytes:
        """The actor's id (12 bytes; ``.hex()`` is what ``pygen.state.list_actors`` shows)."""
        return self._actor_id

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"ActorHandle({self._descriptor.class_name}, {self._actor_id.hex()})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        from . import serialization

        collector = serialization.current_ref_collector()
        if collector is not None:  # whatever holds this pickled handle keeps the actor
            collector.append(ids.actor_handle_id(self._actor_id))
        return (_rebuild_handle, (self._actor_id, self._descriptor.blob))


def _rebuild_handle(actor_id: bytes, blob: bytes) -> "ActorHandle[Any]":
    return ActorHandle(actor_id, Descriptor.from_blob(blob))


class ActorMethod:
    """One method of an actor: ``.remote(...)`` calls it, ``.options(...)`` changes how."""

    __slots__ = ("_handle", "_name", "_options", "_cached")

    def __init__(self, handle: "ActorHandle[Any]", name: str,
                 method_options: Dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._options = method_options
        self._cached: Optional[tuple] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor method {self._handle._descriptor.class_name}.{self._name} "
                        f"cannot be called directly: use handle.{self._name}.remote(...)")

    def options(self, **method_options: Any) -> "ActorMethod":
        """A copy with some options changed: ``num_returns``, ``generator_backpressure``,
        ``name`` (validated now, naming a wrong option)."""
        checked = options.validate(options.METHOD_OPTIONS, method_options,
                                   f"actor method {self._name}")
        merged = dict(self._options)
        merged.update(checked)
        _check_kind(f"{self._handle._descriptor.class_name}.{self._name}",
                    merged["num_returns"], merged.get("_generator", True))
        return ActorMethod(self._handle, self._name, merged)

    def _submission(self) -> tuple:
        if self._cached is None:
            opts = self._options
            num_returns = opts.get("num_returns", 1)
            kind = _KINDS.get(num_returns, protocol.RETURNS_STATIC)
            name = opts.get("name") or f"{self._handle._descriptor.class_name}.{self._name}"
            self._cached = (name, kind, num_returns if kind == protocol.RETURNS_STATIC else 1,
                            opts.get("generator_backpressure") or 0)
        return self._cached

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method in the actor's process: what a task's ``.remote()`` returns (a
        ref, a list of refs, None, or an ``ObjectRefGenerator`` for a generator method).
        Calls from one caller run in the order they were made."""
        return self._handle._client().call_method(self, args, kwargs)

    def __repr__(self) -> str:
        return f"ActorMethod({self._handle._descriptor.class_name}.{self._name})"
