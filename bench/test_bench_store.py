"""Object-store benchmarks (pytest-benchmark).  Targets are goals, measured, not asserted:

* put: serialize + write_to + delete of a numpy array, warm arena, in GB/s -- next to
  numpy's own copy of the same array in the same run (np.copyto into a preallocated
  array, and arr.copy()); goal >= 0.8 of numpy's copy;
* get: store.get + deserialize to a (zero-copy) numpy array, 1 KB .. 1 GB; goal: flat in
  size, < 20 us;
* create + seal + delete of small objects from Python, one process; goal >= 1,000,000/s.

For scale, Ray 2.60 on this machine: put ~7 GB/s, ~1,700 put calls/s, ~10,000 get calls/s.

    pytest bench/ --benchmark-columns=median,ops,rounds
"""
from __future__ import annotations

import gc
import statistics
import time

import numpy as np
import pytest

from pygen import _store
from pygen.serialization import deserialize, serialize

MB = 1_000_000
GiB = 1 << 30

pytestmark = pytest.mark.timeout(600)


def oid(n: int) -> bytes:
    return b"BNCH" + n.to_bytes(16, "big")


@pytest.fixture(scope="module")
def store():
    """A 2.2 GB store (a ceiling: memory is taken as objects need it); its warm window
    reserved before any measurement.  The put rounds reuse their block (LIFO): warm."""
    s = _store.Store.create(2 * GiB + 256 * (1 << 20))
    s.unlink()
    assert s.prefault_wait(timeout=120)
    yield s
    gc.collect()
    s.close()


def _median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("size_mb", [1, 10, 100, 500])
def test_put_throughput(benchmark, store, record, size_mb):
    n = size_mb * MB
    arr = np.random.default_rng(size_mb).integers(0, 255, size=n, dtype=np.uint8)
    k = oid(size_mb)
    rounds = max(5, min(200, 2000 // size_mb))

    def put():
        serialize(arr).write_to(store, k)
        store.delete(k)

    for _ in range(3):   # warm: the block (LIFO free lists) and the code paths
        put()
    benchmark.pedantic(put, rounds=rounds, iterations=1, warmup_rounds=1)
    put_s = benchmark.stats.stats.median

    dst = np.empty_like(arr)
    dst[:] = 1           # fault it in: copyto measures the copy alone
    copyto_s = _median_seconds(lambda: np.copyto(dst, arr), rounds)
    copy_s = _median_seconds(lambda: arr.copy(), rounds)

    gbps = n / put_s / 1e9
    info = {
        "put_GBps": round(gbps, 2),
        "numpy_copyto_GBps": round(n / copyto_s / 1e9, 2),
        "numpy_copy_GBps": round(n / copy_s / 1e9, 2),
        "ratio_vs_copyto": round(copyto_s / put_s, 3),
        "ratio_vs_copy": round(copy_s / put_s, 3),
        "put_calls_per_s": round(1 / put_s),
    }
    benchmark.extra_info.update(info)
    record(f"put {size_mb:>3} MB",
           f"{gbps:5.2f} GB/s | np.copyto {info['numpy_copyto_GBps']:5.2f} GB/s "
           f"(ratio {info['ratio_vs_copyto']:.2f}) | arr.copy() {info['numpy_copy_GBps']:5.2f} "
           f"GB/s (ratio {info['ratio_vs_copy']:.2f})")


GET_SIZES = [("1KB", 1_000), ("64KB", 64_000), ("1MB", MB), ("16MB", 16 * MB),
             ("256MB", 256 * MB), ("1GB", 1000 * MB)]


@pytest.mark.parametrize("label,size", GET_SIZES, ids=[s[0] for s in GET_SIZES])
def test_get_latency(benchmark, store, record, label, size):
    k = oid(10_000 + size % 9973)
    arr = np.ones(size, dtype=np.uint8)
    serialize(arr).write_to(store, k)
    del arr

    def get():
        buf = store.get(k)
        _, value = deserialize(buf)
        return value

    value = get()
    assert isinstance(value, np.ndarray) and value.nbytes == size and not value.flags.writeable
    del value
    benchmark.pedantic(get, rounds=2000, iterations=1, warmup_rounds=50)
    us = benchmark.stats.stats.median * 1e6
    benchmark.extra_info["get_us"] = round(us, 2)
    benchmark.extra_info["gets_per_s"] = round(1e6 / us)
    record(f"get {label:>5}", f"{us:6.2f} us (store.get + deserialize to a zero-copy array)")
    gc.collect()
    store.delete(k)


def test_small_create_seal_delete(benchmark, store, record):
    k = oid(99)
    n = 20_000
    create, seal, delete = store.create_object, store.seal, store.delete

    def loop():
        for _ in range(n):
            create(k, 16)
            seal(k)
            delete(k)

    benchmark.pedantic(loop, rounds=20, iterations=1, warmup_rounds=2)
    per_s = n / benchmark.stats.stats.median
    benchmark.extra_info["create_seal_delete_per_s"] = round(per_s)
    record("small create+seal+delete", f"{per_s:,.0f} /s in one process")


def test_small_put_get_cycle(benchmark, store, record):
    """The runtime's per-object path for a small value in the store: write_to, get,
    deserialize, delete."""
    k = oid(98)
    v = serialize(np.arange(128, dtype=np.int64))

    def cycle():
        v.write_to(store, k)
        b = store.get(k)
        _, a = deserialize(b)
        del a, b
        store.delete(k)

    benchmark.pedantic(cycle, rounds=5000, iterations=1, warmup_rounds=100)
    us = benchmark.stats.stats.median * 1e6
    benchmark.extra_info["cycle_us"] = round(us, 2)
    record("small write_to+get+delete", f"{us:6.2f} us per object")
