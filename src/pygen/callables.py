"""What kind of callable a task is: decided once, the same way in the driver and the worker.

A task is a generator task only if its callable is a generator function (sync or async):
then each value it yields is an item.  Anything else is a plain function, whose result
is one value: a generator object it happens to return is never iterated (SPEC §6).
"""
from __future__ import annotations

import inspect
from typing import Any

__all__ = ["is_generator_function"]


def _makes_generators(fn: Any) -> bool:
    # follows bound methods and functools.partial, not __wrapped__: a decorator may
    # turn a generator into a list, so only the callable's own code says what it returns
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def is_generator_function(fn: Any) -> bool:
    """Whether calling ``fn`` makes a generator: a generator function, a method or
    ``functools.partial`` of one, or an object whose class's ``__call__`` is one."""
    if _makes_generators(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    return _makes_generators(getattr(type(fn), "__call__", None))
