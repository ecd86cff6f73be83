"""A small program using pygen's API with full type annotations: it passes ``mypy --strict``
(tests/test_typing.py checks it), and shows what a type checker sees.

* ``@pygen.remote`` keeps the function's parameters: ``scale.remote("x", 2)`` is an error
  for mypy as ``scale("x", 2)`` would be;
* ``.remote()`` of a function returning ``T`` gives an ``ObjectRef[T]``, and ``pygen.get``
  of it a ``T``; of a generator yielding ``Y``, an ``ObjectRefGenerator[Y]``;
* ``pygen.put(value)`` gives an ``ObjectRef`` of the value's type;
* ``pygen.remote(SomeClass)`` gives an ``ActorClass[SomeClass]``: its ``.remote(...)`` an
  ``ActorHandle[SomeClass]``, its ``.options(...)`` another ``ActorClass[SomeClass]``; a
  method's ``.remote()`` gives ``Any`` (a ref, refs or a generator, by the method).

mypy ignores what a class decorator returns (python/mypy#3135): under mypy, ``@pygen.remote``
on a class leaves the class's type as it was, so a typed program makes its actor class with
a call, ``Accumulator = pygen.remote(_Accumulator)``, as below.  (Pyright honours the
decorator's type: there ``@pygen.remote`` on the class types the same way.)
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterator, List

import numpy as np
import numpy.typing as npt

import pygen
from pygen.exceptions import TaskError

FloatArray = npt.NDArray[np.float64]


@pygen.remote
def scale(values: FloatArray, factor: float) -> FloatArray:
    return values * factor


@pygen.remote
def chunks(n: int, size: int) -> Iterator[FloatArray]:
    for i in range(n):
        yield np.full(size, float(i))


@pygen.remote(max_retries=0)
def fails(message: str) -> int:
    raise ValueError(message)


@pygen.remote
async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


class _Accumulator:
    """A sync actor: state kept between calls, a generator method."""

    def __init__(self, start: float) -> None:
        self.total = start

    def add(self, values: FloatArray) -> float:
        self.total += float(values.sum())
        return self.total

    def partial_sums(self, n: int) -> Iterator[float]:
        for i in range(n):
            yield self.total + i


Accumulator: pygen.ActorClass[_Accumulator] = pygen.remote(_Accumulator)


class _Ticker:
    """An async actor (``async def`` methods): an async generator method."""

    async def ticks(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i


Ticker = pygen.remote(max_concurrency=4)(_Ticker)


def use_actors() -> None:
    acc: pygen.ActorHandle[_Accumulator] = Accumulator.options(name="accumulator").remote(1.0)
    total: float = pygen.get(acc.add.remote(np.ones(4)))
    sums: List[float] = [pygen.get(ref) for ref in acc.partial_sums.remote(3)]
    same: pygen.ActorHandle[Any] = pygen.get_actor("accumulator")
    print("actor total:", total, "partial sums:", sums, "found by name:", same == acc)

    ticker = Ticker.remote()
    ticks: List[int] = []
    for ref in ticker.ticks.remote(3):
        ticks.append(pygen.get(ref))
    print("async actor ticks:", ticks)
    pygen.kill(acc)
    pygen.kill(ticker)


def main() -> None:
    pygen.init(num_cpus=2, object_store_memory=64 * 2**20)
    try:
        data: pygen.ObjectRef[FloatArray] = pygen.put(np.arange(4.0))
        doubled: FloatArray = pygen.get(scale.remote(pygen.get(data), 2.0))
        print("doubled:", doubled.tolist())

        totals: List[float] = []
        gen: pygen.ObjectRefGenerator[FloatArray] = chunks.remote(3, 1_000)
        for ref in gen:
            totals.append(float(pygen.get(ref).sum()))
        print("chunk sums:", totals)

        refs = [add_later.remote(i, i) for i in range(3)]
        ready, pending = pygen.wait(refs, num_returns=3, timeout=30)
        sums: List[int] = pygen.get(ready)
        print("async sums:", sums, "pending:", len(pending))

        try:
            pygen.get(fails.remote("bad input"))
        except TaskError as exc:
            print("the task's error reached the caller:", type(exc.cause).__name__, exc.cause)

        use_actors()
    finally:
        pygen.shutdown()


if __name__ == "__main__":
    main()
