"""Actor processes SIGKILLed while a generator method streams large items (into the arena).

The kills come from the store's own crash points (the process raises SIGKILL at that
instruction: inside the store's lock half-way through an allocation, between reserving
and publishing an object, just after sealing one it has not reported yet), as
tests/test_kill_mid_allocation.py does for tasks, and then from outside at random
moments of a backpressured stream.  The actors have ``max_restarts`` and
``max_task_retries``: the actor is restarted and the call runs again.

Each time: every item reaches the caller once, in order; the store passes its
consistency check; once the refs are dropped nothing is left in it.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import numpy as np
import pytest

import pygen
from pygen import _store
from pygen.exceptions import ActorDiedError

from conftest import attempt, store_empty

pytestmark = [pytest.mark.usefixtures("session"), pytest.mark.timeout(120)]

T = 60
ITEM = 50_000          # int64s: 400 KB, above the inline threshold (written to the arena)

POINTS = ["alloc_split", "alloc_split_half", "create_filled", "create_published",
          "create_indexed", "seal"]
KINDS = ["sync", "threaded", "async_def", "async_gen"]


def arm(point: str, countdown: int) -> None:
    _store._debug_crash_at(_store.CRASH_POINTS[point], countdown)


def check_store() -> None:
    pygen.state._node().store.check()  # raises if the arena, the table or the slots disagree


def item(i: int) -> np.ndarray:
    return np.full(ITEM, i, dtype=np.int64)


class _Streams:
    def pid(self):
        return os.getpid()

    def big_items(self, d, point, n, crash_at=3):
        crash = attempt(d) == 1
        for i in range(n):
            value = item(i)
            if crash and i == crash_at:
                arm(point, 1)       # dies storing item 3; items 0-2 were already out
            yield value

    def big_stream(self, d, n, nbytes):
        with open(os.path.join(d, f"pid-{os.getpid()}"), "w"):
            pass
        for i in range(n):
            yield np.full(nbytes // 8, i, dtype=np.int64)  # most of the time goes to the store


@pygen.remote(max_restarts=1, max_task_retries=1)
class SyncStreamer(_Streams):
    pass


@pygen.remote(max_restarts=1, max_task_retries=1)
class AsyncDefStreamer(_Streams):
    async def ping(self):
        return "pong"


@pygen.remote(max_restarts=1, max_task_retries=1)
class AsyncStreamer:
    def pid(self):
        return os.getpid()

    async def big_items(self, d, point, n, crash_at=3):
        crash = attempt(d) == 1
        for i in range(n):
            await asyncio.sleep(0)
            value = item(i)
            if crash and i == crash_at:
                arm(point, 1)
            yield value


def make(kind: str, **options):
    cls = {"sync": SyncStreamer, "threaded": SyncStreamer, "async_def": AsyncDefStreamer,
           "async_gen": AsyncStreamer}[kind]
    if kind == "threaded":
        options.setdefault("max_concurrency", 4)
    return cls.options(**options).remote() if options else cls.remote()


def assert_every_item_once(arrays, n) -> None:
    assert [int(a[0]) for a in arrays] == list(range(n))     # once each, in order
    assert all(a.shape == (ITEM,) and int(a[-1]) == i for i, a in enumerate(arrays))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("point", POINTS)
def test_an_actor_killed_mid_item_is_restarted_and_every_item_comes_once(tmp_path, point,
                                                                          kind):
    n = 8
    recoveries = pygen.state.store_stats()["recoveries"]
    a = make(kind)
    first_pid = pygen.get(a.pid.remote(), timeout=T)
    got = [pygen.get(ref, timeout=T) for ref in a.big_items.remote(str(tmp_path), point, n)]
    assert_every_item_once(got, n)
    assert len(os.listdir(tmp_path)) == 2                   # killed once, run twice
    assert pygen.get(a.pid.remote(), timeout=T) != first_pid  # in the restarted actor
    check_store()
    if point != "seal":  # the lock was held when the process died
        assert pygen.state.store_stats()["recoveries"] > recoveries
    del got
    assert store_empty()
    check_store()


@pytest.mark.parametrize("kind", ["sync", "async_gen"])   # both generator drivers
@pytest.mark.parametrize("returns", ["static", "dynamic"])
@pytest.mark.parametrize("point", ["alloc_split", "create_published", "seal"])
def test_static_and_dynamic_actor_generators_killed_mid_return_are_retried(tmp_path, point,
                                                                            returns, kind):
    n = 5
    a = make(kind)
    method = a.big_items.options(num_returns=n if returns == "static" else "dynamic")
    refs = method.remote(str(tmp_path), point, n, 2)
    if returns == "dynamic":
        refs = list(pygen.get(refs, timeout=T))
    got = pygen.get(refs, timeout=T)
    assert_every_item_once(got, n)
    assert len(os.listdir(tmp_path)) == 2
    check_store()
    del got, refs
    assert store_empty()
    check_store()


@pytest.mark.parametrize("kind", ["threaded", "async_gen"])
def test_every_stream_in_flight_is_retried_when_one_kills_the_actor(tmp_path, kind):
    """Two generators stream from one actor at once; one of them kills the process mid
    store.  Both calls were in flight: both run again, and each hands out every item once."""
    n = 10
    crashing, bystander = tmp_path / "crashing", tmp_path / "bystander"
    crashing.mkdir()
    bystander.mkdir()
    a = make(kind)
    # never arms; paused by its backpressure, so it is still in flight when the other dies
    quiet = a.big_items.options(generator_backpressure=1).remote(str(bystander),
                                                                  "alloc_split", n, n)
    first = pygen.get(quiet.next_ready(T), timeout=T)
    loud = a.big_items.remote(str(crashing), "create_published", n, 5)
    got_loud = [pygen.get(ref, timeout=T) for ref in loud]
    got_quiet = [first] + [pygen.get(ref, timeout=T) for ref in quiet]
    assert_every_item_once(got_loud, n)
    assert_every_item_once(got_quiet, n)
    assert len(os.listdir(crashing)) == 2 and len(os.listdir(bystander)) == 2
    check_store()
    del got_loud, got_quiet, first, loud, quiet   # (a generator keeps its completion)
    assert store_empty(), pygen.state.list_objects()
    check_store()


@pytest.mark.parametrize("kind", KINDS)
def test_killed_mid_item_without_task_retries_ends_the_stream_with_actor_died(tmp_path, kind):
    a = make(kind, max_task_retries=0)
    gen = a.big_items.remote(str(tmp_path), "alloc_split", 8)
    got, error = [], None
    for ref in gen:
        try:
            got.append(pygen.get(ref, timeout=T))
        except ActorDiedError as exc:
            error = exc
    # the items reported before the death (item 2 may still have waited in a batch)
    assert 1 <= len(got) <= 3
    assert_every_item_once(got, len(got))
    assert error is not None and "may or may not have run" in str(error), error
    check_store()
    assert pygen.get(a.pid.remote(), timeout=T) > 0   # restarted: it serves calls again
    del got, gen, error, ref
    assert store_empty(), pygen.state.list_objects()
    check_store()


@pytest.mark.parametrize("kind", ["sync", "threaded"])
def test_random_sigkills_of_an_actor_during_a_stream_of_large_items(tmp_path, kind):
    """SIGKILL from outside at random moments while the actor writes 4 MB items into the
    store (often mid-copy or mid-allocation): each time the restarted actor's retry
    delivers every item once and in order, and the store stays consistent."""
    rng = random.Random(4321 if kind == "sync" else 8765)
    n, nbytes = 24, 4 << 20
    for round_ in range(6):
        d = tmp_path / f"round-{round_}"
        d.mkdir()
        a = make(kind)
        # backpressure keeps the generator running (never more than 2 items ahead) when
        # the kill comes: taking an item lets the actor write the next one
        gen = a.big_stream.options(generator_backpressure=2).remote(str(d), n, nbytes)
        kill_after = rng.randrange(1, n - 4)
        got = []
        for ref in gen:
            arr = pygen.get(ref, timeout=T)
            got.append((int(arr[0]), int(arr[-1]), arr.nbytes))
            del arr, ref
            if len(got) == kill_after:
                pids = [int(p.name[4:]) for p in d.iterdir()]
                time.sleep(rng.random() * 0.002)   # land somewhere inside the next write
                os.kill(pids[0], signal.SIGKILL)
        del gen
        assert got == [(i, i, nbytes) for i in range(n)], (round_, kill_after)
        assert len(list(d.iterdir())) == 2      # killed once, retried once
        check_store()
        del a
    assert store_empty()
    check_store()
