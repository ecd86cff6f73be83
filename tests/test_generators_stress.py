"""Generator stress tests (issue 4, "How it is checked"), sized for a 2-core machine:

  * 100,000 tiny items from one generator;
  * 8 generators consumed at once through ``pygen.wait``;
  * a generator deleted half-way, 200 times over: the store ends empty;
  * a worker SIGKILLed mid-stream (twice) with ``max_retries=2``: every item is delivered
    exactly once and in order.

Each takes well under 30 s here.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import pygen
from pygen import ObjectRefGenerator

from conftest import store_empty, wait_until

pytestmark = [pytest.mark.usefixtures("session"), pytest.mark.timeout(120)]

T = 60


def touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


@pygen.remote
def count_up(n, delay=0.0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i
    return n


def test_one_hundred_thousand_tiny_items():
    n = 100_000
    t0 = time.monotonic()
    gen = count_up.remote(n)
    values = [pygen.get(ref) for ref in gen]
    elapsed = time.monotonic() - t0
    assert len(values) == n
    assert values == list(range(n))  # each exactly once, in order
    assert pygen.get(gen.completed(), timeout=T) == n
    assert elapsed < 30, elapsed
    del gen, values
    assert store_empty(10)


def test_twenty_thousand_tiny_items_consumed_in_a_task():
    @pygen.remote
    def total(gen):
        count = 0
        s = 0
        for ref in gen:
            s += pygen.get(ref)
            count += 1
        return count, s

    n = 20_000  # each next and get is a round trip to the node from a worker
    assert pygen.get(total.remote(count_up.remote(n)), timeout=T) == (n, n * (n - 1) // 2)
    assert store_empty(10)


def test_eight_generators_consumed_at_once_with_wait():
    gens = [count_up.remote(150 + 10 * k, 0.0005 * (1 + k % 3)) for k in range(8)]
    expected = {id(g): list(range(150 + 10 * k)) for k, g in enumerate(gens)}
    got = {id(g): [] for g in gens}
    unready = list(gens)
    deadline = time.monotonic() + T
    rounds = 0
    while unready:
        assert time.monotonic() < deadline, "the generators did not end"
        ready, unready = pygen.wait(unready, num_returns=1, timeout=30)
        assert ready, "wait timed out although some generator was going on"
        rounds += 1
        for gen in ready:
            assert isinstance(gen, ObjectRefGenerator)
            try:
                ref = gen.next_ready(0)  # ready: next does not block
            except StopIteration:
                continue
            got[id(gen)].append(pygen.get(ref, timeout=T))
            unready.append(gen)
    assert got == expected
    assert rounds >= sum(len(v) for v in expected.values())
    del gens, ready, unready, gen, ref
    assert store_empty(10)


def test_eight_large_item_generators_consumed_at_once_with_wait():
    @pygen.remote
    def chunks(k, n):
        for i in range(n):
            yield np.full(256 * 1024, k * 1000 + i, dtype=np.int32)

    gens = [chunks.remote(k, 40) for k in range(8)]
    seen = {k: [] for k in range(8)}
    index = {id(g): k for k, g in enumerate(gens)}
    unready = list(gens)
    deadline = time.monotonic() + T
    while unready:
        assert time.monotonic() < deadline
        ready, unready = pygen.wait(unready, num_returns=min(3, len(unready)), timeout=30)
        assert ready
        for gen in ready:
            try:
                ref = gen.next_ready(0)
            except StopIteration:
                continue
            arr = pygen.get(ref, timeout=T)
            seen[index[id(gen)]].append(int(arr[0]))
            del arr, ref
            unready.append(gen)
    for k in range(8):
        assert sorted(seen[k]) == [k * 1000 + i for i in range(40)]
    del gens, ready, unready, gen
    assert store_empty(10)


def test_generator_deleted_half_way_200_times_leaves_the_store_empty():
    @pygen.remote
    def producer(n):
        for i in range(n):
            yield np.full(32 * 1024, i, dtype=np.int64)  # 256 KiB: in the arena

    assert store_empty()
    kept = []
    for rep in range(200):
        gen = producer.remote(20)
        for i in range(10):
            ref = gen.next_ready(T)
            if rep % 50 == 0 and i == 0:
                kept.append(ref)  # a taken ref outlives its generator
        del gen, ref
    assert [int(pygen.get(r, timeout=T)[0]) for r in kept] == [0] * len(kept)
    del kept

    def nothing_running():
        return not [t for t in pygen.state.list_tasks()
                    if t["name"] == "producer" and t["state"] in ("running", "queued")]

    assert wait_until(nothing_running, T)
    assert store_empty(10), (pygen.state.store_stats(), pygen.state.list_objects()[:5])
    stats = pygen.state.store_stats()
    assert stats["used"] == 0 and stats["objects"] == 0


def test_backpressured_generator_deleted_half_way_100_times_leaves_the_store_empty():
    @pygen.remote(generator_backpressure=3)
    def producer(n):
        for i in range(n):
            yield np.full(32 * 1024, i, dtype=np.int64)

    assert store_empty()
    for _ in range(100):
        gen = producer.remote(1000)  # would run for ever without the deletion stopping it
        for i in range(5):
            assert int(pygen.get(gen.next_ready(T), timeout=T)[0]) == i
        del gen

    def nothing_running():
        return not [t for t in pygen.state.list_tasks()
                    if t["name"] == "producer" and t["state"] in ("running", "queued")]

    assert wait_until(nothing_running, T)
    assert store_empty(10)


def test_worker_sigkilled_mid_stream_delivers_every_item_once_in_order(tmp_path):
    """The consumer SIGKILLs the worker twice (attempts 1 and 2, found by their marker
    files and their pids in the items); attempt 3 finishes the stream."""
    d = str(tmp_path)
    n = 1500

    @pygen.remote(max_retries=2)
    def stream(d, n):
        attempt = len(os.listdir(d)) + 1
        touch(os.path.join(d, f"attempt-{attempt}"), str(os.getpid()))
        for i in range(n):
            time.sleep(0.0002)
            yield attempt, os.getpid(), i

    gen = stream.remote(d, n)
    kill_at = {1: 300, 2: 900}
    killed = set()
    indices = []
    t0 = time.monotonic()
    while True:
        try:
            ref = gen.next_ready(T)
        except StopIteration:
            break
        attempt, pid, i = pygen.get(ref, timeout=T)
        indices.append(i)
        if attempt in kill_at and attempt not in killed and i >= kill_at[attempt]:
            killed.add(attempt)
            os.kill(pid, signal.SIGKILL)
    assert killed == {1, 2}
    assert sorted(os.listdir(d)) == ["attempt-1", "attempt-2", "attempt-3"]
    assert indices == list(range(n))  # exactly once, in order
    assert pygen.get(gen.completed(), timeout=T) is None
    assert time.monotonic() - t0 < 30
    del gen, ref
    assert store_empty(10)
