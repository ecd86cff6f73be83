"""Memory limits (SPEC §7, §2 ``memory=``): a worker whose private resident memory passes its
limit is killed and its task fails with OutOfMemoryError naming the task, the limit and the
peak; arena pages never count; OOM kills count against ``max_retries``.
"""
from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

import pygen
from pygen.exceptions import OutOfMemoryError, TaskError, WorkerCrashedError

from conftest import MiB, child_pids, store_empty, wait_until

LIMIT = 100 * MiB
pytestmark = pytest.mark.usefixtures("session")


def attempt(directory: str) -> int:
    n = len(os.listdir(directory)) + 1
    open(os.path.join(directory, f"attempt-{n}"), "w").close()
    return n


@pygen.remote
def hog(nbytes, hold=60.0):
    """Allocate ``nbytes`` of private memory (touched) and keep it for ``hold`` seconds
    (by default longer than the test waits: one that is over its limit ends only when the
    monitor kills it, however loaded the machine)."""
    block = np.ones(nbytes // 8)
    time.sleep(hold)
    return int(block[-1])


@pygen.remote
def getpid():
    return os.getpid()


def mib_numbers(text: str) -> list:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)\s*MiB", text)]


def test_memory_option_kills_the_task_with_out_of_memory_error():
    ref = hog.options(memory=LIMIT, max_retries=0).remote(300 * MiB)
    with pytest.raises(OutOfMemoryError) as info:  # (left alone, it would return 1)
        pygen.get(ref, timeout=30)
    err = info.value
    assert isinstance(err, WorkerCrashedError) and not isinstance(err, TaskError)
    text = str(err)
    assert "hog" in text  # the task
    peak, limit = mib_numbers(text)
    assert limit == 100, text
    assert 100 < peak <= 400, text  # the peak shown is above the limit, never rounded onto it


def test_task_under_its_limit_runs():
    assert pygen.get(hog.options(memory=LIMIT).remote(20 * MiB, 0.2), timeout=30) == 1


def test_oom_kill_counts_against_max_retries(tmp_path):
    @pygen.remote(memory=LIMIT, max_retries=2)
    def always_too_big(d):
        attempt(d)
        block = np.ones(300 * MiB // 8)
        time.sleep(60)  # killed long before, or the test fails
        return int(block[0])

    with pytest.raises(OutOfMemoryError):
        pygen.get(always_too_big.remote(str(tmp_path)), timeout=60)
    assert len(os.listdir(tmp_path)) == 3  # the first attempt and two retries


def test_oom_then_success_on_retry(tmp_path):
    @pygen.remote(memory=LIMIT, max_retries=1)
    def too_big_once(d):
        n = attempt(d)
        size = 300 * MiB if n == 1 else 10 * MiB
        block = np.ones(size // 8)
        time.sleep(60 if n == 1 else 0)  # the first attempt ends only by the kill
        return n, int(block[0])

    assert pygen.get(too_big_once.remote(str(tmp_path)), timeout=60) == (2, 1)


def test_worker_is_replaced_after_an_oom_kill(tmp_path):
    @pygen.remote(memory=LIMIT, max_retries=0)
    def tell_and_hog(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        block = np.ones(300 * MiB // 8)
        time.sleep(60)  # killed long before, or the test fails
        return int(block[0])

    path = str(tmp_path / "pid")
    with pytest.raises(OutOfMemoryError):
        pygen.get(tell_and_hog.remote(path), timeout=30)
    dead = int(open(path).read())
    assert wait_until(lambda: dead not in child_pids() and len(child_pids()) >= 2)
    assert dead not in pygen.get([getpid.remote() for _ in range(10)], timeout=30)


def test_limit_applies_only_while_its_task_runs():
    with pytest.raises(OutOfMemoryError):
        pygen.get(hog.options(memory=LIMIT, max_retries=0).remote(300 * MiB), timeout=30)
    # the next tasks, with no limit, may use more
    assert pygen.get([hog.remote(300 * MiB, 0.5), hog.remote(300 * MiB, 0.5)],
                     timeout=30) == [1, 1]


def test_arena_pages_do_not_count():
    big = pygen.put(np.ones(200 * MiB // 8))

    @pygen.remote(memory=LIMIT, max_retries=0)
    def read_big(arr):
        total = float(arr.sum())  # reads every page of the 200 MB object in the arena
        time.sleep(0.5)           # give the monitor time to look
        return total

    assert pygen.get(read_big.remote(big), timeout=60) == 200 * MiB // 8
    del big
    assert store_empty()


def test_oom_error_of_a_nested_task_reaches_the_caller():
    @pygen.remote
    def parent():
        try:
            pygen.get(hog.options(memory=LIMIT, max_retries=0).remote(300 * MiB))
        except OutOfMemoryError as exc:
            return f"child OOM: {type(exc).__name__}"
        return "no error"

    assert pygen.get(parent.remote(), timeout=60) == "child OOM: OutOfMemoryError"


def test_returning_large_list_fails_generator_version_succeeds():
    """The seed's pattern: under a limit, a function that returns a list of large arrays
    fails; the generator version, whose worker drops each value once stored, succeeds."""
    @pygen.remote(memory=150 * MiB, max_retries=0)
    def as_list(n):
        out = [np.full(40 * MiB // 8, i) for i in range(n)]
        time.sleep(60)  # over its limit: it ends only by the kill
        return out

    @pygen.remote(memory=150 * MiB, max_retries=0, num_returns="streaming")
    def as_generator(n):
        for i in range(n):
            yield np.full(40 * MiB // 8, i)
            time.sleep(0.1)

    with pytest.raises(OutOfMemoryError):
        pygen.get(as_list.remote(6), timeout=60)
    values = []
    for ref in as_generator.remote(6):
        arr = pygen.get(ref, timeout=60)
        values.append(int(arr[0]))
        del arr, ref
    assert values == list(range(6))
    assert store_empty()


# -- worker_memory_limit (init) -------------------------------------------------------------------

def test_worker_memory_limit_kills_tasks_over_it(fresh):
    fresh(num_cpus=1, worker_memory_limit=LIMIT)
    with pytest.raises(OutOfMemoryError) as info:
        pygen.get(hog.options(max_retries=0).remote(300 * MiB), timeout=30)
    text = str(info.value)
    assert "hog" in text
    assert 100 in mib_numbers(text)
    # small tasks run, and the worker was replaced
    assert pygen.get(hog.remote(10 * MiB, 0.1), timeout=30) == 1


def test_worker_memory_limit_counts_against_retries(fresh, tmp_path):
    fresh(num_cpus=1, worker_memory_limit=LIMIT)

    @pygen.remote(max_retries=1)
    def too_big(d):
        attempt(d)
        block = np.ones(300 * MiB // 8)
        time.sleep(60)  # killed long before, or the test fails
        return int(block[0])

    with pytest.raises(OutOfMemoryError):
        pygen.get(too_big.remote(str(tmp_path)), timeout=60)
    assert len(os.listdir(tmp_path)) == 2


def test_task_memory_option_overrides_worker_memory_limit(fresh):
    fresh(num_cpus=1, worker_memory_limit=LIMIT)
    assert pygen.get(hog.options(memory=600 * MiB).remote(300 * MiB, 0.5), timeout=30) == 1


# -- the limit's boundary: 1.3x is killed, 0.7x runs ----------------------------------------------

BOUNDARY_LIMIT = 200 * MiB


def rss_anon_self() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pygen.remote
def grow_to(total, started, release):
    """Grow this worker's private memory (RssAnon, the interpreter's own included) to about
    ``total`` bytes, say so in ``started`` and hold it until ``release`` exists."""
    block = np.ones(max(0, total - rss_anon_self()) // 8)  # every page touched
    have = rss_anon_self()
    with open(started + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {have}")
    os.replace(started + ".tmp", started)
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return have, int(block[-1])


def start_with_limit(fresh, how: str):
    """A fresh runtime (its worker has no peak yet) and the task with the boundary limit."""
    if how == "memory=":
        fresh(num_cpus=1)
        return grow_to.options(memory=BOUNDARY_LIMIT, max_retries=0)
    fresh(num_cpus=1, worker_memory_limit=BOUNDARY_LIMIT)
    return grow_to.options(max_retries=0)


@pytest.mark.parametrize("how", ["memory=", "worker_memory_limit="])
def test_a_third_over_the_limit_is_killed(fresh, tmp_path, how):
    """1.3x the limit: killed, and the peak it names is over the limit, under 1.3x plus
    what a 50 ms poll may let through.  (A monitor that allowed 2x would let it live.)"""
    task = start_with_limit(fresh, how)
    target = int(1.3 * BOUNDARY_LIMIT)
    ref = task.remote(target, str(tmp_path / "started"), str(tmp_path / "never"))
    with pytest.raises(OutOfMemoryError) as info:
        pygen.get(ref, timeout=60)
    peak, limit = mib_numbers(str(info.value))
    assert limit == BOUNDARY_LIMIT / MiB
    assert BOUNDARY_LIMIT / MiB < peak <= target / MiB + 60, str(info.value)


@pytest.mark.parametrize("how", ["memory=", "worker_memory_limit="])
def test_seven_tenths_of_the_limit_runs(fresh, tmp_path, how):
    """0.7x the limit, held until the monitor has seen it (its recorded peak reaches what
    the task holds): the task is not killed.  (A monitor that killed at half would.)"""
    task = start_with_limit(fresh, how)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    ref = task.remote(int(0.7 * BOUNDARY_LIMIT), started, release)
    assert wait_until(lambda: os.path.exists(started))
    pid, have = (int(x) for x in open(started).read().split())
    assert 0.6 * BOUNDARY_LIMIT < have < 0.8 * BOUNDARY_LIMIT, have
    node = pygen.state._node()
    worker = next(w for w in node.workers.values() if w.pid == pid)
    try:
        assert wait_until(lambda: worker.peak_rss >= 0.95 * have), (worker.peak_rss, have)
    finally:
        open(release, "w").close()
    held, one = pygen.get(ref, timeout=60)
    assert one == 1 and held == have
    assert pid in child_pids()  # the same worker, alive
