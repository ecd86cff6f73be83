"""Workers SIGKILLed in the middle of a store operation -- inside the store's lock, half-way
through an allocation, between publishing and sealing an object, pinning or unpinning --
while writing a task's return or a generator's item, or reading an argument.  The kill
comes from the store's own crash points (the process raises SIGKILL at that instruction),
so it lands exactly there every time.

The last test adds SIGKILLs from outside at random moments of a stream of 4 MB items.

Each time: the error surfaces or the retry delivers (every item once, in order), the store
passes its consistency check, and once the refs are dropped nothing is left in it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import pygen
from pygen import _store
from pygen.exceptions import WorkerCrashedError

from conftest import attempt, store_empty

pytestmark = [pytest.mark.usefixtures("session"), pytest.mark.timeout(120)]

T = 60
ITEM = 50_000          # int64s: 400 KB, above the inline threshold (written to the arena)

# all inside the store's lock (the store recovers from its object table): alloc_* half-way
# through an allocation, create_* between reserving and publishing an object, seal just
# after it is marked sealed -- sealed, but never reported to the node
POINTS = ["alloc_split", "alloc_split_half", "create_filled", "create_published",
          "create_indexed", "seal"]


def arm(point: str, countdown: int) -> None:
    _store._debug_crash_at(_store.CRASH_POINTS[point], countdown)


def check_store() -> None:
    node = pygen.state._node()
    node.store.check()  # raises if the arena, the table or the slots disagree


@pygen.remote(max_retries=1)
def big_return(directory, point, seed):
    value = np.arange(ITEM, dtype=np.int64) + seed
    if attempt(directory) == 1:
        arm(point, 1)
    return value


@pygen.remote(max_retries=1)
def big_items(directory, point, n):
    crash = attempt(directory) == 1
    for i in range(n):
        value = np.full(ITEM, i, dtype=np.int64)
        if crash and i == 3:
            arm(point, 1)       # dies storing item 3; items 0-2 were already out
        yield value


@pygen.remote(max_retries=1)
def read_arg(directory, point, arr):
    # the argument is already pinned (read zero-copy) when the task runs: arm, then let
    # the crash come at the next pin (a put of our own) or unpin (the worker lets the
    # argument go as the task returns, before the result is sent)
    if attempt(directory) == 1:
        arm(point, 1)
        if point == "pin":
            pygen.get(pygen.put(np.ones(ITEM)))
        return -1
    return int(arr.sum())


@pygen.remote(max_retries=1)
def big_returns(directory, point, n):
    crash = attempt(directory) == 1
    for i in range(n):
        if crash and i == 2:
            arm(point, 1)       # dies storing return 2; returns 0-1 are ready already
        yield np.full(ITEM, i, dtype=np.int64)


@pygen.remote
def total(arr):
    return int(arr.sum())


@pygen.remote(max_retries=1)
def submits_big_arg(directory, point):
    arr = np.arange(ITEM, dtype=np.int64)
    if attempt(directory) == 1:
        arm(point, 1)           # dies writing the child's argument into the store
    return pygen.get(total.remote(arr))


@pygen.remote(max_retries=0)
def no_retry(point):
    arm(point, 1)
    return np.zeros(ITEM, dtype=np.int64)


@pytest.mark.parametrize("point", POINTS)
def test_task_return_killed_mid_store_is_retried(tmp_path, point):
    recoveries = pygen.state.store_stats()["recoveries"]
    ref = big_return.remote(str(tmp_path), point, 7)
    value = pygen.get(ref, timeout=T)
    assert np.array_equal(value, np.arange(ITEM, dtype=np.int64) + 7)
    assert len(os.listdir(tmp_path)) == 2           # killed once, run twice
    check_store()
    if point != "seal":  # the lock was held when the process died
        assert pygen.state.store_stats()["recoveries"] > recoveries
    del value, ref
    assert store_empty()
    check_store()


@pytest.mark.parametrize("point", POINTS)
def test_generator_killed_mid_item_delivers_every_item_once(tmp_path, point):
    n = 8
    got = [pygen.get(ref, timeout=T) for ref in big_items.remote(str(tmp_path), point, n)]
    assert [int(a[0]) for a in got] == list(range(n))      # once each, in order
    assert all(a.shape == (ITEM,) and int(a[-1]) == i for i, a in enumerate(got))
    assert len(os.listdir(tmp_path)) == 2
    check_store()
    del got
    assert store_empty()
    check_store()


@pytest.mark.parametrize("point", ["pin", "unpin"])
def test_task_killed_pinning_or_unpinning_is_retried(tmp_path, point):
    arg = pygen.put(np.arange(ITEM, dtype=np.int64))
    assert pygen.get(read_arg.remote(str(tmp_path), point, arg), timeout=T) == \
        ITEM * (ITEM - 1) // 2
    assert len(os.listdir(tmp_path)) == 2
    check_store()
    info = [o for o in pygen.state.list_objects() if o["id"] == arg.hex()]
    assert info and info[0]["zero_copy_views"] == 0   # the dead worker's pin is gone
    del arg
    assert store_empty()
    check_store()


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("point", ["alloc_split", "create_published", "seal"])
def test_static_and_dynamic_generators_killed_mid_return_are_retried(tmp_path, kind, point):
    n = 5
    if kind == "static":
        refs = big_returns.options(num_returns=n).remote(str(tmp_path), point, n)
    else:
        refs = list(pygen.get(big_returns.options(num_returns="dynamic").remote(
            str(tmp_path), point, n), timeout=T))
    got = pygen.get(refs, timeout=T)
    assert [int(a[0]) for a in got] == list(range(n))
    assert all(int(a[-1]) == i for i, a in enumerate(got))
    assert len(os.listdir(tmp_path)) == 2
    check_store()
    del got, refs
    assert store_empty()
    check_store()


@pytest.mark.parametrize("point", ["alloc_split", "create_indexed", "seal"])
def test_task_killed_writing_a_nested_tasks_argument_is_retried(tmp_path, point):
    assert pygen.get(submits_big_arg.remote(str(tmp_path), point), timeout=T) == \
        ITEM * (ITEM - 1) // 2
    assert len(os.listdir(tmp_path)) == 2
    check_store()
    assert store_empty()
    check_store()


def test_killed_mid_allocation_without_retries_surfaces_the_crash():
    with pytest.raises(WorkerCrashedError):
        pygen.get(no_retry.remote("alloc_split"), timeout=T)
    check_store()
    # the store still serves everyone
    assert np.array_equal(pygen.get(pygen.put(np.arange(ITEM))), np.arange(ITEM))
    assert store_empty()


@pygen.remote(max_retries=1)
def big_stream(directory, n, nbytes):
    with open(os.path.join(directory, f"pid-{os.getpid()}"), "w"):
        pass
    for i in range(n):
        yield np.full(nbytes // 8, i, dtype=np.int64)   # most of the time goes to the store


def test_random_sigkills_during_a_stream_of_large_items(tmp_path):
    """SIGKILL from outside at random moments while the worker writes 4 MB items into the
    store (often mid-copy or mid-allocation): each time the retry delivers every item
    once and in order, and the store stays consistent."""
    import random
    import signal
    import time

    rng = random.Random(1234)
    n, nbytes = 24, 4 << 20
    for round_ in range(6):
        d = tmp_path / f"round-{round_}"
        d.mkdir()
        # backpressure keeps the task running (never more than 2 items ahead) when the
        # kill comes: taking an item lets the worker write the next one
        gen = big_stream.options(generator_backpressure=2).remote(str(d), n, nbytes)
        kill_after = rng.randrange(1, n - 4)
        got = []
        for ref in gen:
            a = pygen.get(ref, timeout=T)
            got.append((int(a[0]), int(a[-1]), a.nbytes))
            del a, ref
            if len(got) == kill_after:
                pids = [int(p.name[4:]) for p in d.iterdir()]
                time.sleep(rng.random() * 0.002)   # land somewhere inside the next write
                os.kill(pids[0], signal.SIGKILL)
        del gen
        assert got == [(i, i, nbytes) for i in range(n)], (round_, kill_after)
        assert len(list(d.iterdir())) == 2      # killed once, retried once
        check_store()
    assert store_empty()
    check_store()
