"""Generator methods of actors stream exactly like generator tasks (SPEC §5 on §4).

Every test runs in each of four ways a generator method can run:

    sync        a sync actor; the generator runs on the actor's main thread
    threaded    max_concurrency > 1; the generator runs on a thread of the pool
    async_def   an async actor's plain ``def`` generator method: on the actor's loop
    async_gen   an async actor's ``async def`` generator method: on the actor's loop

(async generator methods exist only in async actors).  The generators of one kind share
their code with the other kinds (same names, same behaviour) and report what they did
with files under ``tmp_path`` and, where the actor can answer while a generator runs
(threaded and async actors), through another method (``how_far``).  Every wait has a
generous liveness bound; no sleep is used as synchronisation.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import pygen
from pygen import DynamicObjectRefGenerator, ObjectRefGenerator
from pygen.exceptions import (ActorDiedError, GetTimeoutError, InconsistentRetryError,
                              PygenError, TaskCancelledError, TaskError)

from conftest import (STORE, assert_clean_after_shutdown, attempt, store_empty, touch,
                      wait_file, wait_until)

pytestmark = [pytest.mark.usefixtures("session"), pytest.mark.timeout(120)]

T = 30          # the bound on anything that should take milliseconds
MiB = 2**20

KINDS = ["sync", "threaded", "async_def", "async_gen"]
CONCURRENT = ["threaded", "async_def", "async_gen"]   # answer calls while a generator runs


class Boom(Exception):
    pass


def _value(i: int, nbytes: int):
    """Item ``i``: the int itself, or an array of ``nbytes`` bytes (in the arena) filled with it."""
    return i if not nbytes else np.full(nbytes, i % 256, dtype=np.uint8)


def _log(path: str, i: int) -> None:
    with open(path, "a") as f:
        f.write(f"{i}\n")


def logged(path: str) -> list:
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


async def _until(path: str) -> None:
    """``wait_file`` for async generators: poll without blocking the actor's loop."""
    deadline = time.monotonic() + T
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


# -- the actors ---------------------------------------------------------------------------------

class _Probe:
    """What every test actor answers besides its generators."""

    def __init__(self) -> None:
        self.produced = 0   # items the last generator started yielded so far

    def pid(self):
        return os.getpid()

    def how_far(self):
        return self.produced

    def ping(self):
        return "pong"

    def thread(self):
        return threading.get_ident()


class _SyncGenerators(_Probe):
    def count(self, n, ret=None):
        for i in range(n):
            self.produced = i + 1
            yield i
        return ret

    def fail_after(self, n):
        for i in range(n):
            yield i
        raise Boom(f"boom after {n}")

    def gated(self, n, at, gate, d, nbytes=0):
        """Yields 0..n-1; before yield ``at`` (n: after the last) says so and waits for ``gate``."""
        for i in range(n + 1):
            if i == at:
                touch(os.path.join(d, "waiting"))
                wait_file(gate, T)
            if i < n:
                self.produced = i + 1
                yield _value(i, nbytes)
        touch(os.path.join(d, "done"))
        return "end"

    def logging(self, log, d, n, nbytes=0):
        self.produced = 0   # (the actor may have run generators before)
        try:
            for i in range(n):
                _log(log, i)
                self.produced = i + 1
                yield _value(i, nbytes)
        finally:
            touch(os.path.join(d, "finally"))

    def closable(self, d, nbytes=0):
        i = 0
        try:
            while True:
                time.sleep(0.002)   # paces the stream; never a synchronisation
                self.produced = i + 1
                yield _value(i, nbytes)
                touch(os.path.join(d, f"resumed-{i}"))
                i += 1
        except GeneratorExit:
            touch(os.path.join(d, "generator-exit"))
            raise
        finally:
            touch(os.path.join(d, "finally"))

    def mutating(self):
        items = [1, 2]
        yield items
        items.append(3)
        yield items
        items.clear()
        arr = np.zeros(MiB, dtype=np.uint8)   # large: lives in the arena
        yield arr
        arr[:] = 7
        yield {"arr_sum": int(arr.sum())}

    def yields_errors(self):
        yield ValueError("just a value")
        yield Boom("also a value")
        yield "after"

    def threads(self, n):
        for _ in range(n):
            yield threading.get_ident(), threading.main_thread().ident

    def meet(self, d, mine, other):
        touch(os.path.join(d, mine))
        wait_file(os.path.join(d, other), T)   # returns only if the other runs at once
        yield mine

    def flaky(self, d, n, crash_at, release):
        a = attempt(d)
        for i in range(n):
            if a == 1 and i == crash_at:
                wait_file(release, T)
                os._exit(1)
            yield (a, i)
        return a

    def flaky_logging(self, d, n, crash_at, release):
        a = attempt(d)
        for i in range(n):
            if a == 1 and i == crash_at:
                wait_file(release, T)
                os._exit(1)
            _log(os.path.join(d, f"log-{a}"), i)
            self.produced = i + 1
            yield i

    def shrinking(self, d, first, then, release):
        a = attempt(d)
        for i in range(first if a == 1 else then):
            yield i
        if a == 1:
            wait_file(release, T)
            os._exit(1)
        return "retried"

    def always_crashes(self, d):
        attempt(d)
        yield "x"
        os._exit(1)

    def endless(self, d, gate):
        attempt(d)
        yield 0
        wait_file(gate, T)
        i = 1
        while True:
            time.sleep(0.002)
            yield i
            i += 1


class _AsyncGenerators(_Probe):
    async def count(self, n, ret=None):
        for i in range(n):
            self.produced = i + 1
            yield i
        if ret is not None:
            self.ret = ret   # an async generator cannot return a value
            return

    async def fail_after(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i
        raise Boom(f"boom after {n}")

    async def gated(self, n, at, gate, d, nbytes=0):
        for i in range(n + 1):
            if i == at:
                touch(os.path.join(d, "waiting"))
                await _until(gate)
            if i < n:
                self.produced = i + 1
                yield _value(i, nbytes)
        touch(os.path.join(d, "done"))

    async def logging(self, log, d, n, nbytes=0):
        self.produced = 0   # (the actor may have run generators before)
        try:
            for i in range(n):
                _log(log, i)
                self.produced = i + 1
                yield _value(i, nbytes)
        finally:
            touch(os.path.join(d, "finally"))

    async def closable(self, d, nbytes=0):
        i = 0
        try:
            while True:
                await asyncio.sleep(0.002)
                self.produced = i + 1
                yield _value(i, nbytes)
                touch(os.path.join(d, f"resumed-{i}"))
                i += 1
        except GeneratorExit:
            touch(os.path.join(d, "generator-exit"))
            raise
        finally:
            touch(os.path.join(d, "finally"))

    async def mutating(self):
        items = [1, 2]
        yield items
        items.append(3)
        yield items
        items.clear()
        arr = np.zeros(MiB, dtype=np.uint8)
        yield arr
        arr[:] = 7
        yield {"arr_sum": int(arr.sum())}

    async def yields_errors(self):
        yield ValueError("just a value")
        yield Boom("also a value")
        yield "after"

    async def meet(self, d, mine, other):
        touch(os.path.join(d, mine))
        await _until(os.path.join(d, other))
        yield mine

    async def flaky(self, d, n, crash_at, release):
        a = attempt(d)
        for i in range(n):
            if a == 1 and i == crash_at:
                await _until(release)
                os._exit(1)
            yield (a, i)

    async def flaky_logging(self, d, n, crash_at, release):
        a = attempt(d)
        for i in range(n):
            if a == 1 and i == crash_at:
                await _until(release)
                os._exit(1)
            _log(os.path.join(d, f"log-{a}"), i)
            self.produced = i + 1
            yield i

    async def shrinking(self, d, first, then, release):
        a = attempt(d)
        for i in range(first if a == 1 else then):
            await asyncio.sleep(0)
            yield i
        if a == 1:
            await _until(release)
            os._exit(1)

    async def always_crashes(self, d):
        attempt(d)
        yield "x"
        os._exit(1)

    async def endless(self, d, gate):
        attempt(d)
        yield 0
        await _until(gate)
        i = 1
        while True:
            await asyncio.sleep(0.002)
            yield i
            i += 1


@pygen.remote
class SyncActor(_SyncGenerators):
    pass


@pygen.remote
class AsyncActorDefGenerators(_SyncGenerators):
    async def loop_thread(self):
        return threading.get_ident()


@pygen.remote
class AsyncActor(_AsyncGenerators):
    async def loop_thread(self):
        return threading.get_ident()


def make(kind: str, **options):
    """A new actor of ``kind`` (see the module docstring)."""
    if kind == "sync":
        cls = SyncActor
    elif kind == "threaded":
        cls = SyncActor
        options.setdefault("max_concurrency", 4)
    elif kind == "async_def":
        cls = AsyncActorDefGenerators
    else:
        cls = AsyncActor
    return cls.options(**options).remote() if options else cls.remote()


@pytest.fixture(scope="module")
def _shared_actors(session):
    actors: dict = {}
    yield actors
    actors.clear()


@pytest.fixture
def actor(kind, _shared_actors):
    """The actor of ``kind`` shared by the tests that leave it as they found it (a new
    actor process costs more than most of these tests); replaced if it stops answering
    or belongs to an earlier session."""
    node = pygen.state._node()
    found = _shared_actors.get(kind)
    if found is not None and found[0] is node:
        try:
            if pygen.get(found[1].ping.remote(), timeout=10) == "pong":
                return found[1]
        except PygenError:
            pass
    a = make(kind)
    _shared_actors[kind] = (node, a)
    return a


@pytest.fixture
def fresh():
    """A session of the test's own; this module's session again afterwards."""
    pygen.shutdown()

    def start(**kwargs):
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("object_store_memory", STORE)
        pygen.init(**kwargs)

    yield start
    pygen.shutdown()
    assert_clean_after_shutdown()
    pygen.init(num_cpus=2, object_store_memory=STORE)


def returns_values(kind: str) -> bool:
    """Async generators cannot ``return`` a value (Python forbids it)."""
    return kind != "async_gen"


# -- helpers of the consumer's side -------------------------------------------------------------

def drain(gen, timeout: float = T) -> list:
    refs = []
    while True:
        try:
            refs.append(gen.next_ready(timeout))
        except StopIteration:
            return refs


def values_until_error(gen, timeout: float = T):
    """(values, error or None, refs after the error) of the rest of ``gen``."""
    values, error, after = [], None, []
    for ref in drain(gen, timeout):
        if error is not None:
            after.append(ref)
            continue
        try:
            values.append(pygen.get(ref, timeout=timeout))
        except Exception as exc:  # noqa: BLE001 - the error item
            error = exc
    return values, error, after


def assert_stopped(gen) -> None:
    for _ in range(3):
        with pytest.raises(StopIteration):
            gen.next_ready(5)
        with pytest.raises(StopIteration):
            next(gen)


def is_ready(ref) -> bool:
    ready, _ = pygen.wait([ref], timeout=0)
    return bool(ready)


def objects() -> int:
    return pygen.state.store_stats()["objects"]


@pygen.remote
def consume_all(gen):
    return [pygen.get(ref) for ref in gen]


@pygen.remote
def plus_one(x):
    return x + 1


@pygen.remote
class Collector:
    def consume(self, gen):
        return [pygen.get(ref) for ref in gen]


@pygen.remote
class AsyncCollector:
    async def consume(self, gen):
        return [await ref async for ref in gen]


kinds = pytest.mark.parametrize("kind", KINDS)


# == the execution models =======================================================================

def test_a_def_generator_method_of_an_async_actor_runs_on_its_loop():
    a = make("async_def")
    loop = pygen.get(a.loop_thread.remote(), timeout=T)
    seen = pygen.get(drain(a.threads.remote(3)), timeout=T)
    assert [t for t, _ in seen] == [loop] * 3
    assert seen[0][1] != loop   # the loop's thread is not the actor's main thread
    assert pygen.get(a.thread.remote(), timeout=T) == loop   # nor is it for plain methods


@pytest.mark.parametrize("kind", ["threaded", "async_gen"])
def test_two_generators_of_a_concurrent_actor_stream_at_once(kind, actor, tmp_path):
    d = str(tmp_path)
    a = actor
    one, two = a.meet.remote(d, "one", "two"), a.meet.remote(d, "two", "one")
    assert pygen.get(list(one) + list(two), timeout=T) == ["one", "two"]


# == §4.1 num_returns=k =========================================================================

@kinds
def test_static_refs_before_k_are_ready_as_yielded_and_ref_k_at_the_end(kind, actor,
                                                                        tmp_path):
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    a = actor
    r0, r1, r2 = a.gated.options(num_returns=3).remote(3, 3, gate, d)
    assert wait_file(os.path.join(d, "waiting"), T)   # yielded all 3, waits before the end
    assert pygen.get([r0, r1], timeout=T) == [0, 1]
    # a task that depends on return 1 runs before the generator finishes
    assert pygen.get(plus_one.remote(r1), timeout=T) == 2
    # ref k: only once the generator has finished (a (k+1)-th value could still come)
    assert not is_ready(r2)
    touch(gate)
    assert pygen.get(r2, timeout=T) == 2


@kinds
def test_static_fewer_values_than_num_returns(kind, actor):
    a = actor
    refs = a.count.options(num_returns=3).remote(2)
    assert pygen.get(refs[:2], timeout=T) == [0, 1]
    with pytest.raises(ValueError, match=r"num_returns=3 .*yielded only 2"):
        pygen.get(refs[2], timeout=T)


@kinds
def test_static_more_values_than_num_returns_puts_the_error_in_ref_k(kind, actor):
    a = actor
    r0, r1 = a.count.options(num_returns=2).remote(3)
    assert pygen.get(r0, timeout=T) == 0
    with pytest.raises(ValueError, match=r"num_returns=2 .*more than 2"):
        pygen.get(r1, timeout=T)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"


@kinds
@pytest.mark.parametrize("n", [0, 1, 2])
def test_static_exception_after_n_yields_fills_the_remaining_refs(kind, actor, n):
    a = actor
    refs = a.fail_after.options(num_returns=3).remote(n)
    assert pygen.get(refs[:n], timeout=T) == list(range(n))
    for ref in refs[n:]:
        with pytest.raises(Boom, match=f"boom after {n}") as info:
            pygen.get(ref, timeout=T)
        assert isinstance(info.value, TaskError)


@kinds
def test_static_exception_after_exactly_k_yields_is_held_by_ref_k(kind, actor):
    """SPEC §4.1, as for tasks (tests/test_generators_static.py): refs 1..k-1 keep their
    values, ref k holds the error."""
    a = actor
    refs = a.fail_after.options(num_returns=3).remote(3)
    assert pygen.get(refs[:2], timeout=T) == [0, 1]
    with pytest.raises(Boom, match="boom after 3"):
        pygen.get(refs[2], timeout=T)


# == §4.2 num_returns="dynamic" =================================================================

@kinds
def test_dynamic_value_is_a_generator_of_refs_iterable_many_times(kind, actor):
    a = actor
    ref = a.count.options(num_returns="dynamic").remote(4)
    dyn = pygen.get(ref, timeout=T)
    assert isinstance(dyn, DynamicObjectRefGenerator) and len(dyn) == 4
    assert pygen.get(list(dyn), timeout=T) == [0, 1, 2, 3]
    assert pygen.get(list(dyn), timeout=T) == [0, 1, 2, 3]
    copy = pickle.loads(pickle.dumps(dyn))
    assert pygen.get(list(copy), timeout=T) == [0, 1, 2, 3]
    # the ref resolves to the generator in a task; the generator itself can be passed too

    @pygen.remote
    def total(g):
        return sum(pygen.get(list(g)))

    assert pygen.get([total.remote(ref), total.remote(dyn)], timeout=T) == [6, 6]


@kinds
def test_dynamic_ref_is_ready_only_when_the_generator_finishes(kind, actor, tmp_path):
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    a = actor
    ref = a.gated.options(num_returns="dynamic").remote(3, 3, gate, d)
    assert wait_file(os.path.join(d, "waiting"), T)
    assert not is_ready(ref)
    touch(gate)
    assert pygen.get(list(pygen.get(ref, timeout=T)), timeout=T) == [0, 1, 2]


@kinds
@pytest.mark.parametrize("n", [0, 2])
def test_dynamic_exception_keeps_the_items_and_adds_one_error_ref(kind, actor, n):
    a = actor
    refs = list(pygen.get(a.fail_after.options(num_returns="dynamic").remote(n), timeout=T))
    assert len(refs) == n + 1
    assert pygen.get(refs[:n], timeout=T) == list(range(n))
    with pytest.raises(Boom):
        pygen.get(refs[n], timeout=T)


# == §4.3 streaming: iteration ==================================================================

@kinds
def test_default_for_generator_methods_is_streaming_next_and_for(kind, actor):
    a = actor
    gen = a.count.remote(3)
    assert isinstance(gen, ObjectRefGenerator)
    assert pygen.get(next(gen), timeout=T) == 0
    assert [pygen.get(ref, timeout=T) for ref in gen] == [1, 2]
    assert_stopped(gen)


@kinds
def test_async_for_and_anext_then_stop_async_iteration(kind, actor):
    a = actor

    async def main():
        gen = a.count.remote(3)
        values = [await ref async for ref in gen]
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return values

    assert asyncio.run(asyncio.wait_for(main(), T)) == [0, 1, 2]


@kinds
def test_the_generator_runs_eagerly_without_a_consumer(kind, actor, tmp_path):
    d = str(tmp_path)
    a = actor
    gen = a.gated.remote(4, None, "", d)
    assert wait_file(os.path.join(d, "done"), T)   # nobody called next
    assert pygen.get(drain(gen), timeout=T) == [0, 1, 2, 3]


@kinds
def test_the_first_item_is_readable_long_before_the_generator_ends(kind, actor, tmp_path):
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    a = actor
    gen = a.gated.remote(3, 1, gate, d)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    assert wait_file(os.path.join(d, "waiting"), T)
    assert not os.path.exists(os.path.join(d, "done"))
    with pytest.raises(GetTimeoutError):
        gen.next_ready(0)   # item 1 is not yielded yet: next would block
    touch(gate)
    assert pygen.get(drain(gen), timeout=T) == [1, 2]


@kinds
@pytest.mark.parametrize("n", [0, 1, 3])
def test_an_exception_after_n_yields_is_item_n_plus_1_then_stop_iteration(kind, actor, n):
    a = actor
    gen = a.fail_after.remote(n)
    values, error, after = values_until_error(gen)
    assert values == list(range(n)) and after == []
    assert isinstance(error, Boom) and isinstance(error, TaskError), error
    assert f"boom after {n}" in str(error)
    assert_stopped(gen)
    with pytest.raises(Boom):
        pygen.get(gen.completed(), timeout=T)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"   # the actor lives on


@kinds
def test_completed_holds_the_return_value(kind, actor):
    a = actor
    gen = a.count.remote(3, "the end")
    assert pygen.get(drain(gen), timeout=T) == [0, 1, 2]
    expected = "the end" if returns_values(kind) else None
    assert pygen.get(gen.completed(), timeout=T) == expected
    assert pygen.get(a.count.remote(0).completed(), timeout=T) is None


@kinds
def test_completed_is_ready_when_the_generator_ends_even_if_nobody_takes_items(kind, actor,
                                                                              tmp_path):
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    a = actor
    gen = a.gated.remote(2, 2, gate, d)
    assert wait_file(os.path.join(d, "waiting"), T)
    assert not is_ready(gen.completed())
    touch(gate)
    expected = "end" if returns_values(kind) else None
    assert pygen.get(gen.completed(), timeout=T) == expected
    assert pygen.get(drain(gen), timeout=T) == [0, 1]


@pytest.mark.parametrize("kind", ["sync", "threaded", "async_def"])
def test_an_actor_process_that_exits_mid_stream_is_one_error_ref_then_stop(kind, tmp_path):
    d = str(tmp_path)
    release = str(tmp_path / "release")
    a = make(kind)
    gen = a.flaky.remote(d, 5, 2, release)
    assert pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T) == [(1, 0), (1, 1)]
    touch(release)
    values, error, after = values_until_error(gen)
    assert values == [] and after == []
    assert isinstance(error, ActorDiedError) and "exited with code 1" in str(error), error
    assert_stopped(gen)


# == §4.3 streaming: values =====================================================================

@kinds
def test_a_value_is_captured_when_it_is_yielded(kind, actor):
    a = actor
    values = pygen.get(drain(a.mutating.remote()), timeout=T)
    assert values[0] == [1, 2] and values[1] == [1, 2, 3]
    assert values[2].nbytes == MiB and int(values[2].sum()) == 0
    assert values[3] == {"arr_sum": 7 * MiB}


@kinds
def test_yielding_an_exception_object_yields_a_value(kind, actor):
    a = actor
    gen = a.yields_errors.remote()
    values = pygen.get(drain(gen), timeout=T)
    assert isinstance(values[0], ValueError) and str(values[0]) == "just a value"
    assert isinstance(values[1], Boom) and values[2] == "after"
    assert pygen.get(gen.completed(), timeout=T) is None


# == §4.3 streaming: garbage collection and close() =============================================

@kinds
def test_deleting_the_generator_frees_untaken_items_also_later_ones(kind, actor, tmp_path):
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    a = actor
    assert store_empty()
    gen = a.gated.remote(6, 3, gate, d, MiB)
    taken, completion = gen.next_ready(T), gen.completed()
    assert wait_file(os.path.join(d, "waiting"), T)
    assert wait_until(lambda: objects() == 3, T), pygen.state.store_stats()
    del gen
    # the two items nobody took are freed; the taken one is an ordinary ref
    assert wait_until(lambda: objects() == 1, T), pygen.state.store_stats()
    touch(gate)   # items 3..5 come after the deletion: each is freed as it arrives
    assert wait_file(os.path.join(d, "done"), T)
    pygen.get(completion, timeout=T)   # the call has ended
    assert objects() == 1, pygen.state.list_objects()
    value = pygen.get(taken, timeout=T)
    assert value.nbytes == MiB and int(value[0]) == 0
    del value, taken, completion
    assert store_empty()


@kinds
def test_close_runs_the_generators_finally_stops_it_and_frees_what_is_left(kind, actor, tmp_path):
    d = str(tmp_path)
    a = actor
    assert store_empty()
    gen = a.closable.remote(d, MiB)
    first = gen.next_ready(T)
    assert wait_until(lambda: objects() >= 3, T)   # two more produced, not taken
    gen.close()
    assert wait_file(os.path.join(d, "finally"), T)
    assert os.path.exists(os.path.join(d, "generator-exit"))   # raised at its yield
    assert_stopped(gen)
    pygen.get(gen.completed(), timeout=T)   # the call ended
    assert wait_until(lambda: objects() == 1, T), pygen.state.list_objects()
    assert int(pygen.get(first, timeout=T)[0]) == 0
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"   # the actor serves calls again
    del first, gen
    assert store_empty()


@kinds
def test_close_of_a_finished_generator_and_twice(kind, actor):
    a = actor
    gen = a.count.remote(3)
    pygen.get(gen.completed(), timeout=T)
    first = gen.next_ready(T)
    gen.close()
    gen.close()
    assert_stopped(gen)
    assert pygen.get(first, timeout=T) == 0


# == §4.3 streaming: backpressure ===============================================================

def _progress(kind, a, log) -> int:
    """How far the producer got: its log; an actor that answers calls while its
    generator is paused says so itself as well (a sync actor cannot: its one thread is
    the producer's).  The log is written just before the count: the lower one counts."""
    n = len(logged(log))
    if kind in CONCURRENT:
        return min(n, pygen.get(a.how_far.remote(), timeout=T))
    return n


@kinds
@pytest.mark.parametrize("window", [1, 2])
def test_backpressure_pauses_the_producer_at_its_yield(kind, actor, window, tmp_path):
    n = 6
    log, d = str(tmp_path / "log"), str(tmp_path)
    a = actor
    gen = a.logging.options(generator_backpressure=window).remote(log, d, n)
    for taken in range(n):
        expected = min(taken + window, n)
        assert wait_until(lambda: _progress(kind, a, log) >= expected, T)
        # paused: exactly `window` items produced and not taken (the actor still answers)
        assert logged(log) == list(range(expected)), (taken, logged(log))
        if kind in CONCURRENT:
            assert pygen.get(a.how_far.remote(), timeout=T) == expected
        assert pygen.get(gen.next_ready(T), timeout=T) == taken
    assert_stopped(gen)
    assert wait_file(os.path.join(d, "finally"), T)


@kinds
@pytest.mark.parametrize("how", ["delete", "close", "cancel"])
def test_a_paused_generator_that_is_deleted_closed_or_cancelled_is_not_resumed(kind, actor,
                                                                              how, tmp_path):
    log, d = str(tmp_path / "log"), str(tmp_path)
    a = actor
    assert store_empty()
    gen = a.logging.options(generator_backpressure=2).remote(log, d, 100, MiB)
    assert wait_until(lambda: len(logged(log)) >= 2, T)
    completion = gen.completed()
    if how == "delete":
        del gen
    elif how == "close":
        gen.close()
    else:
        pygen.cancel(gen)
    assert wait_file(os.path.join(d, "finally"), T)
    assert logged(log) == [0, 1]   # stopped where it was paused, never resumed
    if how == "cancel":
        values, error, after = values_until_error(gen)
        assert [int(v[0]) for v in values] == [0, 1] and after == []   # produced: kept
        assert isinstance(error, TaskCancelledError), error
        del values, error   # (its traceback holds the arrays)
        with pytest.raises(TaskCancelledError):
            pygen.get(completion, timeout=T)
    else:
        pygen.get(completion, timeout=T)
        if how == "close":
            assert_stopped(gen)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"
    gen = None
    del completion
    assert store_empty()


# == §4.3 streaming: cancel =====================================================================

@kinds
def test_cancel_makes_the_next_item_a_task_cancelled_error(kind, actor, tmp_path):
    d = str(tmp_path)
    a = actor
    gen = a.closable.remote(d)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    pygen.cancel(gen)
    values, error, after = values_until_error(gen)
    assert isinstance(error, TaskCancelledError), error
    assert values == list(range(1, len(values) + 1)) and after == []
    assert_stopped(gen)
    assert wait_file(os.path.join(d, "finally"), T)
    with pytest.raises(TaskCancelledError):
        pygen.get(gen.completed(), timeout=T)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"   # cancelling a call spares the actor


@kinds
@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_or_close_of_a_generator_call_that_has_not_started(kind, how, tmp_path):
    """The call is already with the actor's process, queued behind calls that hold
    every slot: it never runs its generator's body."""
    gate = str(tmp_path / "gate")
    slots = {"sync": 1, "threaded": 2}.get(kind, 1)
    a = make(kind) if kind == "sync" else make(kind, max_concurrency=slots)
    busy = []   # calls that hold every slot of the actor
    for i in range(slots):
        d = tmp_path / f"busy-{i}"
        d.mkdir()
        busy.append(a.gated.remote(1, 0, gate, str(d)))
        assert wait_file(str(d / "waiting"), T)
    gen = a.count.remote(3)
    if how == "cancel":
        pygen.cancel(gen)
    else:
        gen.close()
        assert_stopped(gen)
    touch(gate)
    values, error, after = values_until_error(gen)
    if how == "cancel":
        assert values == [] and isinstance(error, TaskCancelledError) and after == []
        with pytest.raises(TaskCancelledError):
            pygen.get(gen.completed(), timeout=T)
    else:
        assert values == [] and error is None
        assert pygen.get(gen.completed(), timeout=T) is None
    assert [pygen.get(drain(b), timeout=T) for b in busy] == [[0]] * slots
    assert pygen.get(a.how_far.remote(), timeout=T) == 1   # count never ran


def _install_cancel_delay(d: str) -> None:
    """In the actor's process: its main thread, which reads the control channel, holds
    back a Cancel it has read (touching ``cancel-read``) until the cancelled call's body
    has started (``started``) or another thread waits for what the reader dispatches --
    the widest form of the race in which a Cancel already in this process is not yet
    dispatched when a pool thread (or the event loop) starts the call.  It also says
    when it dispatched the Exec of ``count_started`` (``exec-read``)."""
    client = pygen.context.current().client
    dispatch = client.on_control
    main = threading.main_thread().ident

    def on_control(msg):
        kind = type(msg).__name__
        if kind == "Exec" and msg.method == "count_started":
            dispatch(msg)
            touch(os.path.join(d, "exec-read"))
            return
        if kind == "Cancel" and threading.get_ident() == main:
            touch(os.path.join(d, "cancel-read"))
            deadline = time.monotonic() + T
            while (not os.path.exists(os.path.join(d, "started"))
                   and not client._arrived._waiters and time.monotonic() < deadline):
                time.sleep(0.001)
        dispatch(msg)

    client.on_control = on_control


@pygen.remote
class CancelRace:
    def install(self, d):
        _install_cancel_delay(d)

    def block(self, gate, d):
        touch(os.path.join(d, "waiting"))
        wait_file(gate, T)

    def count_started(self, d, n):
        touch(os.path.join(d, "started"))
        yield from range(n)


@pygen.remote
class AsyncCancelRace:
    def install(self, d):
        _install_cancel_delay(d)

    async def block(self, gate, d):
        touch(os.path.join(d, "waiting"))
        await _until(gate)

    def count_started(self, d, n):
        touch(os.path.join(d, "started"))
        yield from range(n)


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_a_cancel_already_in_the_actors_process_stops_a_call_before_it_starts(kind, tmp_path):
    """The call's Exec and then its Cancel reached the actor's process while every slot
    was busy; the Cancel is read but not yet dispatched when a slot frees.  The call
    must catch up on what reached the process before it starts: it never runs.  (The
    race made test_cancel_or_close_of_a_generator_call_that_has_not_started flaky.)"""
    d, gate = str(tmp_path), str(tmp_path / "gate")
    a = (CancelRace.options(max_concurrency=2) if kind == "threaded"
         else AsyncCancelRace.options(max_concurrency=1)).remote()
    pygen.get(a.install.remote(d), timeout=T)
    slots = 2 if kind == "threaded" else 1
    blockers = []
    for i in range(slots):
        os.makedirs(os.path.join(d, f"b{i}"))
        blockers.append(a.block.remote(gate, os.path.join(d, f"b{i}")))
        assert wait_file(os.path.join(d, f"b{i}", "waiting"), T)
    gen = a.count_started.remote(d, 3)
    assert wait_file(os.path.join(d, "exec-read"), T)
    pygen.cancel(gen)
    assert wait_file(os.path.join(d, "cancel-read"), T)
    touch(gate)
    values, error, after = values_until_error(gen)
    assert values == [] and isinstance(error, TaskCancelledError) and after == [], (values, error)
    assert not os.path.exists(os.path.join(d, "started"))
    pygen.get(blockers, timeout=T)


@pytest.mark.parametrize("kind", ["sync", "threaded", "async_gen"])
def test_cancel_interrupts_a_generator_blocked_in_its_step(kind, tmp_path):
    """sync: the signal interrupts the step on the main thread; threaded: the error is
    raised in the pool thread; async: the step's await is cancelled.  (A def generator
    on an async actor's loop blocks the loop: it sees the cancel at its next yield.)"""
    gate, d = str(tmp_path / "never"), str(tmp_path)
    a = make(kind)
    gen = a.gated.remote(3, 1, gate, d)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    assert wait_file(os.path.join(d, "waiting"), T)
    pygen.cancel(gen)
    values, error, after = values_until_error(gen)
    assert values == [] and isinstance(error, TaskCancelledError) and after == [], error
    assert not os.path.exists(os.path.join(d, "done"))
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"   # the actor lives on
    assert pygen.get(a.how_far.remote(), timeout=T) == 1


# == §4.3 streaming: passing a generator on =====================================================

CONSUMERS = ["task", "sync actor", "async actor"]


@kinds
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_a_generator_passed_on_is_iterated_where_it_went(kind, actor, consumer):
    a = actor
    gen = a.count.remote(6)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0   # one cursor: it goes on from here
    if consumer == "task":
        ref = consume_all.remote(gen)
    elif consumer == "sync actor":
        ref = Collector.remote().consume.remote(gen)
    else:
        ref = AsyncCollector.remote().consume.remote(gen)
    assert pygen.get(ref, timeout=T) == [1, 2, 3, 4, 5]
    assert_stopped(gen)


@kinds
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_a_producer_actor_that_dies_is_retried_for_the_consumer_it_was_passed_to(kind,
                                                                                 consumer,
                                                                                 tmp_path):
    d, release = str(tmp_path), str(tmp_path / "release")
    touch(release)   # attempt 1 dies at item 4, whoever has taken what
    a = make(kind, max_restarts=1, max_task_retries=1)
    gen = a.flaky.remote(d, 10, 4, release)
    if consumer == "task":
        ref = consume_all.remote(gen)
    elif consumer == "sync actor":
        ref = Collector.remote().consume.remote(gen)
    else:
        ref = AsyncCollector.remote().consume.remote(gen)
    got = pygen.get(ref, timeout=T)
    assert [i for _, i in got] == list(range(10)), got   # every item once, in order
    assert sorted(os.listdir(d)) == ["attempt-1", "attempt-2", "release"]


@pygen.remote(max_restarts=1, max_task_retries=1)
class FragileCollector:
    def consume(self, gen, d, die_after):
        first = attempt(d) == 1
        if first and die_after == 0:
            os._exit(1)
        out = []
        for ref in gen:
            out.append(pygen.get(ref))
            if first and len(out) == die_after:
                os._exit(1)
        return out


@pytest.mark.parametrize("kind", ["sync", "async_gen"])
def test_a_consumer_actor_that_dies_after_taking_items_is_not_retried(kind, actor, tmp_path):
    """A new attempt would start where the dead one stopped and silently miss the items
    it took: the call fails, its error says why (and that the actor lives on), and the
    rest of the generator is still there for whoever asks."""
    d = str(tmp_path)
    gen = actor.count.remote(8)
    consumer = FragileCollector.remote()
    with pytest.raises(ActorDiedError) as info:
        pygen.get(consumer.consume.remote(gen, d, 3), timeout=T)
    text = str(info.value)
    assert "is being restarted" in text and "may or may not have run" in text, text
    assert "not retried: it had taken items from the streaming generator" in text, text
    assert os.listdir(d) == ["attempt-1"]
    assert pygen.get(drain(gen), timeout=T) == [3, 4, 5, 6, 7]
    assert pygen.get(consumer.consume.remote(actor.count.remote(2), d, -1), timeout=T) == [0, 1]


@pytest.mark.parametrize("kind", ["sync", "async_gen"])
def test_a_consumer_actor_that_dies_before_taking_an_item_is_retried(kind, actor, tmp_path):
    d = str(tmp_path)
    consumer = FragileCollector.remote()
    assert pygen.get(consumer.consume.remote(actor.count.remote(4), d, 0), timeout=T) == \
        [0, 1, 2, 3]
    assert len(os.listdir(d)) == 2


@kinds
def test_next_from_several_threads_hands_each_item_out_once_in_order(kind, actor):
    n, threads = 2000, 4
    a = actor
    gen = a.count.remote(n)
    got = [[] for _ in range(threads)]
    errors = []

    def consume(mine):
        try:
            while True:
                try:
                    mine.append(pygen.get(gen.next_ready(T), timeout=T))
                except StopIteration:
                    return
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=consume, args=(got[i],)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(T)
    assert not any(t.is_alive() for t in workers) and not errors, errors
    assert sorted(v for mine in got for v in mine) == list(range(n))   # each exactly once
    for mine in got:
        assert mine == sorted(mine)                                      # in order


# == §4.3 streaming: retries (max_restarts + max_task_retries) ==================================

def _stream_produced(gen) -> int:
    task = pygen.state._node().tasks.get(gen._task_id)
    return task.stream.produced if task is not None and task.stream is not None else -1


@kinds
def test_a_retry_hands_out_no_item_twice_and_skips_none(kind, tmp_path):
    d, release = str(tmp_path), str(tmp_path / "release")
    a = make(kind, max_restarts=1, max_task_retries=1)
    first_pid = pygen.get(a.pid.remote(), timeout=T)
    gen = a.flaky.remote(d, 10, 5, release)
    assert pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T) == [(1, 0), (1, 1)]
    # items 2..4 of attempt 1 reach the node, and are never handed out
    assert wait_until(lambda: _stream_produced(gen) == 5, T), _stream_produced(gen)
    touch(release)
    assert wait_file(os.path.join(d, "attempt-2"), T)   # the node knows attempt 1 is over
    rest = pygen.get(drain(gen), timeout=T)
    # the new attempt skips what was handed out; 2..4 are its own, not the dead attempt's
    assert rest == [(2, i) for i in range(2, 10)], rest
    if returns_values(kind):
        assert pygen.get(gen.completed(), timeout=T) == 2
    assert sorted(os.listdir(d)) == ["attempt-1", "attempt-2", "release"]
    assert pygen.get(a.pid.remote(), timeout=T) != first_pid   # restarted


@kinds
def test_a_retried_generator_keeps_its_backpressure_window(kind, tmp_path):
    """The new attempt of a generator with generator_backpressure=2 skips the 2 items
    already taken, then runs until 2 of its own are produced and not taken -- not 1:
    the items it skipped count as taken."""
    d, release = str(tmp_path), str(tmp_path / "release")
    log = os.path.join(d, "log-2")
    a = make(kind, max_restarts=1, max_task_retries=1)
    gen = a.flaky_logging.options(generator_backpressure=2).remote(d, 8, 2, release)
    assert pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T) == [0, 1]
    touch(release)   # attempt 1 dies before item 2
    assert wait_until(lambda: len(logged(log)) >= 4, T), logged(log)
    assert logged(log) == [0, 1, 2, 3]   # 0 and 1 skipped, 2 and 3 produced: paused
    if kind in CONCURRENT:
        assert pygen.get(a.how_far.remote(), timeout=T) == 4
    assert pygen.get(drain(gen), timeout=T) == list(range(2, 8))
    assert logged(log) == list(range(8))


@kinds
@pytest.mark.parametrize("then", [2, 3, 4])
def test_a_retry_that_yields_fewer_items_than_were_handed_out_ends_inconsistent(kind, then,
                                                                               tmp_path):
    """Three items are handed out, then the actor dies and the call runs again: a new
    attempt of 2 items (one less) ends the stream with InconsistentRetryError; one of
    exactly 3 ends it cleanly; one of 4 hands out the fourth."""
    d, release = str(tmp_path), str(tmp_path / "release")
    a = make(kind, max_restarts=1, max_task_retries=1)
    gen = a.shrinking.remote(d, 3, then, release)
    assert pygen.get([gen.next_ready(T) for _ in range(3)], timeout=T) == [0, 1, 2]
    touch(release)
    values, error, after = values_until_error(gen)
    assert after == []
    if then < 3:
        assert values == [] and isinstance(error, InconsistentRetryError), (values, error)
        assert "yielded 2 items, fewer than the 3 already handed out" in str(error)
        with pytest.raises(InconsistentRetryError):
            pygen.get(gen.completed(), timeout=T)
    else:
        assert error is None and values == list(range(3, then)), (values, error)
        expected = "retried" if returns_values(kind) else None
        assert pygen.get(gen.completed(), timeout=T) == expected
    assert_stopped(gen)
    assert len([x for x in os.listdir(d) if x.startswith("attempt-")]) == 2


@kinds
def test_retries_exhausted_end_the_stream_with_actor_died_error(kind, tmp_path):
    d = str(tmp_path)
    a = make(kind, max_restarts=3, max_task_retries=1)
    gen = a.always_crashes.remote(d)
    values, error, after = values_until_error(gen)
    assert values == ["x"] and after == []
    assert isinstance(error, ActorDiedError) and "may or may not have run" in str(error), error
    assert len(os.listdir(d)) == 2   # run, retried once
    assert_stopped(gen)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"   # restarts left: it lives



@kinds
def test_a_closed_generator_is_not_run_again_when_its_actor_restarts(kind, tmp_path):
    """Closed while in a step, then the actor dies: nobody can take the items of a new
    attempt, and nothing would stop it (the Close went to the dead process), so the call
    is not retried.  It ends with the death; the restarted actor serves calls."""
    d, gate = str(tmp_path), str(tmp_path / "gate")
    a = make(kind, max_restarts=1, max_task_retries=1)
    pid = pygen.get(a.pid.remote(), timeout=T)
    gen = a.endless.remote(d, gate)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    gen.close()
    os.kill(pid, signal.SIGKILL)
    touch(gate)   # a new attempt would run for ever from here
    with pytest.raises(ActorDiedError, match="may or may not have run"):
        pygen.get(gen.completed(), timeout=T)
    assert pygen.get(a.ping.remote(), timeout=T) == "pong"
    assert pygen.get(a.pid.remote(), timeout=T) != pid
    assert sorted(os.listdir(d)) == ["attempt-1", "gate"]
    assert_stopped(gen)

# == every end of the call ends the stream ===================================================

@kinds
def test_killing_an_actor_whose_stream_is_paused_ends_it_after_the_produced_items(kind,
                                                                                  tmp_path):
    log, d = str(tmp_path / "log"), str(tmp_path)
    a = make(kind)
    gen = a.logging.options(generator_backpressure=2).remote(log, d, 100)
    assert wait_until(lambda: len(logged(log)) >= 2, T)
    pygen.kill(a)
    values, error, after = values_until_error(gen)
    assert values == [0, 1] and after == []
    assert isinstance(error, ActorDiedError) and "killed by pygen.kill" in str(error), error
    assert_stopped(gen)
    with pytest.raises(ActorDiedError):
        pygen.get(gen.completed(), timeout=T)


def test_shutdown_ends_actor_streams_and_wakes_blocked_consumers(fresh, tmp_path):
    fresh()
    gens = []
    for kind in KINDS:
        d = tmp_path / kind
        d.mkdir()
        a = make(kind)
        gen = a.gated.remote(3, 1, str(d / "never"), str(d))
        assert pygen.get(gen.next_ready(T), timeout=T) == 0
        assert wait_file(str(d / "waiting"), T)
        gens.append((a, gen))
    outcomes = []

    def consume(gen):
        try:
            gen.next_ready(60)
            outcomes.append("item")
        except StopIteration:
            outcomes.append("stop")
        except Exception as exc:  # noqa: BLE001 - any error is fine, a hang is not
            outcomes.append(exc)

    threads = [threading.Thread(target=consume, args=(gen,)) for _, gen in gens]
    for t in threads:
        t.start()
    pygen.shutdown()
    for t in threads:
        t.join(T)
    assert not any(t.is_alive() for t in threads), "a consumer blocked in next() survived"
    assert len(outcomes) == len(KINDS)
    assert not any(isinstance(o, GetTimeoutError) for o in outcomes), outcomes
