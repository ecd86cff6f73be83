"""Type variables and protocols of the public API's annotations.

The remote decorator keeps a function's parameters (a ``ParamSpec``) so that a type checker
checks the arguments of ``f.remote(...)`` as it would check ``f(...)``.  ``ParamSpec`` is in
``typing`` from Python 3.10; type checkers read it from ``typing_extensions`` (they ship its
stubs), and on Python 3.9 at run time a plain ``TypeVar`` stands in for it, only so that
``RemoteFunction[P, R]`` can be subscripted: nothing at run time depends on it.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Type, TypeVar

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    P = ParamSpec("P")
elif sys.version_info >= (3, 10):
    from typing import ParamSpec

    P = ParamSpec("P")
else:  # pragma: no cover - Python 3.9
    P = TypeVar("P")

T = TypeVar("T")                       # a task's return type, a put value's type
T_co = TypeVar("T_co", covariant=True)   # what an ObjectRef refers to (read-only: covariant)
Y_co = TypeVar("Y_co", covariant=True)   # what a generator task yields
R = TypeVar("R")                       # what ``.remote()`` returns (a ref, a generator)
Y = TypeVar("Y")
C = TypeVar("C")                       # an actor's class

if TYPE_CHECKING:
    from typing import Coroutine, Protocol, overload

    from .actor import ActorClass
    from .generators import ObjectRefGenerator
    from .object_ref import ObjectRef
    from .remote_function import RemoteFunction

    class RemoteDecorator(Protocol):
        """What ``@pygen.remote(**options)`` returns: applied to a class, an actor class;
        applied to a function, a remote function that keeps its parameters (a generator
        function's ``.remote()`` gives an ``ObjectRefGenerator`` of what it yields, a plain
        or ``async`` function's an ``ObjectRef`` of what it returns)."""

        @overload
        def __call__(self, cls: Type[C]) -> ActorClass[C]: ...  # type: ignore[overload-overlap]

        @overload
        def __call__(self, fn: Callable[P, Iterator[Y]]  # type: ignore[overload-overlap]
                     ) -> RemoteFunction[P, ObjectRefGenerator[Y]]: ...

        @overload
        def __call__(self, fn: Callable[P, AsyncIterator[Y]]  # type: ignore[overload-overlap]
                     ) -> RemoteFunction[P, ObjectRefGenerator[Y]]: ...

        @overload
        def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]]
                     ) -> RemoteFunction[P, ObjectRef[T]]: ...

        @overload
        def __call__(self, fn: Callable[P, T]) -> RemoteFunction[P, ObjectRef[T]]: ...
