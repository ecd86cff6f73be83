"""Generators with ``num_returns=k`` set by the caller (SPEC §4.1).

One test per sentence of §4.1 (and the decisions taken on it):
  * each yield is stored as soon as it is yielded; refs 1..k-1 are ready at once, so a task
    that depends on return i starts (and ends) before the generator finishes;
  * ref k is ready only when the generator has finished;
  * fewer than k values: the remaining refs hold an error (a TaskError whose cause is a
    ValueError) naming how many were expected and how many were yielded;
  * more than k: ref k holds that error, it is never only logged;
  * an exception after n < k yields: refs n+1..k hold the TaskError;
  * an exception after exactly k yields: the k values stand, the error is recorded on the
    task (``pygen.state.list_tasks``) and printed on the driver's stderr.

Generators report what happened to them with files under ``tmp_path`` (a deterministic
signal), never only with sleeps.
"""
from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import numpy as np
import pytest

import pygen
from pygen.exceptions import TaskCancelledError, TaskError, WorkerCrashedError

from conftest import store_empty, wait_until

pytestmark = pytest.mark.usefixtures("session")

MiB = 2**20


# -- helpers ------------------------------------------------------------------------------

def touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def wait_file(path, timeout: float = 20.0) -> bool:
    return wait_until(lambda: os.path.exists(path), timeout, 0.002)


def is_ready(ref, timeout: float = 0.0) -> bool:
    ready, _ = pygen.wait([ref], timeout=timeout)
    return bool(ready)


def error_of(ref, timeout: float = 30.0) -> BaseException:
    with pytest.raises(Exception) as info:
        pygen.get(ref, timeout=timeout)
    return info.value


def numbers_in(text: str) -> set:
    return {int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", text)}


def task_entry(name: str) -> "dict | None":
    entries = [t for t in pygen.state.list_tasks() if t["name"] == name]
    return entries[-1] if entries else None


class Boom(Exception):
    pass


# -- remote functions -----------------------------------------------------------------------

@pygen.remote
def count_up(n):
    for i in range(n):
        yield i


@pygen.remote
def count_then_raise(n):
    for i in range(n):
        yield i
    raise Boom(f"boom after {n}")


@pygen.remote
def stamp(value):
    """A dependent task: its argument and when it ran (CLOCK_MONOTONIC is system-wide)."""
    return value, time.monotonic()


# -- values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 5])
def test_generator_yielding_k_values_fills_k_refs(k):
    out = count_up.options(num_returns=k).remote(k)
    if k == 1:
        assert isinstance(out, pygen.ObjectRef)
        assert pygen.get(out, timeout=30) == 0
    else:
        assert isinstance(out, list) and len(out) == k
        assert all(isinstance(r, pygen.ObjectRef) for r in out)
        assert pygen.get(out, timeout=30) == list(range(k))


def test_num_returns_in_decorator_with_generator():
    @pygen.remote(num_returns=3)
    def three():
        yield "a"
        yield "b"
        yield "c"

    refs = three.remote()
    assert pygen.get(refs, timeout=30) == ["a", "b", "c"]


def test_async_generator_with_num_returns():
    @pygen.remote(num_returns=3)
    async def three():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield i * 10

    assert pygen.get(three.remote(), timeout=30) == [0, 10, 20]


def test_large_yielded_values_live_in_the_arena_and_are_freed():
    @pygen.remote(num_returns=3)
    def big():
        for i in range(3):
            yield np.full(4 * MiB // 8, i, dtype=np.float64)

    assert store_empty()
    refs = big.remote()
    arrays = pygen.get(refs, timeout=30)
    assert [float(a[0]) for a in arrays] == [0.0, 1.0, 2.0]
    assert all(a.nbytes == 4 * MiB for a in arrays)
    assert all(not a.flags.writeable for a in arrays)  # zero-copy views of the arena
    stats = pygen.state.store_stats()
    assert stats["objects"] >= 3 and stats["used"] >= 12 * MiB
    del refs, arrays
    assert store_empty()


def test_each_yield_is_stored_as_soon_as_it_is_yielded(tmp_path):
    """Item 1 is readable while the generator is still paused after it."""
    release = str(tmp_path / "release")

    @pygen.remote(num_returns=3)
    def gated(release):
        yield "first"
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield "second"
        yield "third"

    refs = gated.remote(release)
    try:
        assert pygen.get(refs[0], timeout=20) == "first"
        assert not is_ready(refs[1]) and not is_ready(refs[2])
    finally:
        touch(release)
    assert pygen.get(refs, timeout=30) == ["first", "second", "third"]


# -- readiness: refs 1..k-1 at once, ref k at the end ------------------------------------------

def test_dependent_task_runs_before_the_generator_ends():
    """A task on ref 1 starts and finishes while the generator sleeps after its first yield."""
    @pygen.remote(num_returns=2)
    def slow_pair():
        yield "first"
        time.sleep(1.5)
        yield ("second", time.monotonic())

    first, second = slow_pair.remote()
    dependent = stamp.remote(first)
    value, ran_at = pygen.get(dependent, timeout=30)
    assert value == "first"
    assert not is_ready(second), "the dependent task should have finished before the end"
    second_value, yielded_at = pygen.get(second, timeout=30)
    assert second_value == "second"
    assert ran_at < yielded_at - 1.0, (ran_at, yielded_at)


def test_ref_k_is_ready_only_when_the_generator_has_finished(tmp_path):
    resumed = str(tmp_path / "resumed")

    @pygen.remote(num_returns=2)
    def lingering(resumed):
        yield 1
        yield 2
        touch(resumed)      # runs when the generator is resumed after its k-th yield
        time.sleep(1.5)     # ... and only after this is it known that no 3rd value follows

    r1, r2 = lingering.remote(resumed)
    assert wait_file(resumed)
    assert not is_ready(r2), "ref k must wait for the end of the generator"
    assert is_ready(r1, timeout=1.0), "ref 1 must be ready at once"
    assert not is_ready(r2)
    assert pygen.get(r2, timeout=30) == 2
    assert pygen.get(r1) == 1


def test_refs_before_k_ready_while_the_generator_is_blocked_after_fast_yields(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote(num_returns=4)
    def three_then_wait(release):
        for i in range(3):
            yield i
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield 3

    refs = three_then_wait.remote(release)
    try:
        ready, not_ready = pygen.wait(refs, num_returns=3, timeout=20)
        assert ready == refs[:3] and not_ready == refs[3:]
        assert pygen.get(refs[:3]) == [0, 1, 2]
        assert not is_ready(refs[3], timeout=0.1)
    finally:
        touch(release)
    assert pygen.get(refs[3], timeout=30) == 3


# -- too few / too many values -----------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(5, 2), (3, 0), (1, 0), (2, 1)])
def test_fewer_values_than_num_returns(k, n):
    refs = count_up.options(num_returns=k).remote(n)
    refs = refs if isinstance(refs, list) else [refs]
    assert pygen.get(refs[:n], timeout=30) == list(range(n))
    for ref in refs[n:]:
        err = error_of(ref)
        assert isinstance(err, TaskError) and isinstance(err, ValueError)
        assert isinstance(err.cause, ValueError)
        # the message names how many were expected and how many were yielded
        assert {k, n} <= numbers_in(str(err.cause)), str(err.cause)
        assert "count_up" in str(err)


@pytest.mark.parametrize("k,n", [(2, 3), (1, 2), (3, 10)])
def test_more_values_than_num_returns_puts_the_error_in_ref_k(k, n):
    refs = count_up.options(num_returns=k).remote(n)
    refs = refs if isinstance(refs, list) else [refs]
    assert pygen.get(refs[:k - 1], timeout=30) == list(range(k - 1))
    err = error_of(refs[k - 1])
    assert isinstance(err, TaskError) and isinstance(err.cause, ValueError)
    assert k in numbers_in(str(err.cause)) and "more" in str(err.cause).lower(), str(err.cause)
    entry = task_entry("count_up")
    assert entry is not None and entry["error"]


def test_more_values_stops_the_generator(tmp_path):
    """The generator is not run to its end once it yielded one value too many."""
    @pygen.remote(num_returns=2)
    def endless(d):
        i = 0
        try:
            while True:
                yield i
                i += 1
                touch(os.path.join(d, f"after-{i}"))
        finally:
            touch(os.path.join(d, "finally"))

    refs = endless.remote(str(tmp_path))
    assert pygen.get(refs[0], timeout=30) == 0
    assert isinstance(error_of(refs[1]).cause, ValueError)
    assert wait_file(str(tmp_path / "finally"), 10)
    assert sorted(os.listdir(tmp_path)) == ["after-1", "after-2", "finally"]


def test_more_values_with_large_items_leaks_nothing():
    @pygen.remote(num_returns=2)
    def big_extra():
        for i in range(3):
            yield np.full(MiB, i, dtype=np.uint8)

    assert store_empty()
    refs = big_extra.remote()
    assert int(pygen.get(refs[0], timeout=30)[0]) == 0
    assert isinstance(error_of(refs[1]).cause, ValueError)
    del refs
    assert store_empty()


# -- exceptions --------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(4, 2), (3, 0), (2, 1)])
def test_exception_after_n_yields_fills_the_remaining_refs(k, n):
    refs = count_then_raise.options(num_returns=k).remote(n)
    assert pygen.get(refs[:n], timeout=30) == list(range(n))
    errors = [error_of(ref) for ref in refs[n:]]
    assert len(errors) == k - n
    for err in errors:
        assert isinstance(err, TaskError) and isinstance(err, Boom)
        assert isinstance(err.cause, Boom) and f"boom after {n}" in str(err)
        assert "count_then_raise" in str(err)  # the remote traceback


def test_exception_after_exactly_k_yields_keeps_the_values_and_reports(caplog):
    """The seed's example ``generator.options(num_returns=2)``: both values stand, the
    error is recorded on the task and reported as a warning of the "pygen" logger (on the
    driver's stderr unless the program configures logging; never silent)."""
    @pygen.remote
    def raises_after_all():
        for i in range(2):
            yield i
        raise Exception("error after all values")

    ref1, ref2 = raises_after_all.options(num_returns=2).remote()
    assert pygen.get([ref1, ref2], timeout=30) == [0, 1]

    def recorded():
        entry = task_entry("raises_after_all")
        return entry is not None and entry["error"] and "Exception" in entry["error"]

    assert wait_until(recorded, 10), task_entry("raises_after_all")

    def reported():
        return any(r.name == "pygen" and r.levelname == "WARNING" and
                   "raises_after_all" in r.getMessage() and "Exception" in r.getMessage()
                   for r in caplog.records)

    assert wait_until(reported, 10), caplog.text


def test_exception_after_k_yields_of_a_single_return(capsys):
    @pygen.remote(num_returns=1)
    def one_then_raise():
        yield "only"
        raise Boom("late")

    assert pygen.get(one_then_raise.remote(), timeout=30) == "only"
    assert wait_until(lambda: (task_entry("one_then_raise") or {}).get("error"), 10)


def test_unpicklable_yield_is_an_error_in_the_remaining_refs():
    @pygen.remote(num_returns=3)
    def bad_value():
        yield 1
        yield threading.Lock()
        yield 3

    refs = bad_value.remote()
    assert pygen.get(refs[0], timeout=30) == 1
    for ref in refs[1:]:
        assert isinstance(error_of(ref), TaskError)


def test_generator_for_num_returns_k_that_returns_a_value_ignores_it():
    @pygen.remote(num_returns=2)
    def with_return():
        yield 1
        yield 2
        return "ignored"

    assert pygen.get(with_return.remote(), timeout=30) == [1, 2]


# -- retries -----------------------------------------------------------------------------------

def test_crash_after_some_yields_is_retried_and_every_ref_gets_its_value(tmp_path):
    marker = str(tmp_path / "crashed-once")

    @pygen.remote(num_returns=4, max_retries=1)
    def crash_once(marker):
        for i in range(4):
            if i == 2 and not os.path.exists(marker):
                touch(marker)
                os._exit(1)
            yield i * 100

    refs = crash_once.remote(marker)
    assert pygen.get(refs, timeout=30) == [0, 100, 200, 300]
    assert os.path.exists(marker)


def test_crash_without_retries_fills_the_remaining_refs_with_worker_crashed(tmp_path):
    @pygen.remote(num_returns=3, max_retries=0)
    def crash_after_one():
        yield "kept"
        os._exit(3)

    refs = crash_after_one.remote()
    assert pygen.get(refs[0], timeout=30) == "kept"
    for ref in refs[1:]:
        assert isinstance(error_of(ref), WorkerCrashedError)


def test_retry_exceptions_reruns_a_generator_that_raised(tmp_path):
    marker = str(tmp_path / "raised-once")

    @pygen.remote(num_returns=3, max_retries=2, retry_exceptions=[Boom])
    def flaky(marker):
        yield "a"
        if not os.path.exists(marker):
            touch(marker)
            raise Boom("first attempt")
        yield "b"
        yield "c"

    assert pygen.get(flaky.remote(marker), timeout=30) == ["a", "b", "c"]


def test_cancel_of_a_static_generator_fills_the_remaining_refs(tmp_path):
    """Cancelled between two yields: the refs it did not fill hold TaskCancelledError."""
    @pygen.remote(num_returns=3)
    def ticking(d):
        try:
            yield 1
            while True:
                time.sleep(0.01)
                yield 2
        finally:
            touch(os.path.join(d, "finally"))

    refs = ticking.remote(str(tmp_path))
    assert pygen.get(refs[0], timeout=30) == 1
    pygen.cancel(refs[0])
    assert isinstance(error_of(refs[2], timeout=10), TaskCancelledError)
    assert wait_file(str(tmp_path / "finally"), 10)
    # ref 2 was either yielded before the cancel or holds the cancellation
    try:
        assert pygen.get(refs[1], timeout=10) == 2
    except TaskCancelledError:
        pass


def test_cancel_of_a_static_generator_sleeping_in_time_sleep(tmp_path):
    @pygen.remote(num_returns=3)
    def stuck():
        yield 1
        time.sleep(60)
        yield 2
        yield 3

    refs = stuck.remote()
    assert pygen.get(refs[0], timeout=30) == 1
    pygen.cancel(refs[0])
    for ref in refs[1:]:
        assert isinstance(error_of(ref, timeout=10), TaskCancelledError)
