"""A small program using pygen's API with full type annotations: it passes ``mypy --strict``
(tests/test_typing.py checks it), and shows what a type checker sees.

* ``@pygen.remote`` keeps the function's parameters: ``scale.remote("x", 2)`` is an error
  for mypy as ``scale("x", 2)`` would be;
* ``.remote()`` of a function returning ``T`` gives an ``ObjectRef[T]``, and ``pygen.get``
  of it a ``T``; of a generator yielding ``Y``, an ``ObjectRefGenerator[Y]``;
* ``pygen.put(value)`` gives an ``ObjectRef`` of the value's type.
"""
from __future__ import annotations

import asyncio
from typing import Iterator, List

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
    finally:
        pygen.shutdown()


if __name__ == "__main__":
    main()
