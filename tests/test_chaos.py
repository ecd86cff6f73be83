"""Chaos: random SIGKILLs of workers and actors while every kind of work runs.

For ``PYGEN_CHAOS_SECONDS`` (default 12: the short run of the normal suite and CI), a
few driver threads keep submitting work -- streaming generators (some with large items
in the arena, some backpressured and consumed by another task), ``num_returns=k`` and
dynamic generators, nested tasks, generator methods of sync, threaded and async actors --
while a killer thread SIGKILLs a random pygen process (task workers, actors, workers
still starting) every few hundred milliseconds.  Then the killer stops, what is in
flight finishes, and:

- work that may be retried (``max_retries=-1``; actors with ``max_restarts=-1`` and
  ``max_task_retries=-1``) delivered every item exactly once and in order;
- work that may not (``max_retries=0``, ``max_task_retries=0``, a consumer task that
  took items from a generator it did not start) either delivered everything, or ended
  with a named pygen error (WorkerCrashedError, ActorDiedError) after an in-order
  prefix, never a hang: every wait is bounded (``T``);
- nothing is left: no object (``list_objects()``), 0 bytes used in the arena, the
  store's consistency check passes, every CPU is free, and after ``shutdown`` no
  process and no /dev/shm entry remains.

Seeded and repeatable: ``PYGEN_CHAOS_SEED`` (default below) seeds the killer's victims
and delays and each driver thread's choice of work; the seed is printed (pytest shows
it with a failure) and is in every assertion message.  The 60 s run on demand:

    PYGEN_CHAOS_SECONDS=60 .venv/bin/python -m pytest -m chaos -s tests/test_chaos.py
"""
from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import signal
import threading
import time
import traceback

import numpy as np
import pytest

import pygen
from pygen.exceptions import ActorDiedError, WorkerCrashedError

from conftest import assert_clean_after_shutdown, child_pids, store_empty, wait_until

SEED = int(os.environ.get("PYGEN_CHAOS_SEED", "20261205"))
SECONDS = float(os.environ.get("PYGEN_CHAOS_SECONDS", "12"))
THREADS = 3           # driver threads submitting work
KILL_DELAY = (0.05, 0.35)  # seconds between two kills (uniform)
T = 90                # liveness bound on any single wait (generous: kills slow things down)
BIG = 40_000          # int64s: 320 KB items, written into the arena
MiB = 2**20

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(int(SECONDS) + 300)]


# == the work ===================================================================================

def _item(i: int, big: bool):
    return np.full(BIG, i, dtype=np.int64) if big else i


def _value(x) -> int:
    if isinstance(x, np.ndarray):
        assert x.shape == (BIG,) and int(x[0]) == int(x[-1]), "a torn item"
        return int(x[0])
    return x


@pygen.remote(max_retries=-1)
def stream(n, big=False, pause=0.002):
    for i in range(n):
        time.sleep(pause)
        yield _item(i, big)


@pygen.remote(max_retries=0)
def stream_once(n, pause=0.002):
    for i in range(n):
        time.sleep(pause)
        yield i


@pygen.remote(max_retries=-1)
def static(k, pause=0.01):
    for i in range(k):
        time.sleep(pause)
        yield _item(i, i % 2 == 1)


@pygen.remote(max_retries=-1, num_returns="dynamic")
def dynamic(n, pause=0.005):
    for i in range(n):
        time.sleep(pause)
        yield _item(i, i % 3 == 0)


@pygen.remote(max_retries=-1)
def square(i):
    time.sleep(0.005)
    return i * i


@pygen.remote(max_retries=-1)
def nested(k):
    """Submits k tasks and a generator of its own, and reads them all."""
    squares = pygen.get([square.remote(i) for i in range(k)])
    items = [_value(pygen.get(ref)) for ref in stream.remote(k)]
    return squares, items


@pygen.remote(max_retries=-1, generator_backpressure=2)
def paced(n):
    for i in range(n):
        time.sleep(0.001)
        yield i


@pygen.remote(max_retries=-1)
def consume(gen):
    """Takes items from a generator it did not start: retried only if killed before it
    took one (its error then says why it was not retried)."""
    return [pygen.get(ref) for ref in gen]


@pygen.remote(max_retries=0)
def plain_once(i):
    time.sleep(0.02)
    return i


class _Streams:
    def stream(self, n, big=False):
        for i in range(n):
            time.sleep(0.002)
            yield _item(i, big)

    def static(self, k):
        for i in range(k):
            time.sleep(0.005)
            yield i

    def pid(self):
        return os.getpid()


@pygen.remote(max_restarts=-1, max_task_retries=-1)
class SyncActor(_Streams):
    pass


@pygen.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=4)
class ThreadedActor(_Streams):
    pass


@pygen.remote(max_restarts=-1, max_task_retries=-1)
class AsyncActor:
    async def stream(self, n, big=False):
        for i in range(n):
            await asyncio.sleep(0.002)
            yield _item(i, big)

    async def static(self, k):
        for i in range(k):
            await asyncio.sleep(0.005)
            yield i

    async def pid(self):
        return os.getpid()


@pygen.remote(max_restarts=-1, max_task_retries=0)
class FragileActor(_Streams):
    """Restarted when killed, but its calls in flight are not retried."""


# == checks =====================================================================================

def values_of(gen) -> "tuple[list, BaseException | None]":
    """(values, error): the items of a streaming generator up to the first error item;
    after an error item the stream must end."""
    values, error = [], None
    while True:
        try:
            ref = gen.next_ready(T)
        except StopIteration:
            return values, error
        if error is not None:
            raise AssertionError(f"an item after the error item {error!r}")
        try:
            values.append(_value(pygen.get(ref, timeout=T)))
        except (WorkerCrashedError, ActorDiedError) as exc:
            error = exc
        del ref


def expect_all(values, n, what):
    assert values == list(range(n)), f"{what}: every item once, in order; got {values}"


def expect_prefix(values, error, n, what, named=(WorkerCrashedError, ActorDiedError)):
    """Not retried: everything, or an in-order prefix and then a named error."""
    if error is None:
        assert values == list(range(n)), f"{what}: {values}"
    else:
        assert isinstance(error, named), f"{what}: {error!r}"
        assert values == list(range(len(values))) and len(values) <= n, f"{what}: {values}"


class Chaos:
    def __init__(self, seed: int, seconds: float) -> None:
        self.seed = seed
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.failures: list = []
        self.done: collections.Counter = collections.Counter()
        self.outcomes: collections.Counter = collections.Counter()
        self.kills: collections.Counter = collections.Counter()
        self.actors = {"sync": SyncActor.remote(), "threaded": ThreadedActor.remote(),
                       "async": AsyncActor.remote()}
        self.fragile = FragileActor.remote()

    # -- the killer --------------------------------------------------------------------------
    def killer(self) -> None:
        rng = random.Random(self.seed)
        while time.monotonic() < self.deadline and not self.stop.is_set():
            time.sleep(rng.uniform(*KILL_DELAY))
            pids = sorted(child_pids())
            if not pids:
                continue
            victim = rng.choice(pids)
            kind = self.kind_of(victim)
            try:
                os.kill(victim, signal.SIGKILL)
                self.kills[kind] += 1
            except ProcessLookupError:
                pass

    @staticmethod
    def kind_of(pid: int) -> str:
        node = pygen.state._node()
        with node.lock:
            for w in node.pool.workers.values():
                if w.pid == pid:
                    if w.actor is not None:
                        return "actor"
                    return "starting" if w.state == "starting" else "task worker"
        return "unknown"

    # -- the work ----------------------------------------------------------------------------
    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        jobs = [self.job_stream, self.job_stream_big, self.job_static, self.job_dynamic,
                self.job_nested, self.job_backpressured_consumer, self.job_actor_stream,
                self.job_actor_static, self.job_not_retried, self.job_fragile_actor]
        while time.monotonic() < self.deadline and not self.stop.is_set():
            job = rng.choice(jobs)
            name = job.__name__
            try:
                job(rng)
                self.done[name] += 1
            except BaseException:  # noqa: BLE001 - collected, reported with the seed
                self.failures.append(f"{name}: {traceback.format_exc()}")
                self.stop.set()

    def job_stream(self, rng) -> None:
        n = rng.randrange(50, 300)
        values, error = values_of(stream.remote(n))
        assert error is None, error
        expect_all(values, n, "streaming generator")

    def job_stream_big(self, rng) -> None:
        n = rng.randrange(10, 40)
        gen = stream.remote(n, True, 0.0)
        values, error = values_of(gen)
        assert error is None, error
        expect_all(values, n, "streaming generator of arena items")
        assert pygen.get(gen.completed(), timeout=T) is None

    def job_static(self, rng) -> None:
        k = rng.randrange(2, 12)
        refs = static.options(num_returns=k).remote(k)
        expect_all([_value(v) for v in pygen.get(refs, timeout=T)], k, "num_returns=k")

    def job_dynamic(self, rng) -> None:
        n = rng.randrange(1, 30)
        items = pygen.get(dynamic.remote(n), timeout=T)
        assert len(items) == n
        expect_all([_value(pygen.get(r, timeout=T)) for r in items], n, "dynamic")

    def job_nested(self, rng) -> None:
        k = rng.randrange(2, 10)
        squares, items = pygen.get(nested.remote(k), timeout=T)
        assert squares == [i * i for i in range(k)], squares
        expect_all(items, k, "a generator started and read in a task")

    def job_backpressured_consumer(self, rng) -> None:
        """Two producers (they may take both CPUs and pause), then their consumers."""
        n = rng.randrange(20, 120)
        producers = [paced.remote(n) for _ in range(2)]
        consumers = [consume.remote(gen) for gen in producers]
        del producers
        for ref in consumers:
            try:
                values = pygen.get(ref, timeout=T)
            except WorkerCrashedError as exc:
                assert "not retried" in str(exc), exc  # it had taken items: says why
                self.outcomes["consumer not retried"] += 1
                continue
            expect_all(values, n, "a backpressured generator consumed by a task")

    def job_actor_stream(self, rng) -> None:
        kind = rng.choice(sorted(self.actors))
        n = rng.randrange(20, 150)
        values, error = values_of(self.actors[kind].stream.remote(n, rng.random() < 0.3))
        assert error is None, (kind, error)
        expect_all(values, n, f"{kind} actor's generator method")

    def job_actor_static(self, rng) -> None:
        kind = rng.choice(sorted(self.actors))
        k = rng.randrange(2, 8)
        refs = self.actors[kind].static.options(num_returns=k).remote(k)
        expect_all(pygen.get(refs, timeout=T), k, f"{kind} actor's num_returns=k method")

    def job_not_retried(self, rng) -> None:
        n = rng.randrange(20, 200)
        values, error = values_of(stream_once.remote(n))
        expect_prefix(values, error, n, "streaming generator, max_retries=0",
                      (WorkerCrashedError,))
        refs = [plain_once.remote(i) for i in range(4)]
        for i, ref in enumerate(refs):
            try:
                assert pygen.get(ref, timeout=T) == i
            except WorkerCrashedError as exc:
                assert "plain_once" in str(exc), exc   # names the task
                self.outcomes["task not retried"] += 1
        self.outcomes["stream not retried" if error else "stream complete"] += 1

    def job_fragile_actor(self, rng) -> None:
        n = rng.randrange(20, 100)
        values, error = values_of(self.fragile.stream.remote(n))
        expect_prefix(values, error, n, "actor without max_task_retries", (ActorDiedError,))
        if error is not None:
            assert "may or may not have run" in str(error), error
            self.outcomes["actor call not retried"] += 1

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> None:
        threads = [threading.Thread(target=self.worker, args=(i,), name=f"chaos-{i}")
                   for i in range(THREADS)]
        killer = threading.Thread(target=self.killer, name="chaos-killer")
        for t in threads + [killer]:
            t.start()
        killer.join()
        for t in threads:
            t.join(SECONDS + 4 * T)
        hung = [t.name for t in threads if t.is_alive()]
        if hung:
            self.stop.set()
            self.failures.append(f"threads still waiting (a hang): {hung}")


def test_random_sigkills_of_workers_and_actors_lose_nothing_and_leave_nothing(fresh):
    print(f"\nchaos: PYGEN_CHAOS_SEED={SEED} PYGEN_CHAOS_SECONDS={SECONDS:g}")
    fresh(num_cpus=2, object_store_memory=256 * MiB)
    node = pygen.state._node()
    chaos = Chaos(SEED, SECONDS)
    for a in chaos.actors.values():   # every actor up before the kills start
        pygen.get(a.pid.remote(), timeout=T)
    pygen.get(chaos.fragile.pid.remote(), timeout=T)
    chaos.run()
    where = f"(seed {SEED}, {SECONDS:g} s)"
    print(f"chaos {where}: kills {dict(chaos.kills)}; jobs {dict(chaos.done)}; "
          f"named errors {dict(chaos.outcomes)}")
    assert not chaos.failures, f"{where}\n" + "\n".join(chaos.failures)
    assert sum(chaos.kills.values()) > 0, where
    for a in chaos.actors.values():   # restarted as often as they were killed, alive
        assert pygen.get(a.pid.remote(), timeout=T) > 0, where
    del chaos, a
    gc.collect()
    assert store_empty(T), (where, pygen.state.list_objects())
    assert pygen.state.list_objects() == [], where
    assert wait_until(lambda: pygen.state.store_stats()["used"] == 0, T), (
        where, pygen.state.store_stats())
    node.store.check()
    assert wait_until(lambda: node.free_cpus == node.num_cpus, T), (where, node.free_cpus)
    assert wait_until(lambda: not [t for t in pygen.state.list_tasks()
                                   if t["state"] in ("waiting", "queued", "running")
                                   and not t["name"].endswith("__init__")], T), where
    pygen.shutdown()
    assert_clean_after_shutdown()
