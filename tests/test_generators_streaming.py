"""Streaming generators: ``ObjectRefGenerator`` (SPEC §4.3, §3 on ``get``/``wait``).

One test (at least) per sentence of §4.3.  Generators tell the tests what they did with
files under ``tmp_path`` (one per yield, one in ``finally``...), so "it paused", "its
finally ran", "it did not go on producing" are observed, not assumed.  Every wait for an
item has a timeout (``gen.next_ready(timeout)``, ``get(timeout=)``): a bug shows up as a
failure, never as a hang.

Generators that must deliver each item promptly take at least ~1 ms per step (a sleep):
the worker batches items of generators that yield in microseconds, see
tests/pending_generators.py for what that costs.
"""
from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import pygen
from pygen import ObjectRefGenerator
from pygen.exceptions import (GetTimeoutError, InconsistentRetryError, PygenError,
                              TaskCancelledError, TaskError, WorkerCrashedError)

from conftest import STORE, assert_clean_after_shutdown, attempt, store_empty, wait_until

pytestmark = pytest.mark.usefixtures("session")

MiB = 2**20
T = 30  # seconds: the bound on anything that should take milliseconds


# -- helpers ------------------------------------------------------------------------------

def touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def wait_file(path, timeout: float = 20.0) -> bool:
    return wait_until(lambda: os.path.exists(str(path)), timeout, 0.002)


def wait_for_release(release: str, limit: float = 30.0) -> None:
    """Inside a task: poll for ``release`` (never blocks in pygen)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.002)


def drain(gen, timeout: float = T) -> list:
    """Every remaining item ref of ``gen`` (StopIteration ends it)."""
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


def assert_stopped(gen, times: int = 3) -> None:
    for _ in range(times):
        with pytest.raises(StopIteration):
            gen.next_ready(T)
        with pytest.raises(StopIteration):
            next(gen)


def is_ready(ref, timeout: float = 0.0) -> bool:
    ready, _ = pygen.wait([ref], timeout=timeout)
    return bool(ready)


def logged(path) -> list:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


class Boom(Exception):
    pass


@pytest.fixture
def fresh():
    """conftest's ``fresh``, then this module's session again (not an auto-init with the
    defaults) for the tests that follow."""
    pygen.shutdown()

    def start(**kwargs):
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("object_store_memory", STORE)
        pygen.init(**kwargs)

    yield start
    pygen.shutdown()
    assert_clean_after_shutdown()
    pygen.init(num_cpus=2, object_store_memory=STORE)


# -- remote functions ------------------------------------------------------------------------

@pygen.remote
def count_up(n, delay=0.0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i


@pygen.remote
def gated(release, first=1, rest=2, ret=None):
    """Yields ``first`` items, waits for ``release``, yields ``rest`` more, returns ``ret``."""
    i = 0
    for _ in range(first):
        time.sleep(0.001)
        yield i
        i += 1
    wait_for_release(release)
    for _ in range(rest):
        time.sleep(0.001)
        yield i
        i += 1
    return ret


@pygen.remote
def consume_all(gen):
    """In another task: iterate a streaming generator passed as an argument."""
    assert isinstance(gen, ObjectRefGenerator), type(gen)
    return [pygen.get(ref) for ref in gen]


# == creation ==================================================================================

def test_default_for_generator_functions_is_streaming():
    gen = count_up.remote(3)
    assert isinstance(gen, ObjectRefGenerator) and isinstance(gen, pygen.ObjectRefGenerator)
    assert [pygen.get(r) for r in drain(gen)] == [0, 1, 2]


def test_explicit_streaming_option():
    @pygen.remote(num_returns="streaming")
    def explicit():
        yield "x"

    gen = explicit.remote()
    assert isinstance(gen, ObjectRefGenerator)
    assert pygen.get(drain(gen)) == ["x"]
    gen = count_up.options(num_returns="streaming").remote(2)
    assert pygen.get(drain(gen)) == [0, 1]


def test_async_generator_function_is_streaming_by_default():
    @pygen.remote
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0.001)
            yield i * 2

    gen = agen.remote(4)
    assert isinstance(gen, ObjectRefGenerator)
    assert pygen.get(drain(gen)) == [0, 2, 4, 6]


def test_remote_returns_at_once(tmp_path):
    """``remote()`` returns before the task yields anything: here the task yields only
    after a release that the test gives once ``remote()`` has returned."""
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=0)
    try:
        assert isinstance(gen, ObjectRefGenerator)
        with pytest.raises(GetTimeoutError):
            gen.next_ready(0.1)
    finally:
        touch(release)
    assert pygen.get(drain(gen)) == [0, 1]


def test_streaming_on_a_plain_function_is_refused_at_decoration():
    def plain():
        return 1

    with pytest.raises(TypeError, match="plain function"):
        pygen.remote(num_returns="streaming")(plain)
    with pytest.raises(TypeError, match="plain function"):
        pygen.remote(plain).options(num_returns="streaming")


# == next / for / async ========================================================================

def test_next_blocks_until_the_next_item_exists(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=1)
    first = next(gen)
    assert isinstance(first, pygen.ObjectRef) and pygen.get(first, timeout=T) == 0
    try:
        t0 = time.monotonic()
        with pytest.raises(GetTimeoutError):
            gen.next_ready(0.3)  # the second item does not exist yet: next would block
        assert time.monotonic() - t0 >= 0.3  # it waited its timeout (a lower bound)
    finally:
        touch(release)
    assert pygen.get(next(gen), timeout=T) == 1
    assert_stopped(gen)


def test_blocked_next_returns_when_the_item_comes(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=0, rest=1)
    got = []
    t = threading.Thread(target=lambda: got.append(next(gen)))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not got  # blocked in next
    touch(release)
    t.join(T)
    assert not t.is_alive() and pygen.get(got[0], timeout=T) == 0


def test_for_loop_and_stop_iteration_forever():
    gen = count_up.remote(5)
    values = [pygen.get(ref, timeout=T) for ref in gen]
    assert values == [0, 1, 2, 3, 4]
    assert_stopped(gen)
    assert list(gen) == []


def test_iter_returns_itself():
    gen = count_up.remote(1)
    assert iter(gen) is gen
    assert gen.__aiter__() is gen
    drain(gen)


def test_async_for_and_anext_and_stop_async_iteration():
    async def main():
        gen = count_up.remote(3)
        values = [await ref async for ref in gen]
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        gen2 = count_up.remote(2)
        first = await gen2.__anext__()
        second = await gen2.__anext__()
        with pytest.raises(StopAsyncIteration):
            await gen2.__anext__()
        return values, await first, await second

    assert asyncio.run(asyncio.wait_for(main(), T)) == ([0, 1, 2], 0, 1)


def test_anext_does_not_block_the_event_loop(tmp_path):
    """While ``async for`` waits for the next item, the loop runs other coroutines: here
    the next item comes only after another coroutine of the same loop has released the
    producer (a blocked loop would see it only when the producer gives up waiting, 30 s
    later, with the release file still missing)."""
    release = str(tmp_path / "release")

    async def main():
        gen = gated.remote(release, first=1, rest=2)
        values = [await (await gen.__anext__())]
        ticks = 0

        async def releaser():
            nonlocal ticks
            while ticks < 5:  # runs only while the loop is free
                ticks += 1
                await asyncio.sleep(0.01)
            touch(release)

        task = asyncio.create_task(releaser())
        async for ref in gen:
            values.append((await ref, os.path.exists(release)))
        await task
        return values, ticks

    values, ticks = asyncio.run(asyncio.wait_for(main(), 2 * T))
    assert values == [0, (1, True), (2, True)] and ticks == 5, values


def test_async_consumers_of_several_generators_concurrently(tmp_path):
    """Three consumers on one loop.  Generator i waits, before its second item, for a file
    that consumer i+1 writes once it has its own first item: the three can only end (with
    every release seen) if they run side by side."""
    releases = [str(tmp_path / f"release-{i}") for i in range(3)]

    async def consume(i, gen):
        values = [await (await gen.__anext__())]
        touch(releases[(i - 1) % 3])  # consumer i releases generator i-1
        async for ref in gen:
            values.append((await ref, os.path.exists(releases[i])))
        return values

    async def main():
        gens = [gated.remote(releases[i], first=1, rest=2) for i in range(3)]
        return await asyncio.gather(*(consume(i, g) for i, g in enumerate(gens)))

    assert asyncio.run(asyncio.wait_for(main(), 2 * T)) == [[0, (1, True), (2, True)]] * 3


def test_async_generator_function_consumed_with_async_for():
    @pygen.remote
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i

    async def main():
        return [await ref async for ref in ticks.remote(5)]

    assert asyncio.run(asyncio.wait_for(main(), T)) == [0, 1, 2, 3, 4]


# == eager execution ===========================================================================

def test_task_runs_eagerly_without_a_consumer(tmp_path):
    @pygen.remote
    def logs_each(d, n):
        for i in range(n):
            touch(os.path.join(d, f"yield-{i}"))
            yield i
        return "ran to the end"

    gen = logs_each.remote(str(tmp_path), 5)
    assert wait_file(tmp_path / "yield-4")  # nobody called next
    assert pygen.get(gen.completed(), timeout=T) == "ran to the end"
    assert pygen.get(drain(gen)) == [0, 1, 2, 3, 4]


def test_first_item_is_readable_long_before_the_task_ends(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=1, ret="end")
    try:
        first = gen.next_ready(T)
        assert pygen.get(first, timeout=T) == 0
        assert not is_ready(gen.completed(), 0.2)  # the task is still running
    finally:
        touch(release)
    assert pygen.get(gen.completed(), timeout=T) == "end"


def test_items_arrive_while_the_task_runs(tmp_path):
    """The first item is read while the task still waits, for a release given only after."""
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=2, ret="end")
    try:
        assert pygen.get(next(gen), timeout=T) == 0
        assert pygen.wait([gen.completed()], timeout=0)[0] == []  # the task is running
    finally:
        touch(release)
    assert pygen.get(drain(gen)) == [1, 2]
    assert pygen.get(gen.completed(), timeout=T) == "end"


# == errors ====================================================================================

@pytest.mark.parametrize("n", [0, 1, 3])
def test_application_exception_at_its_position_then_stop_iteration(n):
    @pygen.remote
    def raises_after(n):
        for i in range(n):
            yield i
        raise Boom(f"boom at {n}")

    gen = raises_after.remote(n)
    refs = [gen.next_ready(T) for _ in range(n + 1)]
    assert pygen.get(refs[:n], timeout=T) == list(range(n))
    with pytest.raises(Boom) as info:
        pygen.get(refs[n], timeout=T)
    assert isinstance(info.value, TaskError) and isinstance(info.value.cause, Boom)
    assert f"boom at {n}" in str(info.value) and "raises_after" in str(info.value)
    assert_stopped(gen)
    with pytest.raises(Boom):
        pygen.get(gen.completed(), timeout=T)


def test_seed_exception_example():
    @pygen.remote
    def failing():
        for i in range(5):
            time.sleep(0.01)
            if i == 2:
                raise ValueError
            yield i

    gen = failing.remote()
    assert pygen.get(next(gen), timeout=T) == 0
    assert pygen.get(next(gen), timeout=T) == 1
    with pytest.raises(ValueError):
        pygen.get(next(gen), timeout=T)
    assert_stopped(gen)


def test_worker_exit_is_one_error_ref_then_stop_iteration():
    @pygen.remote(max_retries=0)
    def exits():
        time.sleep(0.001)
        yield "a"
        time.sleep(0.001)
        yield "b"
        time.sleep(0.05)
        os._exit(5)

    gen = exits.remote()
    values, error, after = values_until_error(gen)
    assert values == ["a", "b"]
    assert isinstance(error, WorkerCrashedError) and after == []
    assert_stopped(gen)
    with pytest.raises(WorkerCrashedError):
        pygen.get(gen.completed(), timeout=T)


def test_worker_sigkilled_by_pid_is_one_error_ref_then_stop_iteration():
    @pygen.remote(max_retries=0)
    def forever():
        yield os.getpid()
        i = 0
        while True:
            time.sleep(0.01)
            i += 1
            yield i

    gen = forever.remote()
    pid = pygen.get(gen.next_ready(T), timeout=T)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    values, error, after = values_until_error(gen)
    assert values == list(range(1, len(values) + 1))  # what came before, in order
    assert isinstance(error, WorkerCrashedError), error
    assert after == []
    assert_stopped(gen)


def test_unpicklable_item_ends_the_stream_with_an_error():
    @pygen.remote
    def bad():
        yield 1
        yield threading.Lock()
        yield 3

    values, error, after = values_until_error(bad.remote())
    assert values == [1]
    assert isinstance(error, PygenError) and after == []


# == completed() ===============================================================================

def test_completed_value_is_the_return_value(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=1, ret={"total": 2})
    done = gen.completed()
    assert isinstance(done, pygen.ObjectRef)
    try:
        assert pygen.get(gen.next_ready(T), timeout=T) == 0
        assert not is_ready(done, 0.2)  # ready only when the task ends
    finally:
        touch(release)
    assert pygen.get(done, timeout=T) == {"total": 2}
    assert pygen.get(drain(gen)) == [1]  # completed() took no item


def test_completed_is_none_without_a_return():
    gen = count_up.remote(2)
    assert pygen.get(gen.completed(), timeout=T) is None
    assert pygen.get(gen.completed(), timeout=T) is None  # asked again


def test_completed_large_return_value():
    @pygen.remote
    def returns_array():
        yield 1
        return np.arange(1_000_000)

    gen = returns_array.remote()
    value = pygen.get(gen.completed(), timeout=T)
    assert value.sum() == np.arange(1_000_000).sum()


def test_completed_ref_outlives_the_generator():
    gen = count_up.remote(2)
    done = gen.completed()
    del gen
    gc.collect()
    assert pygen.get(done, timeout=T) is None


# == get and wait ==============================================================================

def test_get_of_a_generator_is_a_type_error_that_says_what_to_do():
    gen = count_up.remote(2)
    with pytest.raises(TypeError) as info:
        pygen.get(gen)
    message = str(info.value)
    assert "iterate" in message and "completed()" in message
    with pytest.raises(TypeError, match="completed()"):
        pygen.get([pygen.put(1), gen])
    assert pygen.get(drain(gen)) == [0, 1]  # nothing was taken


def test_wait_ready_when_next_would_not_block_and_never_takes_an_item(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=0, rest=3)
    try:
        ready, not_ready = pygen.wait([gen], timeout=0.2)
        assert ready == [] and not_ready == [gen]  # no item yet
    finally:
        touch(release)
    ready, not_ready = pygen.wait([gen], timeout=T)
    assert ready == [gen] and not_ready == []
    for _ in range(20):
        assert pygen.wait([gen], timeout=T)[0] == [gen]
    assert pygen.get(gen.next_ready(0), timeout=T) == 0  # was there: next does not block
    assert pygen.get(drain(gen)) == [1, 2]
    # at the end of the stream next would not block either (StopIteration)
    assert pygen.wait([gen], timeout=0)[0] == [gen]


def test_wait_on_generator_becomes_not_ready_after_next(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=1)
    try:
        assert pygen.wait([gen], timeout=T)[0] == [gen]
        next(gen)
        assert pygen.wait([gen], timeout=0.1)[0] == []
    finally:
        touch(release)
    assert pygen.wait([gen], timeout=T)[0] == [gen]
    assert pygen.get(drain(gen)) == [1]


def test_wait_mixes_generators_and_refs_in_input_order(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def plain(release):
        wait_for_release(release)
        return "plain"

    gen = gated.remote(release, first=1, rest=0)
    slow = plain.remote(release)
    done = pygen.put("done")
    try:
        ready, not_ready = pygen.wait([slow, gen, done], num_returns=2, timeout=T)
        assert ready == [gen, done] and not_ready == [slow]
        ready, not_ready = pygen.wait([slow, gen, done], num_returns=3, timeout=0.1)
        assert ready == [gen, done] and not_ready == [slow]
    finally:
        touch(release)
    ready, not_ready = pygen.wait([slow, gen, done], num_returns=3, timeout=T)
    assert ready == [slow, gen, done] and not_ready == []
    assert pygen.get(drain(gen)) == [0]


def test_seed_wait_loop_over_generators_and_refs():
    @pygen.remote
    def regular():
        time.sleep(0.05)
        return "regular"

    unready = [count_up.remote(5, 0.01), count_up.remote(3, 0.01), regular.remote()]
    result = []
    deadline = time.monotonic() + T
    while unready and time.monotonic() < deadline:
        ready, unready = pygen.wait(unready, timeout=T)
        for r in ready:
            if isinstance(r, ObjectRefGenerator):
                try:
                    ref = r.next_ready(0)
                except StopIteration:
                    continue
                result.append(pygen.get(ref, timeout=T))
                unready.append(r)
            else:
                result.append(pygen.get(r, timeout=T))
    assert not unready
    assert sorted(map(str, result)) == sorted(map(str, [0, 1, 2, 3, 4, 0, 1, 2, "regular"]))


def test_wait_rejects_the_same_generator_twice():
    gen = count_up.remote(1)
    with pytest.raises(ValueError):
        pygen.wait([gen, gen])
    drain(gen)


# == garbage collection ========================================================================

def test_deleting_the_generator_frees_untaken_items_also_later_ones(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def producer(d, release):
        for i in range(3):
            time.sleep(0.001)
            yield np.full(MiB, i, dtype=np.uint8)
        touch(os.path.join(d, "three"))
        wait_for_release(release)
        for i in range(3, 6):
            time.sleep(0.001)
            yield np.full(MiB, i, dtype=np.uint8)
        touch(os.path.join(d, "done"))

    assert store_empty()
    gen = producer.remote(str(tmp_path), release)
    taken = gen.next_ready(T)
    assert wait_file(tmp_path / "three")
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 3, T)
    del gen
    # the two items nobody took are freed; the taken one is an ordinary ref
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 1, T), \
        pygen.state.store_stats()
    touch(release)
    assert wait_file(tmp_path / "done")

    def only_taken_left():
        gc.collect()
        stats = pygen.state.store_stats()
        running = [t for t in pygen.state.list_tasks()
                   if t["name"] == "producer" and t["state"] in ("running", "queued")]
        return not running and stats["objects"] == 1 and stats["tracked_objects"] == 1

    assert wait_until(only_taken_left), (pygen.state.store_stats(),
                                             pygen.state.list_objects())
    value = pygen.get(taken, timeout=T)
    assert value.nbytes == MiB and int(value[0]) == 0
    del value, taken
    assert store_empty()


def test_deleting_a_finished_generator_frees_what_was_not_taken():
    @pygen.remote
    def big(n):
        for i in range(n):
            yield np.full(MiB, i, dtype=np.uint8)

    assert store_empty()
    gen = big.remote(5)
    first, second = gen.next_ready(T), gen.next_ready(T)
    pygen.get(gen.completed(), timeout=T)
    assert pygen.state.store_stats()["objects"] == 5
    del gen
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 2, T)
    assert [int(pygen.get(r)[0]) for r in (first, second)] == [0, 1]
    del first, second
    assert store_empty()


def test_taken_refs_stay_valid_and_can_be_passed_after_the_generator_is_gone():
    gen = count_up.remote(3)
    refs = drain(gen)
    del gen
    gc.collect()
    time.sleep(0.1)

    @pygen.remote
    def double(x):
        return 2 * x

    assert pygen.get([double.remote(r) for r in refs], timeout=T) == [0, 2, 4]


def test_fully_consumed_generator_leaves_nothing():
    @pygen.remote
    def big(n):
        for i in range(n):
            yield np.full(MiB, i, dtype=np.uint8)
        return "done"

    assert store_empty()
    gen = big.remote(4)
    assert [int(pygen.get(r, timeout=T)[0]) for r in gen] == [0, 1, 2, 3]
    assert pygen.get(gen.completed(), timeout=T) == "done"
    del gen
    assert store_empty()


# == close() ===================================================================================

def test_close_raises_generator_exit_at_the_current_yield(tmp_path):
    @pygen.remote
    def closable(d):
        i = 0
        try:
            while True:
                time.sleep(0.005)
                yield i
                touch(os.path.join(d, f"resumed-{i}"))
                i += 1
        except GeneratorExit:
            touch(os.path.join(d, "generator-exit"))
            raise
        finally:
            touch(os.path.join(d, "finally"))

    gen = closable.remote(str(tmp_path))
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    gen.close()
    assert wait_file(tmp_path / "finally")
    assert os.path.exists(tmp_path / "generator-exit")
    assert_stopped(gen)
    pygen.get(gen.completed(), timeout=T)  # the task ended; nothing hangs
    resumed = sorted(x for x in os.listdir(tmp_path) if x.startswith("resumed-"))
    time.sleep(0.1)
    assert sorted(x for x in os.listdir(tmp_path) if x.startswith("resumed-")) == resumed


def test_close_while_the_task_runs_user_code_stops_it_at_the_next_yield(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def slow_step(d, release):
        try:
            yield 0
            wait_for_release(release)  # close() arrives while it is here
            time.sleep(0.01)  # a step shorter than 1 ms may miss it: see the report
            yield 1
            touch(os.path.join(d, "after-1"))
            yield 2
        finally:
            touch(os.path.join(d, "finally"))

    gen = slow_step.remote(str(tmp_path), release)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    gen.close()
    assert_stopped(gen)
    touch(release)
    assert wait_file(tmp_path / "finally")
    assert not os.path.exists(tmp_path / "after-1")


def test_close_frees_what_is_left(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def big(d, release):
        try:
            for i in range(3):
                time.sleep(0.001)
                yield np.full(MiB, i, dtype=np.uint8)
            wait_for_release(release)
            yield np.full(MiB, 9, dtype=np.uint8)
        finally:
            touch(os.path.join(d, "finally"))

    assert store_empty()
    gen = big.remote(str(tmp_path), release)
    first = gen.next_ready(T)
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 3)
    gen.close()
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 1, T)
    touch(release)
    assert wait_file(tmp_path / "finally")
    assert int(pygen.get(first, timeout=T)[0]) == 0
    del first, gen
    assert store_empty()


def test_close_of_a_finished_generator_and_twice():
    gen = count_up.remote(3)
    pygen.get(gen.completed(), timeout=T)
    first = gen.next_ready(T)
    gen.close()
    gen.close()
    assert_stopped(gen)
    assert pygen.get(first) == 0


def test_close_of_a_generator_whose_task_has_not_started(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def hold(release):
        wait_for_release(release)
        return 1

    holders = [hold.remote(release) for _ in range(2)]
    gen = count_up.remote(3)
    try:
        gen.close()
        assert_stopped(gen)
    finally:
        touch(release)
    pygen.get(holders, timeout=T)
    try:
        pygen.get(gen.completed(), timeout=T)  # the task never runs or ends at once
    except PygenError as exc:
        assert not isinstance(exc, GetTimeoutError)


# == values ====================================================================================

def test_value_is_captured_at_its_yield():
    @pygen.remote
    def mutating():
        items = [1, 2]
        yield items
        items.append(3)
        time.sleep(0.001)
        yield items
        items.clear()
        arr = np.zeros(MiB, dtype=np.uint8)  # large: lives in the arena
        time.sleep(0.001)
        yield arr
        arr[:] = 7
        time.sleep(0.001)
        yield {"arr_sum": int(arr.sum())}

    refs = drain(mutating.remote())
    values = pygen.get(refs, timeout=T)
    assert values[0] == [1, 2]
    assert values[1] == [1, 2, 3]
    assert values[2].nbytes == MiB and int(values[2].sum()) == 0
    assert values[3] == {"arr_sum": 7 * MiB}


def test_yielding_an_exception_object_yields_a_value():
    @pygen.remote
    def yields_errors():
        yield ValueError("just a value")
        yield Boom("also a value")
        yield "after"

    gen = yields_errors.remote()
    values = pygen.get(drain(gen), timeout=T)
    assert isinstance(values[0], ValueError) and str(values[0]) == "just a value"
    assert isinstance(values[1], Boom) and values[2] == "after"
    assert pygen.get(gen.completed(), timeout=T) is None


# == backpressure ==============================================================================

@pygen.remote
def logging_producer(log, d, n):
    try:
        for i in range(n):
            with open(log, "a") as f:
                f.write(f"{i}\n")
            yield i
    finally:
        touch(os.path.join(d, "finally"))


def test_backpressure_pauses_the_worker_at_yield(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=2).remote(log, str(tmp_path), 10)
    assert wait_until(lambda: len(logged(log)) >= 2)
    time.sleep(0.3)
    # yields 0 and 1 are stored and not taken: the generator waits at the yield of 1
    assert logged(log) == ["0", "1"]
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    assert wait_until(lambda: len(logged(log)) >= 3)
    time.sleep(0.3)
    assert logged(log) == ["0", "1", "2"]
    assert pygen.get(drain(gen), timeout=T) == list(range(1, 10))
    assert logged(log) == [str(i) for i in range(10)]
    assert wait_file(tmp_path / "finally")


def test_backpressure_one_item_at_a_time(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=1).remote(log, str(tmp_path), 5)
    for i in range(5):
        assert wait_until(lambda: len(logged(log)) >= i + 1)
        time.sleep(0.1)
        assert len(logged(log)) == i + 1  # no more than one untaken item
        assert pygen.get(gen.next_ready(T), timeout=T) == i
    assert_stopped(gen)


def test_backpressure_with_the_consumer_in_another_task(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=3).remote(log, str(tmp_path), 50)
    assert pygen.get(consume_all.remote(gen), timeout=T) == list(range(50))


@pygen.remote(generator_backpressure=1)
def paced_producer(n):
    yield from range(n)


def test_paused_generators_lend_their_cpus_to_their_consumers():
    """Two producers take both CPUs and pause at their first yield (backpressure 1); their
    consumers are tasks waiting for a CPU.  A paused generator lends its CPU (as a task
    waiting in get does) and takes it back when an item is taken, so nothing deadlocks
    (found by the chaos suite: this waited for ever)."""
    node = pygen.state._node()
    assert wait_until(lambda: node.free_cpus == node.num_cpus)
    producers = [paced_producer.remote(30) for _ in range(int(node.num_cpus))]
    consumers = [consume_all.remote(gen) for gen in producers]
    assert pygen.get(consumers, timeout=T) == [list(range(30))] * len(producers)
    del producers
    assert wait_until(lambda: node.free_cpus == node.num_cpus), node.free_cpus


def test_deleting_a_paused_generator_stops_its_task(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=2).remote(log, str(tmp_path), 100)
    assert wait_until(lambda: len(logged(log)) >= 2)
    del gen
    assert wait_file(tmp_path / "finally")
    produced = logged(log)
    time.sleep(0.3)
    assert logged(log) == produced and len(produced) <= 3, produced  # not resumed
    assert wait_until(lambda: not [t for t in pygen.state.list_tasks()
                                   if t["name"] == "logging_producer"
                                   and t["state"] == "running"], 5)
    assert store_empty()


def test_closing_a_paused_generator_stops_its_task(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=2).remote(log, str(tmp_path), 100)
    assert wait_until(lambda: len(logged(log)) >= 2)
    gen.close()
    assert wait_file(tmp_path / "finally")
    produced = logged(log)
    time.sleep(0.3)
    assert logged(log) == produced and len(produced) <= 3, produced  # not resumed
    assert_stopped(gen)
    pygen.get(gen.completed(), timeout=T)
    del gen
    assert store_empty()


def test_backpressure_large_items_bound_the_store(tmp_path):
    @pygen.remote(generator_backpressure=2)
    def big(n):
        for i in range(n):
            yield np.full(4 * MiB, i, dtype=np.uint8)

    assert store_empty()
    gen = big.remote(20)
    peak = 0
    for i, ref in enumerate(gen):
        time.sleep(0.01)
        peak = max(peak, pygen.state.store_stats()["used"])
        assert int(pygen.get(ref, timeout=T)[0]) == i
        del ref
    assert peak <= 4 * 4 * MiB + MiB, peak  # ~2 untaken + the one being read
    del gen
    assert store_empty()


# == cancel ====================================================================================

def test_cancel_makes_the_next_item_a_task_cancelled_error(tmp_path):
    @pygen.remote
    def ticking(d):
        i = 0
        try:
            while True:
                time.sleep(0.005)
                yield i
                i += 1
        finally:
            touch(os.path.join(d, "finally"))

    gen = ticking.remote(str(tmp_path))
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    pygen.cancel(gen)
    values, error, after = values_until_error(gen)
    assert isinstance(error, TaskCancelledError), error
    assert values == list(range(1, len(values) + 1)) and after == []
    assert_stopped(gen)
    assert wait_file(tmp_path / "finally")
    with pytest.raises(TaskCancelledError):
        pygen.get(gen.completed(), timeout=T)


def test_cancel_of_a_generator_that_has_not_started(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def hold(release):
        wait_for_release(release)
        return 1

    holders = [hold.remote(release) for _ in range(2)]
    marker = str(tmp_path / "ran")

    @pygen.remote
    def never(marker):
        touch(marker)
        yield 1

    gen = never.remote(marker)
    pygen.cancel(gen)
    values, error, after = values_until_error(gen, 10)
    touch(release)
    pygen.get(holders, timeout=T)
    assert values == [] and isinstance(error, TaskCancelledError) and after == []
    time.sleep(0.1)
    assert not os.path.exists(marker)


def test_cancel_of_a_finished_generator_is_a_no_op():
    gen = count_up.remote(2)
    pygen.get(gen.completed(), timeout=T)
    pygen.cancel(gen)
    assert pygen.get(drain(gen), timeout=T) == [0, 1]


def test_force_cancel_of_a_generator(tmp_path):
    @pygen.remote
    def deaf():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        yield os.getpid()
        time.sleep(60)
        yield "never"

    gen = deaf.remote()
    pid = pygen.get(gen.next_ready(T), timeout=T)
    pygen.cancel(gen, force=True)
    values, error, after = values_until_error(gen, 10)
    assert values == [] and isinstance(error, TaskCancelledError) and after == []
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}/status")
                      or "State:\tZ" in open(f"/proc/{pid}/status").read(), 5)


# == passing a generator to a task =============================================================

def test_generator_passed_to_a_task_is_iterated_there():
    gen = count_up.remote(5, 0.001)
    assert pygen.get(consume_all.remote(gen), timeout=T) == [0, 1, 2, 3, 4]
    assert_stopped(gen)  # the one cursor moved in the task


def test_generator_passed_after_partial_consumption_continues_where_it_was():
    gen = count_up.remote(6, 0.001)
    assert pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T) == [0, 1]
    assert pygen.get(consume_all.remote(gen), timeout=T) == [2, 3, 4, 5]


def test_generator_passed_in_a_container_and_dropped_by_the_driver(tmp_path):
    release = str(tmp_path / "release")
    gen = gated.remote(release, first=1, rest=3)

    @pygen.remote
    def from_box(box):
        return [pygen.get(r) for r in box[0]]

    ref = from_box.remote([gen])
    del gen
    gc.collect()
    time.sleep(0.1)
    touch(release)
    assert pygen.get(ref, timeout=T) == [0, 1, 2, 3]


def test_consumer_of_a_passed_generator_is_not_retried_once_it_took_items(tmp_path):
    """A retry of a task that took items from a generator it was given would start
    where the dead attempt stopped and silently miss those items: the task fails with
    the crash, and its message says why it was not retried."""
    d = str(tmp_path)

    @pygen.remote(max_retries=2)
    def consumer(gen, d):
        first = attempt(d) == 1
        out = []
        for ref in gen:
            out.append(pygen.get(ref))
            if first and len(out) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    gen = count_up.remote(8, 0.001)
    with pytest.raises(WorkerCrashedError, match="not retried: it had taken items from the "
                                                 "streaming generator of task count_up"):
        pygen.get(consumer.remote(gen, d), timeout=T)
    assert os.listdir(d) == ["attempt-1"]
    # the generator itself is intact: the rest is still there for whoever asks
    assert pygen.get(drain(gen), timeout=T) == [3, 4, 5, 6, 7]


def test_consumer_killed_before_taking_an_item_is_retried(tmp_path):
    d = str(tmp_path)

    @pygen.remote(max_retries=1)
    def consumer(gen, d):
        if attempt(d) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return [pygen.get(r) for r in gen]

    assert pygen.get(consumer.remote(count_up.remote(4, 0.001), d), timeout=T) == [0, 1, 2, 3]
    assert len(os.listdir(d)) == 2


def test_task_consuming_a_generator_it_started_is_retried(tmp_path):
    """A generator the task started itself is started afresh by the retry: nothing missed."""
    d = str(tmp_path)

    @pygen.remote(max_retries=1)
    def own_consumer(d):
        first = attempt(d) == 1
        out = []
        for ref in count_up.remote(6, 0.001):
            out.append(pygen.get(ref))
            if first and len(out) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    assert pygen.get(own_consumer.remote(d), timeout=T) == list(range(6))
    assert len(os.listdir(d)) == 2


@pytest.mark.parametrize("k", [1, 4])
def test_producer_killed_while_a_task_consumes_it_is_retried_for_that_task(tmp_path, k):
    """The retry of the producer serves the consumer task: every item once, in order.
    Deterministic: the consumer takes exactly k items and says so; the producer, two items
    ahead (k and k+1 produced, not taken), dies only then; the consumer goes on only once
    the retry has started.  So the cursor stands at k when the producer dies."""
    d = str(tmp_path / "attempts")
    os.mkdir(d)
    taken = str(tmp_path / "taken")

    @pygen.remote(max_retries=1)
    def producer(d, taken, n, k):
        first = attempt(d) == 1
        for i in range(n):
            if first and i == k + 2:
                wait_for_release(taken, 60)
                os.kill(os.getpid(), signal.SIGKILL)
            yield i

    @pygen.remote
    def consume_in_two_parts(gen, d, taken, k):
        out = [pygen.get(next(gen)) for _ in range(k)]
        touch(taken)
        wait_for_release(os.path.join(d, "attempt-2"), 60)  # the producer was restarted
        return out + [pygen.get(ref) for ref in gen]

    gen = producer.remote(d, taken, 10, k)
    assert pygen.get(consume_in_two_parts.remote(gen, d, taken, k), timeout=2 * T) == \
        list(range(10))
    assert sorted(os.listdir(d)) == ["attempt-1", "attempt-2"]


def test_task_can_use_completed_and_wait_on_a_passed_generator():
    @pygen.remote
    def inspect_gen(gen):
        ready, _ = pygen.wait([gen], timeout=30)
        items = [pygen.get(r) for r in gen]
        return len(ready), items, pygen.get(gen.completed())

    @pygen.remote
    def with_return():
        yield "a"
        return "ret"

    assert pygen.get(inspect_gen.remote(with_return.remote()), timeout=T) == (1, ["a"], "ret")


def test_generator_pickles_as_a_handle():
    gen = count_up.remote(2)
    copy = pickle.loads(pickle.dumps(gen))
    assert isinstance(copy, ObjectRefGenerator)
    assert pygen.get(copy.next_ready(T), timeout=T) == 0
    assert pygen.get(gen.next_ready(T), timeout=T) == 1  # one cursor
    assert_stopped(copy)


def test_repr_names_the_task():
    gen = count_up.remote(1)
    assert "ObjectRefGenerator" in repr(gen)
    drain(gen)


# == threads ===================================================================================

def test_next_from_several_threads_hands_each_item_out_once_in_order():
    n, threads = 3000, 4
    gen = count_up.remote(n)
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
        t.join(60)
    assert not any(t.is_alive() for t in workers) and not errors
    everything = sorted(v for mine in got for v in mine)
    assert everything == list(range(n))  # each exactly once
    for mine in got:
        assert mine == sorted(mine)      # in order


# == retries ===================================================================================

def test_retry_after_a_crash_hands_out_no_item_twice_and_skips_none(tmp_path):
    d = str(tmp_path)
    release = str(tmp_path / "release")

    @pygen.remote(max_retries=2)
    def flaky(d, release):
        a = attempt(d)
        for i in range(10):
            if a == 1 and i == 5:
                wait_for_release(release)
                os._exit(1)
            time.sleep(0.001)
            yield (a, i)

    gen = flaky.remote(d, release)
    first = pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T)
    assert first == [(1, 0), (1, 1)]
    touch(release)
    assert wait_until(lambda: any(t["name"] == "flaky" and t["attempt"] >= 1
                                  for t in pygen.state.list_tasks()), 10)
    rest = pygen.get(drain(gen), timeout=T)
    assert [i for _, i in rest] == list(range(2, 10))
    # items 2..4 of attempt 1 were never handed out: they are replaced, not mixed in
    assert all(a == 2 for a, _ in rest), rest
    assert pygen.get(gen.completed(), timeout=T) is None


def test_a_late_report_of_an_old_attempt_is_dropped_and_what_it_stored_freed(tmp_path):
    """Reports carry their attempt.  One that reaches the node after its attempt is over
    (injected here as if the dead worker's socket delivered it late: the timing cannot be
    forced from outside) hands nothing out, and an item it had stored is deleted."""
    from pygen import ids, serialization
    from pygen.core import protocol

    d = str(tmp_path)
    crash, resume = str(tmp_path / "crash"), str(tmp_path / "resume")

    @pygen.remote(max_retries=1)
    def flaky(d, crash, resume):
        a = attempt(d)
        for i in range(6):
            if i == 2:
                wait_for_release(crash if a == 1 else resume)
                if a == 1:
                    os._exit(1)
            yield (a, i)

    gen = flaky.remote(d, crash, resume)
    assert pygen.get([gen.next_ready(T), gen.next_ready(T)], timeout=T) == [(1, 0), (1, 1)]
    node = pygen.state._node()
    task_id = gen._task_id
    old_worker = node.tasks[task_id].worker
    touch(crash)
    assert wait_until(lambda: os.path.exists(os.path.join(d, "attempt-2")))
    assert node.tasks[task_id].attempt == 1
    stored_oid = ids.item_id(task_id, 2, 0)
    stored = serialization.serialize(np.full(50_000, 7))          # big enough for the arena
    stored.write_to(node.store, stored_oid)
    inline = serialization.serialize("stale").to_bytes()
    with node.lock:
        node.on_item(old_worker, protocol.Item(task_id, 0, 2,
                                               (0, None, stored.total_size), []))
        node.on_items(old_worker, protocol.Items(task_id, 0,
                                                 [(3, (0, inline, len(inline)), [])]))
    assert not node.store.contains(stored_oid)
    assert node.tasks[task_id].stream.produced == 2   # nothing added to the stream
    touch(resume)
    assert pygen.get(drain(gen), timeout=T) == [(2, i) for i in range(2, 6)]
    assert pygen.get(gen.completed(), timeout=T) is None


def test_retry_exceptions_on_a_streaming_generator(tmp_path):
    d = str(tmp_path)

    @pygen.remote(max_retries=1, retry_exceptions=[Boom])
    def flaky(d):
        a = attempt(d)
        for i in range(6):
            if a == 1 and i == 3:
                raise Boom("first attempt")
            time.sleep(0.001)
            yield i
        return a

    gen = flaky.remote(d)
    assert pygen.get(drain(gen), timeout=T) == list(range(6))
    assert pygen.get(gen.completed(), timeout=T) == 2


def test_no_retry_for_other_exceptions(tmp_path):
    d = str(tmp_path)

    @pygen.remote(max_retries=3, retry_exceptions=[KeyError])
    def fails(d):
        attempt(d)
        yield 1
        raise Boom("not retried")

    values, error, after = values_until_error(fails.remote(d))
    assert values == [1] and isinstance(error, Boom) and after == []
    assert len(os.listdir(d)) == 1


def test_retry_that_yields_fewer_items_ends_with_inconsistent_retry_error(tmp_path):
    d = str(tmp_path)
    release = str(tmp_path / "release")

    @pygen.remote(max_retries=1)
    def shrinking(d, release):
        a = attempt(d)
        for i in range(5 if a == 1 else 2):
            time.sleep(0.001)
            yield i
        if a == 1:
            wait_for_release(release)
            os._exit(1)

    gen = shrinking.remote(d, release)
    assert pygen.get([gen.next_ready(T) for _ in range(5)], timeout=T) == [0, 1, 2, 3, 4]
    touch(release)
    values, error, after = values_until_error(gen)
    assert values == [] and isinstance(error, InconsistentRetryError), error
    assert after == []
    assert_stopped(gen)


@pygen.remote(max_retries=1)
def crash_after_handing_out(d, release, handed, again):
    """Attempt 1 yields ``handed`` items and dies once they are taken (``release``);
    attempt 2 yields ``again`` items and returns."""
    a = attempt(d)
    for i in range(handed if a == 1 else again):
        yield (a, i)
    if a == 1:
        wait_for_release(release)
        os._exit(1)


@pytest.mark.parametrize("again", [4, 5, 6], ids=["one less", "as many", "one more"])
def test_inconsistent_retry_boundary(tmp_path, again):
    """5 items were handed out when the producer died.  A retry that yields 4 cannot
    serve them again: InconsistentRetryError.  One that yields exactly 5 ends the stream
    cleanly; 6: the 6th item, from the new attempt."""
    release = str(tmp_path / "release")
    gen = crash_after_handing_out.remote(str(tmp_path), release, 5, again)
    assert pygen.get([gen.next_ready(T) for _ in range(5)], timeout=T) == [(1, i)
                                                                          for i in range(5)]
    touch(release)
    values, error, after = values_until_error(gen)
    if again == 4:
        assert values == [] and isinstance(error, InconsistentRetryError), (values, error)
        assert "yielded 4 items, fewer than the 5 already handed out" in str(error)
        with pytest.raises(InconsistentRetryError):
            pygen.get(gen.completed(), timeout=T)
    else:
        assert error is None, error
        assert values == [(2, i) for i in range(5, again)]
        assert pygen.get(gen.completed(), timeout=T) is None
    assert after == []
    assert_stopped(gen)
    assert len(os.listdir(tmp_path)) == 3  # two attempts and the release


def test_a_closed_generator_is_not_run_again_when_its_worker_dies(tmp_path):
    """Closed while in a step, then its worker dies: nobody can take the items of a new
    attempt and nothing would stop it (the Close went to the dead worker): no retry."""
    d, gate = str(tmp_path), str(tmp_path / "gate")

    @pygen.remote(max_retries=1)
    def endless(d, gate):
        attempt(d)
        touch(os.path.join(d, f"pid-{os.getpid()}"))
        yield 0
        wait_for_release(gate)
        i = 1
        while True:
            time.sleep(0.002)
            yield i
            i += 1

    gen = endless.remote(d, gate)
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    gen.close()
    pid = [int(x[4:]) for x in os.listdir(d) if x.startswith("pid-")][0]
    os.kill(pid, signal.SIGKILL)
    touch(gate)   # a new attempt would run for ever from here
    with pytest.raises(WorkerCrashedError):
        pygen.get(gen.completed(), timeout=T)
    assert sorted(x for x in os.listdir(d) if x.startswith("attempt-")) == ["attempt-1"]
    assert_stopped(gen)


def test_retries_exhausted_end_with_worker_crashed(tmp_path):
    d = str(tmp_path)

    @pygen.remote(max_retries=1)
    def always_crashes(d):
        attempt(d)
        yield "x"
        time.sleep(0.01)
        os._exit(1)

    gen = always_crashes.remote(d)
    values, error, after = values_until_error(gen)
    assert values == ["x"] and isinstance(error, WorkerCrashedError) and after == []
    assert len(os.listdir(d)) == 2


# == every end ends the stream =================================================================

def test_every_end_of_the_task_ends_the_stream_and_completed(tmp_path):
    @pygen.remote(max_retries=0)
    def ends(how, release):
        yield 1
        if how == "return":
            return "r"
        if how == "raise":
            raise Boom("raised")
        if how == "crash":
            os._exit(1)
        while True:  # cancel / close
            time.sleep(0.005)
            yield 2

    for how in ["return", "raise", "crash", "cancel", "close"]:
        gen = ends.remote(how, str(tmp_path / "never"))
        assert pygen.get(gen.next_ready(T), timeout=T) == 1
        if how == "cancel":
            pygen.cancel(gen)
        elif how == "close":
            gen.close()
        drain(gen, 10)  # ends: StopIteration within the timeout
        assert_stopped(gen)
        try:
            pygen.get(gen.completed(), timeout=30)
        except PygenError as exc:
            assert not isinstance(exc, GetTimeoutError), (how, exc)


def test_shutdown_ends_streams_and_wakes_blocked_consumers(fresh, tmp_path):
    fresh()

    @pygen.remote
    def endless():
        yield 0
        while True:
            time.sleep(0.01)

    gen = endless.remote()
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    outcome = []

    def consume():
        try:
            gen.next_ready(60)
            outcome.append("item")
        except StopIteration:
            outcome.append("stop")
        except Exception as exc:  # noqa: BLE001 - any error is fine, a hang is not
            outcome.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    t0 = time.monotonic()
    pygen.shutdown()
    t.join(10)
    assert not t.is_alive() and outcome, "a consumer blocked in next() survived shutdown"
    assert time.monotonic() - t0 < 10
    assert not isinstance(outcome[0], GetTimeoutError), outcome


# == the worker's heap =========================================================================

def test_worker_heap_does_not_grow_with_the_number_of_yields():
    """50 yields of 20 MB arrays: the worker's peak private memory stays under ~3 arrays."""
    @pygen.remote
    def big_arrays(n, size):
        def anon():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        baseline = anon()
        peak = 0
        yield os.getpid(), baseline
        for i in range(n):
            arr = np.full(size, i % 251, dtype=np.uint8)
            peak = max(peak, anon())
            yield arr
            del arr
            peak = max(peak, anon())
        return peak - baseline

    size = 20 * 10**6
    gen = big_arrays.remote(50, size)
    pid, baseline = pygen.get(gen.next_ready(T), timeout=T)
    sampled = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                sampled[0] = max(sampled[0], rss_anon(pid) - baseline)
            except (OSError, AssertionError):
                return
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for i in range(50):
            arr = pygen.get(gen.next_ready(60), timeout=60)
            assert arr.nbytes == size and int(arr[0]) == i % 251
            del arr
        own_peak = pygen.get(gen.completed(), timeout=60)
    finally:
        stop.set()
        sampler.join()
    limit = 60 * 10**6
    assert own_peak < limit, f"worker heap grew by {own_peak / 1e6:.0f} MB"
    assert sampled[0] < limit, f"worker heap grew by {sampled[0] / 1e6:.0f} MB (sampled)"


# == more execution models and places ==========================================================

def test_async_generator_close_runs_its_finally(tmp_path):
    @pygen.remote
    async def aticking(d):
        i = 0
        try:
            while True:
                await asyncio.sleep(0.005)
                yield i
                i += 1
        finally:
            touch(os.path.join(d, "finally"))

    gen = aticking.remote(str(tmp_path))
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    gen.close()
    assert wait_file(tmp_path / "finally")
    assert_stopped(gen)


def test_async_generator_cancel_between_yields(tmp_path):
    @pygen.remote
    async def aticking():
        i = 0
        while True:
            await asyncio.sleep(0.005)
            yield i
            i += 1

    gen = aticking.remote()
    assert pygen.get(gen.next_ready(T), timeout=T) == 0
    pygen.cancel(gen)
    values, error, after = values_until_error(gen)
    assert isinstance(error, TaskCancelledError) and after == []
    assert values == list(range(1, len(values) + 1))


def test_async_generator_exception_at_its_position():
    @pygen.remote
    async def araises():
        yield 1
        await asyncio.sleep(0.001)
        raise Boom("async boom")

    values, error, after = values_until_error(araises.remote())
    assert values == [1] and isinstance(error, Boom) and after == []


def test_async_generator_with_backpressure(tmp_path):
    log = str(tmp_path / "log")

    @pygen.remote(generator_backpressure=2)
    async def alogging(log, n):
        for i in range(n):
            with open(log, "a") as f:
                f.write(f"{i}\n")
            yield i

    gen = alogging.remote(log, 10)
    assert wait_until(lambda: len(logged(log)) >= 2)
    time.sleep(0.3)
    assert logged(log) == ["0", "1"]
    assert pygen.get(drain(gen), timeout=T) == list(range(10))


def test_generator_created_and_consumed_inside_a_task():
    @pygen.remote
    def outer(n):
        gen = count_up.remote(n, 0.001)
        values = [pygen.get(r) for r in gen]
        return values, pygen.get(gen.completed())

    assert pygen.get(outer.remote(5), timeout=T) == ([0, 1, 2, 3, 4], None)


def test_generator_deleted_inside_a_task_frees_its_items():
    @pygen.remote
    def takes_two():
        gen = big.remote(6)
        first = [int(pygen.get(r)[0]) for r in (next(gen), next(gen))]
        del gen
        return first

    @pygen.remote
    def big(n):
        for i in range(n):
            time.sleep(0.001)
            yield np.full(MiB, i, dtype=np.uint8)

    assert store_empty()
    assert pygen.get(takes_two.remote(), timeout=T) == [0, 1]
    assert store_empty(10)


def test_consumer_blocked_in_next_gives_its_cpu_back(fresh):
    """With one CPU, a task iterating a generator it submitted never deadlocks."""
    fresh(num_cpus=1)

    @pygen.remote
    def parent():
        return [pygen.get(r) for r in count_up.remote(3, 0.01)]

    assert pygen.get(parent.remote(), timeout=T) == [0, 1, 2]


def test_worker_output_of_a_generator_is_forwarded_with_its_prefix(capsys):
    @pygen.remote
    def chatty(n):
        for i in range(n):
            print(f"yielded return value {i}")
            yield i

    gen = chatty.remote(3)
    pid = None
    assert pygen.get(drain(gen), timeout=T) == [0, 1, 2]
    pygen.get(gen.completed(), timeout=T)
    seen = []

    def printed():
        seen.append(capsys.readouterr().out)
        return "".join(seen).count("yielded return value") >= 3

    assert wait_until(printed), seen
    lines = [line for line in "".join(seen).splitlines() if "yielded return value" in line]
    for i, line in enumerate(lines):
        assert line.startswith("(chatty pid=") and line.endswith(f") yielded return value {i}")
        pid = pid or line.split("pid=")[1].split(")")[0]
        assert f"pid={pid})" in line


def test_memory_limit_kills_the_list_version_and_not_the_generator():
    """The seed's pattern, small: 12 arrays of 30 MB under a 250 MB limit."""
    @pygen.remote(max_retries=0, memory=250 * 10**6)
    def as_list(n):
        values = [np.full(30 * 10**6, i, dtype=np.uint8) for i in range(n)]
        time.sleep(2)  # holds them (the memory monitor polls every 50 ms)
        return values[:1]

    @pygen.remote(max_retries=0, memory=250 * 10**6)
    def as_generator(n):
        for i in range(n):
            yield np.full(30 * 10**6, i, dtype=np.uint8)

    from pygen.exceptions import OutOfMemoryError

    with pytest.raises(OutOfMemoryError):
        pygen.get(as_list.remote(12), timeout=60)
    gen = as_generator.remote(12)
    for i in range(12):
        arr = pygen.get(gen.next_ready(60), timeout=60)
        assert int(arr[0]) == i
        del arr
    assert pygen.get(gen.completed(), timeout=60) is None


# == delivery: prompt, in order, refs inside items =============================================

def test_fast_items_then_a_blocking_step_are_delivered_at_once(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def fast_then_block(release):
        for i in range(5):
            yield i
        wait_for_release(release)
        yield 5

    gen = fast_then_block.remote(release)
    try:
        assert [pygen.get(gen.next_ready(5)) for _ in range(5)] == [0, 1, 2, 3, 4]
    finally:
        touch(release)
    drain(gen)


def test_items_yielded_just_before_a_crash_are_not_lost():
    @pygen.remote(max_retries=0)
    def exits():
        yield "a"
        yield "b"
        time.sleep(0.05)
        os._exit(5)

    values, error, after = values_until_error(exits.remote())
    assert values == ["a", "b"] and isinstance(error, WorkerCrashedError)


def test_cancel_of_a_generator_sleeping_in_time_sleep(tmp_path):
    @pygen.remote
    def sleepy(d):
        try:
            yield 0
            time.sleep(120)  # only the cancel ends it within the bounds below
            yield 1
        finally:
            touch(os.path.join(d, "finally"))

    gen = sleepy.remote(str(tmp_path))
    assert pygen.get(gen.next_ready(T)) == 0
    pygen.cancel(gen)
    values, error, after = values_until_error(gen, 2 * T)
    assert isinstance(error, TaskCancelledError) and values == []
    assert wait_file(str(tmp_path / "finally"), T)


def test_fast_and_slow_steps_keep_the_items_in_order():
    @pygen.remote
    def mutating():
        items = [1, 2]
        yield items
        items.append(3)
        yield items
        items.clear()
        arr = np.zeros(2**20, dtype=np.uint8)
        yield arr
        arr[:] = 7
        yield {"arr_sum": int(arr.sum())}

    values = pygen.get(drain(mutating.remote()), timeout=T)
    assert values[0] == [1, 2] and values[1] == [1, 2, 3]
    assert int(values[2].sum()) == 0 and values[3] == {"arr_sum": 7 * 2**20}


def test_many_fast_items_in_order():
    @pygen.remote
    def count_up(n):
        for i in range(n):
            yield i

    for _ in range(3):
        assert pygen.get(drain(count_up.remote(3000)), timeout=T) == list(range(3000))


def test_yielded_refs_are_kept_alive():
    @pygen.remote
    def yields_refs():
        for i in range(3):
            time.sleep(0.001)
            yield pygen.put(np.full(2**20, i, dtype=np.uint8))

    inner = pygen.get(drain(yields_refs.remote()), timeout=T)
    assert [int(pygen.get(r, timeout=T)[0]) for r in inner] == [0, 1, 2]
    del inner
    assert store_empty()


def test_refs_nested_in_yielded_containers_are_kept_alive():
    @pygen.remote
    def yields_boxes():
        for i in range(2):
            time.sleep(0.001)
            yield {"ref": pygen.put(i * 10)}

    boxes = pygen.get(drain(yields_boxes.remote()), timeout=T)
    assert [pygen.get(b["ref"], timeout=T) for b in boxes] == [0, 10]


def test_taking_an_item_resumes_a_paused_generator_at_once(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=1).remote(log, str(tmp_path), 5)
    assert wait_until(lambda: len(logged(log)) >= 1)
    first = gen.next_ready(T)  # kept: no dropped ref wakes the node
    assert wait_until(lambda: len(logged(log)) >= 2, T), "the worker was not resumed"
    second = gen.next_ready(T)
    assert wait_until(lambda: len(logged(log)) >= 3, T), "the worker was not resumed"
    assert pygen.get([first, second]) == [0, 1]
    drain(gen)


def test_closing_a_generator_paused_after_an_item_was_taken(tmp_path):
    log = str(tmp_path / "log")
    gen = logging_producer.options(generator_backpressure=2).remote(log, str(tmp_path), 100)
    assert wait_until(lambda: len(logged(log)) >= 2)
    first = gen.next_ready(T)
    assert wait_until(lambda: len(logged(log)) >= 3)
    gen.close()
    assert wait_file(tmp_path / "finally")
    produced = logged(log)
    time.sleep(0.3)
    assert logged(log) == produced and len(produced) <= 4, produced
    assert_stopped(gen)
    assert pygen.get(first, timeout=T) == 0
    pygen.get(gen.completed(), timeout=T)


# == handles in values, close from a worker, spilled items =======================================

def test_generator_handle_inside_a_put_value_keeps_the_stream():
    gen = count_up.remote(5, 0.001)
    box = pygen.put([gen])
    del gen
    gc.collect()
    time.sleep(0.1)  # the driver's dropped handle is processed (every 20 ms)
    again = pygen.get(box, timeout=T)[0]
    assert isinstance(again, ObjectRefGenerator)
    assert pygen.get(drain(again), timeout=T) == [0, 1, 2, 3, 4]


def test_close_from_a_worker_stops_the_task(tmp_path):
    @pygen.remote
    def closer(gen):
        first = pygen.get(next(gen))
        gen.close()
        try:
            next(gen)
        except StopIteration:
            return first
        return "next after close did not stop"

    @pygen.remote
    def ticking(d):
        try:
            i = 0
            while True:
                time.sleep(0.005)
                yield i
                i += 1
        finally:
            touch(os.path.join(d, "finally"))

    gen = ticking.remote(str(tmp_path))
    assert pygen.get(closer.remote(gen), timeout=T) == 0
    assert wait_file(tmp_path / "finally")
    assert_stopped(gen)
    pygen.get(gen.completed(), timeout=T)


def test_untaken_items_beyond_the_arena_are_spilled_and_read_back(fresh, tmp_path):
    fresh(object_store_memory=64 * MiB, spill_dir=str(tmp_path))

    @pygen.remote
    def big(n):
        for i in range(n):
            yield np.full(MiB, i % 251, dtype=np.uint8)
        return "done"

    gen = big.remote(150)  # 150 MiB of items nobody takes before the end, in 64 MiB
    assert pygen.get(gen.completed(), timeout=60) == "done"
    assert pygen.state.store_stats()["spilled_objects"] > 0
    values = []
    for ref in gen:
        arr = pygen.get(ref, timeout=T)
        values.append(int(arr[0]))
        del arr, ref
    assert values == [i % 251 for i in range(150)]
    del gen
    assert store_empty(10)
    assert pygen.state.store_stats()["spilled_objects"] == 0


# ---- errors whose cause is a MemoryError (ObjectStoreFullError is one): the caller gets
# the error at its position, as an instance of the cause's class.

def test_item_larger_than_the_store_is_an_object_store_full_error_at_its_position():
    from pygen.exceptions import ObjectStoreFullError

    @pygen.remote
    def too_big():
        yield 1
        yield np.zeros(300 * 2**20, dtype=np.uint8)  # the session's arena is 256 MiB
        yield 3

    values, error, after = values_until_error(too_big.remote())
    assert values == [1]
    assert isinstance(error, ObjectStoreFullError) and isinstance(error, MemoryError), error
    assert after == []


def test_task_raising_memory_error():
    @pygen.remote
    def raises_memory():
        raise MemoryError("mine")

    with pytest.raises(MemoryError, match="mine"):
        pygen.get(raises_memory.remote(), timeout=T)


# ---- the error recorded on a task (list_tasks()["error"]) and the "pygen" logger's warning
# for "raised after all num_returns=k values" carry the exception's message.

def test_recorded_error_names_the_exception_message():
    from test_generators_static import task_entry

    @pygen.remote
    def raises_after_all():
        yield 0
        yield 1
        raise Exception("error after all values")

    ref1, ref2 = raises_after_all.options(num_returns=2).remote()
    assert pygen.get(ref1, timeout=T) == 0
    with pytest.raises(Exception, match="error after all values"):
        pygen.get(ref2, timeout=T)
    assert "error after all values" in task_entry("raises_after_all")["error"]


# ---- close() is honoured at the very next yield, however short the step before it was.

def test_close_is_honoured_at_the_next_yield_even_after_a_short_step(tmp_path):
    import os
    import time

    from test_generators_streaming import assert_stopped, touch, wait_file

    @pygen.remote
    def short_step(d, release):
        try:
            yield 0
            deadline = time.monotonic() + 10
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.0002)  # the step ends right after the release
            yield 1
            touch(os.path.join(d, "after-1"))
            yield 2
        finally:
            touch(os.path.join(d, "finally"))

    late = 0
    for i in range(100):
        d = tmp_path / str(i)
        d.mkdir()
        release = str(d / "release")
        gen = short_step.remote(str(d), release)
        assert pygen.get(gen.next_ready(T)) == 0
        gen.close()  # the CLOSE is written to the worker's socket before close() returns
        assert_stopped(gen, 1)
        touch(release)
        assert wait_file(d / "finally")
        late += os.path.exists(d / "after-1")
    assert late == 0, f"{late} of 100 generators ran past the yield after close()"
