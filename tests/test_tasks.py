"""Remote functions (SPEC §2) and objects (§3): submission, results, arguments, nesting."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import time

import numpy as np
import pytest

import pygen
from pygen.exceptions import GetTimeoutError, WorkerCrashedError

from conftest import wait_until

pytestmark = pytest.mark.usefixtures("session")


@pygen.remote
def add(a, b):
    return a + b


@pygen.remote
def identity(x):
    return x


@pygen.remote
def pid():
    return os.getpid()


def test_remote_returns_ref_and_value():
    ref = add.remote(1, 2)
    assert isinstance(ref, pygen.ObjectRef)
    assert pygen.get(ref) == 3


def test_calling_directly_raises_type_error_naming_remote():
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)


def test_runs_in_another_process():
    assert pygen.get(pid.remote()) != os.getpid()


def test_kwargs_and_many_tasks():
    refs = [add.remote(i, b=i) for i in range(200)]
    assert pygen.get(refs) == [2 * i for i in range(200)]


@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_num_returns(k):
    @pygen.remote(num_returns=k)
    def many():
        if k == 0:
            return None
        if k == 1:
            return "one"
        return tuple(range(k))

    out = many.remote()
    if k == 0:
        assert out is None
    elif k == 1:
        assert pygen.get(out) == "one"
    else:
        assert isinstance(out, list) and len(out) == k
        assert pygen.get(out) == list(range(k))


def test_num_returns_mismatch_is_an_error_in_every_ref():
    @pygen.remote(num_returns=3)
    def two():
        return 1, 2

    refs = two.remote()
    for ref in refs:
        with pytest.raises(ValueError, match="num_returns=3"):
            pygen.get(ref)


def returns_a_generator(marker):
    def produce():
        open(marker, "w").close()  # runs only if someone iterates the generator
        yield 7
    return produce()


@pytest.mark.parametrize("num_returns", [1, 2])
def test_plain_function_returning_a_generator_is_an_error_never_iterated(tmp_path, num_returns):
    """SPEC §6: a plain function is one value; a generator object cannot be pickled."""
    marker = str(tmp_path / "iterated")
    plain = pygen.remote(num_returns=num_returns)(returns_a_generator)
    refs = plain.remote(marker)
    for ref in refs if num_returns > 1 else [refs]:
        with pytest.raises(TypeError) as info:
            pygen.get(ref, timeout=30)
        text = str(info.value)
        assert "returns_a_generator" in text and "plain function" in text
        assert "generator" in text.splitlines()[0]
    assert not os.path.exists(marker)
    assert pygen.get(identity.remote(1), timeout=30) == 1  # the worker goes on


def test_generator_kinds_on_a_plain_function_are_refused_at_decoration():
    """SPEC §6: num_returns="dynamic"/"streaming" on a plain function is a TypeError
    where it is written, not an error found when the task runs."""
    def plain():
        return [1, 2]

    for kind in ("dynamic", "streaming"):
        with pytest.raises(TypeError, match=f"num_returns={kind!r}.*plain"):
            pygen.remote(num_returns=kind)(plain)
        with pytest.raises(TypeError, match=f"num_returns={kind!r}.*plain"):
            identity.options(num_returns=kind)
    # generator functions, sync and async, and a callable whose __call__ is one, accept both
    def gen():
        yield 1

    async def agen():
        yield 1

    class Callable:
        def __call__(self):
            yield 1

    for fn in (gen, agen, Callable()):
        for kind in ("dynamic", "streaming"):
            pygen.remote(num_returns=kind)(fn)
    assert [pygen.get(r) for r in pygen.remote(Callable()).remote()] == [1]


def test_options_override_and_keep_the_original():
    @pygen.remote(num_returns=2)
    def pair():
        return 1, 2

    assert pygen.get(pair.remote()) == [1, 2]
    assert pygen.get(pair.options(num_returns=1).remote()) == (1, 2)
    assert pygen.get(pair.remote()) == [1, 2]


@pytest.mark.parametrize("opts,exc,word", [
    (dict(num_returns=-1), ValueError, "num_returns"),
    (dict(num_returns="many"), ValueError, "num_returns"),
    (dict(num_returns=1.5), TypeError, "num_returns"),
    (dict(max_retries="3"), TypeError, "max_retries"),
    (dict(max_retries=-2), ValueError, "max_retries"),
    (dict(num_cpus=-1), ValueError, "num_cpus"),
    (dict(num_cpus="1"), TypeError, "num_cpus"),
    (dict(num_cpus=float("nan")), ValueError, "num_cpus"),
    (dict(num_cpus=float("inf")), ValueError, "num_cpus"),
    (dict(num_cpus=float("-inf")), ValueError, "num_cpus"),
    (dict(memory=float("nan")), TypeError, "memory"),
    (dict(memory=float("inf")), TypeError, "memory"),
    (dict(generator_backpressure=float("inf")), TypeError, "generator_backpressure"),
    (dict(max_retries=float("nan")), TypeError, "max_retries"),
    (dict(retry_exceptions=[1]), TypeError, "retry_exceptions"),
    (dict(retry_exceptions="yes"), TypeError, "retry_exceptions"),
    (dict(memory=0), ValueError, "memory"),
    (dict(generator_backpressure=0), ValueError, "generator_backpressure"),
    (dict(num_gpus=1), ValueError, "num_gpus"),
])
def test_bad_options_fail_at_decoration_and_options(opts, exc, word):
    with pytest.raises(exc, match=word):
        pygen.remote(**opts)(lambda: 1)
    with pytest.raises(exc, match=word):
        add.options(**opts)


def test_remote_rejects_positional_options():
    with pytest.raises(TypeError):
        pygen.remote(1, 2)


def test_top_level_ref_arguments_are_resolved():
    a = pygen.put(10)
    b = add.remote(a, 5)
    c = add.remote(b, a)
    assert pygen.get(c) == 25


def test_nested_refs_stay_refs():
    inner = pygen.put("inner value")

    @pygen.remote
    def look(container):
        ref = container["ref"]
        return type(ref).__name__, pygen.get(ref)

    assert pygen.get(look.remote({"ref": inner})) == ("ObjectRef", "inner value")


def test_task_waits_for_its_argument_task():
    @pygen.remote
    def slow(x):
        time.sleep(0.3)
        return x

    assert pygen.get(add.remote(slow.remote(1), slow.remote(2))) == 3


def test_large_numpy_argument_reaches_task_read_only_and_zero_copy():
    arr = np.arange(2_000_000, dtype=np.float64)

    @pygen.remote
    def inspect_array(a):
        return a.flags.writeable, float(a.sum()), a.nbytes

    writeable, total, nbytes = pygen.get(inspect_array.remote(arr))
    assert not writeable
    assert total == float(arr.sum()) and nbytes == arr.nbytes
    ref = pygen.put(arr)
    writeable, total, _ = pygen.get(inspect_array.remote(ref))
    assert not writeable and total == float(arr.sum())


def test_get_of_large_array_is_a_read_only_view():
    arr = np.ones(1_000_000)
    out = pygen.get(pygen.put(arr))
    assert not out.flags.writeable
    assert np.array_equal(out, arr)
    with pytest.raises(ValueError):
        out[0] = 5


def test_tasks_submit_tasks_and_get_inside_workers():
    @pygen.remote
    def fan_out(n):
        refs = [add.remote(i, i) for i in range(n)]
        ready, _ = pygen.wait(refs, num_returns=n, timeout=30)
        return sum(pygen.get(refs)), len(ready)

    assert pygen.get(fan_out.remote(10)) == (90, 10)


def test_put_inside_worker():
    @pygen.remote
    def make():
        return pygen.put(np.arange(100_000))

    inner = pygen.get(make.remote())
    assert isinstance(inner, pygen.ObjectRef)
    assert pygen.get(inner).sum() == np.arange(100_000).sum()


@pygen.remote
def after_release(release, value):
    """Returns ``value`` once the file ``release`` exists (polls: never blocks in pygen)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.002)
    return value


def test_get_timeout(tmp_path):
    release = str(tmp_path / "release")
    ref = after_release.remote(release, 1)
    t = time.monotonic()
    with pytest.raises(GetTimeoutError):
        pygen.get(ref, timeout=0.2)  # the value cannot exist before the release
    assert time.monotonic() - t >= 0.2  # it waited its timeout (a lower bound)
    assert isinstance(GetTimeoutError("x"), TimeoutError)
    open(release, "w").close()
    assert pygen.get(ref, timeout=30) == 1


def test_timeout_nan_or_negative_is_refused_and_infinite_waits_for_ever():
    @pygen.remote
    def one_item():
        yield 1

    ref = pygen.put(1)
    gen = one_item.remote()
    calls = {"get": lambda t: pygen.get(ref, timeout=t),
             "get list": lambda t: pygen.get([ref], timeout=t),
             "wait": lambda t: pygen.wait([ref], timeout=t),
             "next_ready": lambda t: gen.next_ready(t)}
    for name, call in calls.items():
        for bad in (float("nan"), -1.0, float("-inf")):
            with pytest.raises(ValueError, match="timeout"):
                call(bad)
        with pytest.raises(TypeError, match="timeout"):
            call("1")
    assert pygen.get(ref, timeout=float("inf")) == 1
    assert pygen.wait([ref], timeout=float("inf")) == ([ref], [])
    assert pygen.get(gen.next_ready(float("inf")), timeout=float("inf")) == 1


def test_get_rejects_non_refs():
    with pytest.raises(TypeError):
        pygen.get(1)
    with pytest.raises(TypeError, match="index 1"):
        pygen.get([pygen.put(1), 2])


def test_put_of_a_ref_is_a_type_error():
    with pytest.raises(TypeError):
        pygen.put(pygen.put(1))


def test_wait_semantics(tmp_path):
    release = str(tmp_path / "release")
    slow, fast = after_release.remote(release, "slow"), identity.remote("fast")
    ready, not_ready = pygen.wait([slow, fast], num_returns=1, timeout=30)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = pygen.wait([slow, fast], num_returns=2, timeout=0.1)
    assert ready == [fast] and not_ready == [slow]  # the timeout: what is ready so far
    open(release, "w").close()
    ready, not_ready = pygen.wait([slow, fast], num_returns=2, timeout=30)
    assert ready == [slow, fast] and not_ready == []  # input order


def test_wait_errors():
    ref = pygen.put(1)
    with pytest.raises(ValueError):
        pygen.wait([ref, ref])
    with pytest.raises(ValueError):
        pygen.wait([ref], num_returns=2)
    with pytest.raises(TypeError):
        pygen.wait(ref)
    with pytest.raises(TypeError):
        pygen.wait([1])


def test_object_ref_identity():
    ref = pygen.put(1)
    same = pickle.loads(pickle.dumps(ref))
    assert ref == same and hash(ref) == hash(same)
    assert ref != pygen.put(1)
    assert len(ref.hex()) == 40 and ref.binary() == bytes.fromhex(ref.hex())
    assert ref.hex() in repr(ref)
    assert {ref: 1}[same] == 1


def test_await_ref_and_future():
    ref = add.remote(2, 3)
    fut = ref.future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=30) == 5

    async def main():
        return await add.remote(4, 5)

    assert asyncio.run(main()) == 9


def test_future_carries_the_error():
    @pygen.remote
    def boom():
        raise KeyError("k")

    with pytest.raises(KeyError):
        boom.remote().future().result(timeout=30)


def test_async_function_task():
    @pygen.remote
    async def coro(x):
        await asyncio.sleep(0.01)
        return x * 2

    assert pygen.get(coro.remote(21)) == 42


def test_nested_get_with_one_cpu_does_not_deadlock(fresh_one_cpu):
    @pygen.remote
    def leaf(x):
        return x + 1

    @pygen.remote
    def parent(x):
        return pygen.get(leaf.remote(x)) * 10

    @pygen.remote
    def grandparent(x):
        return pygen.get(parent.remote(x)) + 1

    assert pygen.get(grandparent.remote(1), timeout=60) == 21


@pytest.fixture
def fresh_one_cpu():
    pygen.shutdown()
    pygen.init(num_cpus=1, object_store_memory=64 * 2**20)
    yield
    pygen.shutdown()
    pygen.init(num_cpus=2, object_store_memory=256 * 2**20)


def test_worker_killed_while_blocked_in_get_leaves_the_cpu_count_right(fresh_one_cpu, tmp_path):
    """A worker blocked in get has lent its CPU; killed there, it must not give it back a
    second time (two tasks would then run at once on num_cpus=1), nor keep it."""
    import signal

    pidfile = str(tmp_path / "pid")

    @pygen.remote
    def slow():
        time.sleep(0.5)
        return 1

    @pygen.remote(max_retries=0)
    def parent(pidfile):
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
        return pygen.get(slow.remote())

    @pygen.remote
    def nap():
        t = time.monotonic()
        time.sleep(0.3)
        return t, time.monotonic()

    ref = parent.remote(pidfile)
    node = pygen.state._node()
    assert wait_until(lambda: any(w.blocked for w in node.workers.values()))
    os.kill(int(open(pidfile).read()), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError):
        pygen.get(ref, timeout=30)
    assert wait_until(lambda: node.free_cpus == 1)   # once slow() is done too
    spans = sorted(pygen.get([nap.remote() for _ in range(3)], timeout=30))
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans   # one at a time
    assert node.free_cpus == 1
