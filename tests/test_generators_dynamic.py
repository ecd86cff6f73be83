"""Generators with ``num_returns="dynamic"`` (SPEC §4.2).

  * ``f.remote()`` returns one ``ObjectRef``; when the task finishes its value is a
    ``DynamicObjectRefGenerator``: an iterable of item refs with ``len()``, iterable any
    number of times;
  * it is picklable; it and the ref to it can be passed to other tasks (a ref resolves to
    the generator);
  * if the generator raises, the items yielded so far stay readable and one extra final
    ref holds the error.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import time

import numpy as np
import pytest

import pygen
from pygen import DynamicObjectRefGenerator
from pygen.exceptions import TaskError, WorkerCrashedError

from conftest import store_empty, wait_until

pytestmark = pytest.mark.usefixtures("session")

MiB = 2**20


def touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def wait_file(path, timeout: float = 20.0) -> bool:
    return wait_until(lambda: os.path.exists(path), timeout, 0.002)


def is_ready(ref, timeout: float = 0.0) -> bool:
    ready, _ = pygen.wait([ref], timeout=timeout)
    return bool(ready)


class Boom(Exception):
    pass


@pygen.remote(num_returns="dynamic")
def split(array, chunk):
    while len(array) > 0:
        yield array[:chunk]
        array = array[chunk:]


@pygen.remote(num_returns="dynamic")
def count_up(n):
    for i in range(n):
        yield i


@pygen.remote
def total(gen):
    """Receives a DynamicObjectRefGenerator (directly or through its ref)."""
    assert isinstance(gen, DynamicObjectRefGenerator), type(gen)
    return len(gen), sum(int(pygen.get(r).sum()) for r in gen)


# -- the value ---------------------------------------------------------------------------

def test_remote_returns_one_ref_whose_value_is_a_dynamic_generator():
    ref = count_up.remote(5)
    assert isinstance(ref, pygen.ObjectRef)
    gen = pygen.get(ref, timeout=30)
    assert isinstance(gen, DynamicObjectRefGenerator)
    assert len(gen) == 5
    refs = list(gen)
    assert all(isinstance(r, pygen.ObjectRef) for r in refs)
    assert pygen.get(refs) == [0, 1, 2, 3, 4]


def test_options_dynamic_on_a_plain_generator_function():
    @pygen.remote
    def letters():
        yield from "abc"

    gen = pygen.get(letters.options(num_returns="dynamic").remote(), timeout=30)
    assert pygen.get(list(gen)) == ["a", "b", "c"]


def test_iterable_any_number_of_times():
    gen = pygen.get(count_up.remote(4), timeout=30)
    first = list(gen)
    second = list(gen)
    assert first == second and len(first) == 4
    assert pygen.get([r for r in gen]) == [0, 1, 2, 3]
    it1, it2 = iter(gen), iter(gen)
    assert next(it1) == next(it2) == first[0]


def test_empty_dynamic_generator():
    gen = pygen.get(count_up.remote(0), timeout=30)
    assert len(gen) == 0 and list(gen) == []


def test_async_generator_dynamic():
    @pygen.remote(num_returns="dynamic")
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0.001)
            yield i * i

    gen = pygen.get(agen.remote(4), timeout=30)
    assert pygen.get(list(gen)) == [0, 1, 4, 9]


def test_ref_is_ready_only_when_the_task_finishes(tmp_path):
    release = str(tmp_path / "release")
    started = str(tmp_path / "yielded")

    @pygen.remote(num_returns="dynamic")
    def gated(started, release):
        yield 1
        touch(started)
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
        yield 2

    ref = gated.remote(started, release)
    try:
        assert wait_file(started)
        assert not is_ready(ref, timeout=0.2)
    finally:
        touch(release)
    assert pygen.get(list(pygen.get(ref, timeout=30))) == [1, 2]


def test_seed_split_example():
    array = np.zeros(12_345)
    array_ref = pygen.put(array)
    gen = pygen.get(split.remote(array_ref, 1000), timeout=30)
    assert len(gen) == 13
    chunks = [pygen.get(r) for r in gen]
    assert all(len(c) <= 1000 for c in chunks)
    assert sum(len(c) for c in chunks) == len(array)


def test_non_generator_function_with_dynamic_is_refused_at_decoration():
    def not_a_generator():
        return [1, 2]

    with pytest.raises(TypeError, match="plain function"):
        pygen.remote(num_returns="dynamic")(not_a_generator)
    with pytest.raises(TypeError, match="plain function"):
        pygen.remote(not_a_generator).options(num_returns="dynamic")


# -- pickling and passing -------------------------------------------------------------------

def test_picklable_and_the_copy_reads_the_same_items():
    gen = pygen.get(count_up.remote(3), timeout=30)
    copy = pickle.loads(pickle.dumps(gen))
    assert isinstance(copy, DynamicObjectRefGenerator)
    assert len(copy) == 3 and list(copy) == list(gen)
    del gen
    assert pygen.get(list(copy)) == [0, 1, 2]  # the copy keeps the items alive


def test_pass_the_ref_to_a_task_which_gets_the_generator():
    ref = split.remote(pygen.put(np.ones(5000, dtype=np.int64)), 1000)
    assert pygen.get(total.remote(ref), timeout=30) == (5, 5000)


def test_pass_the_generator_itself_to_a_task():
    ref = split.remote(pygen.put(np.ones(2500, dtype=np.int64)), 1000)
    gen = pygen.get(ref, timeout=30)
    del ref
    assert pygen.get(total.remote(gen), timeout=30) == (3, 2500)


def test_generator_nested_in_a_container_argument():
    gen = pygen.get(split.remote(np.ones(3000, dtype=np.int64), 1000), timeout=30)

    @pygen.remote
    def inside(box):
        g = box["gen"]
        return [int(pygen.get(r).sum()) for r in g]

    assert pygen.get(inside.remote({"gen": gen}), timeout=30) == [1000, 1000, 1000]


def test_task_returns_items_of_a_dynamic_generator_it_received():
    @pygen.remote
    def first_ref(gen):
        return [next(iter(gen))]

    gen = pygen.get(count_up.remote(3), timeout=30)
    [inner] = pygen.get(first_ref.remote(gen), timeout=30)
    assert pygen.get(inner) == 0


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 2])
def test_exception_keeps_the_items_and_adds_one_final_error_ref(n):
    @pygen.remote(num_returns="dynamic")
    def raises_after(n):
        for i in range(n):
            yield i
        raise Boom("dynamic boom")

    gen = pygen.get(raises_after.remote(n), timeout=30)
    refs = list(gen)
    assert len(gen) == n + 1 and len(refs) == n + 1
    assert pygen.get(refs[:n]) == list(range(n))
    with pytest.raises(Boom) as info:
        pygen.get(refs[n])
    assert isinstance(info.value, TaskError) and isinstance(info.value.cause, Boom)
    assert "dynamic boom" in str(info.value) and "raises_after" in str(info.value)


def test_seed_error_example_three_refs():
    @pygen.remote
    def generator():
        for i in range(2):
            yield i
        raise Exception("error")

    ref1, ref2, ref3 = pygen.get(generator.options(num_returns="dynamic").remote(), timeout=30)
    assert pygen.get([ref1, ref2]) == [0, 1]
    with pytest.raises(Exception, match="error"):
        pygen.get(ref3)


def test_worker_crash_after_yields_never_hangs(tmp_path):
    """A system failure: the items so far stay readable and the error is final, or the
    whole ref holds it; either way nothing waits forever."""
    @pygen.remote(num_returns="dynamic", max_retries=0)
    def crashes():
        yield "a"
        yield "b"
        os._exit(7)

    ref = crashes.remote()
    try:
        gen = pygen.get(ref, timeout=30)
    except WorkerCrashedError:
        return
    refs = list(gen)
    assert pygen.get(refs[:-1]) == ["a", "b"][:len(refs) - 1]
    with pytest.raises(WorkerCrashedError):
        pygen.get(refs[-1])


def test_crash_is_retried_and_the_generator_has_each_item_once(tmp_path):
    marker = str(tmp_path / "crashed")

    @pygen.remote(num_returns="dynamic", max_retries=1)
    def crash_once(marker):
        for i in range(5):
            if i == 3 and not os.path.exists(marker):
                touch(marker)
                os._exit(1)
            yield i

    gen = pygen.get(crash_once.remote(marker), timeout=30)
    assert os.path.exists(marker)
    assert pygen.get(list(gen)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("again", [2, 3, 4])
def test_retry_that_yields_fewer_items_is_consistent(tmp_path, again):
    """Nothing of a dynamic generator is handed out before its task ends, so a retry can
    never contradict what a caller saw: the value holds exactly the new attempt's items,
    however many (attempt 1 yielded 3 and died), and no InconsistentRetryError."""
    from conftest import attempt

    @pygen.remote(num_returns="dynamic", max_retries=1)
    def flaky(d, again):
        a = attempt(d)
        for i in range(3 if a == 1 else again):
            yield (a, i)
        if a == 1:
            os._exit(1)

    gen = pygen.get(flaky.remote(str(tmp_path), again), timeout=30)
    assert pygen.get(list(gen), timeout=30) == [(2, i) for i in range(again)]


# -- memory -----------------------------------------------------------------------------------

def test_items_freed_when_the_ref_and_generator_are_gone():
    @pygen.remote(num_returns="dynamic")
    def big(n):
        for i in range(n):
            yield np.full(2 * MiB, i, dtype=np.uint8)

    assert store_empty()
    ref = big.remote(4)
    gen = pygen.get(ref, timeout=30)
    assert [int(pygen.get(r)[0]) for r in gen] == [0, 1, 2, 3]
    assert pygen.state.store_stats()["objects"] >= 4
    del gen
    assert not store_empty(0.3)  # the ref still holds the generator and its items
    item = list(pygen.get(ref))[2]
    del ref
    assert int(pygen.get(item)[0]) == 2  # a ref taken out of it is an ordinary ref
    assert not store_empty(0.2)
    del item
    assert store_empty()


def test_unread_dynamic_ref_frees_its_items():
    assert store_empty()
    ref = split.remote(np.ones(300_000), 100_000)
    pygen.wait([ref], timeout=30)
    assert pygen.state.store_stats()["objects"] >= 3
    del ref
    assert store_empty()
