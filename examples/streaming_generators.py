# The task examples behind the seed "Ray Generators" (doc_code/streaming_generator.py),
# ported by changing the import and the class name (StreamingObjectRefGenerator is
# pygen.ObjectRefGenerator); sleeps are shortened from 5 s to 0.2 s so it runs quickly.
import asyncio
import time

import pygen
from pygen import ObjectRefGenerator

DELAY = 0.2


@pygen.remote
def f():
    for i in range(5):
        time.sleep(DELAY)
        yield i


# -- next() and for ----------------------------------------------------------------------
gen = f.remote()
ref = next(gen)            # blocks until the first yield
assert pygen.get(ref) == 0
ref = next(gen)
assert pygen.get(ref) == 1
for ref in gen:            # 2, 3, 4 as they are yielded
    print(pygen.get(ref))


# -- errors: the exception comes at its position -----------------------------------------
@pygen.remote
def failing():
    for i in range(5):
        time.sleep(DELAY)
        if i == 2:
            raise ValueError
        yield i


gen = failing.remote()
assert pygen.get(next(gen)) == 0
assert pygen.get(next(gen)) == 1
try:
    pygen.get(next(gen))
except ValueError as e:
    print(f"Exception is raised when i == 2 as expected {e!r}")


# -- asyncio ------------------------------------------------------------------------------
@pygen.remote
def quick():
    for i in range(5):
        yield i


async def main():
    async for ref in quick.remote():
        print(await ref)


asyncio.run(main())


# -- garbage collection: items not taken are freed with the generator ----------------------
gen = quick.remote()
ref1 = next(gen)
del gen
print("first item, still readable after the generator is gone:", pygen.get(ref1))


# -- several generators consumed concurrently with asyncio --------------------------------
async def async_task():
    async for ref in f.remote():
        print(await ref)


async def main2():
    t1 = async_task()
    t2 = async_task()
    await asyncio.gather(t1, t2)


asyncio.run(main2())


# -- pygen.wait on a generator ------------------------------------------------------------
@pygen.remote
def slow():
    for i in range(5):
        time.sleep(DELAY * 5)
        yield i


gen = slow.remote()
ready, unready = pygen.wait([gen], timeout=0)   # the first yield is 1 s away
assert len(ready) == 0 and len(unready) == 1
ready, unready = pygen.wait([gen])              # until the next item is there
assert len(ready) == 1 and len(unready) == 0
next(gen)
ready, unready = pygen.wait([gen], timeout=0)   # the second yield has not happened yet
assert len(ready) == 0 and len(unready) == 1


# -- pygen.wait mixing generators and refs ------------------------------------------------
@pygen.remote
def generator_task():
    for i in range(5):
        time.sleep(DELAY)
        yield i


@pygen.remote
def regular_task():
    for i in range(5):
        time.sleep(DELAY)
    return


gen = [generator_task.remote()]
ref = [regular_task.remote()]
ready, unready = [], [*gen, *ref]
result = []

while unready:
    ready, unready = pygen.wait(unready)
    for r in ready:
        if isinstance(r, ObjectRefGenerator):
            try:
                ref = next(r)
                result.append(pygen.get(ref))
            except StopIteration:
                pass
            else:
                unready.append(r)
        else:
            result.append(pygen.get(r))
print(result)
assert sorted(x for x in result if x is not None) == [0, 1, 2, 3, 4]
