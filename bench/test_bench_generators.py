"""Generator benchmarks (pytest-benchmark), issue 4.  Targets are goals, measured, not asserted:

* items per second of a streaming generator yielding 100,000 small ints, consumed with
  ``next`` + ``get``; goal >= 10x Ray;
* time from ``.remote()`` to the first item's value (the generator function warm; it keeps
  running after its first yield, so the item cannot ride with the task's end); median of
  many trials; goal: >= 10x sooner than Ray;
* GB/s of a generator yielding 20 x 50 MB numpy arrays consumed zero-copy (the consumer
  reads one byte per page of each array, checks it is a read-only view, drops it), from
  ``.remote()`` to the last item -- next to numpy's own copy of 50 MB in the same run
  (``np.copyto`` into a warm array, and ``arr.copy()``); goal >= 0.8 of the plain copy.
  The generator yields one array made once per worker (``_workloads.source_array``): each
  yield copies it into the store, and no run times a fresh 50 MB allocation;
* the seed's memory pattern ("using generators to reduce heap memory usage"): a task
  returning a list of 20 x 50 MB arrays vs the same as a generator, both with
  ``num_returns=20`` as in the seed: the peak private RSS (``RssAnon``) of the worker that
  runs it, sampled every 2 ms by a thread of the driver (the task writes its pid first).

Ray's figures are measured in the same run when Ray is installed, never while pygen runs:
every pygen test first, then numpy's copy (nothing running), then Ray, started once.
The memory pattern runs before the large items (whose workers keep a 50 MB source array).
For scale, ARCHITECTURE.md's figures for Ray 2.60 on this machine: 5,000-6,000 stream
items/s, first stream item after 1.5 ms.

    pytest bench/test_bench_generators.py --benchmark-columns=median,ops,rounds
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time

import numpy as np
import pytest

from _measure import Figures, RssSampler, note, rate, ratio, seconds
from _ray_baseline import Runtimes, ray_version
from _workloads import big_generator, big_items, big_list, count, first_then_more

pytestmark = pytest.mark.timeout(900)

MB = 1_000_000
PAGE = 4096

ITEMS_N, ITEMS_ROUNDS = 100_000, 5           # small ints per stream, rounds
FIRST_TRIALS = 200                           # remote() -> first item's value
BIG_N, BIG_BYTES, BIG_ROUNDS = 20, 50 * MB, 8
COPY_ROUNDS = 40
MEM_N, MEM_BYTES, MEM_ROUNDS = 20, 50 * MB, 3
RAY_ITEMS_N, RAY_ITEMS_ROUNDS = 20_000, 3    # Ray streams ~10x slower: fewer items a round
RAY_FIRST_TRIALS = 50
RAY_BIG_ROUNDS = 6

ROW_ITEMS = "stream items/s: next + get, small ints"
ROW_FIRST = "remote() -> first item's value"
ROW_BIG = f"{BIG_N} x {BIG_BYTES // MB} MB items, zero-copy consumer"
ROW_MEM = {"list": f"peak worker RssAnon: list of {MEM_N} x {MEM_BYTES // MB} MB",
           "generator": f"peak worker RssAnon: generator of {MEM_N} x {MEM_BYTES // MB} MB"}

FIG = Figures()


MEM_FUNCTIONS = {"list": big_list, "generator": big_generator}


@pytest.fixture(scope="module")
def runtimes():
    rt = Runtimes()
    yield rt
    rt.stop()


# == the measurements, the same code for pygen and Ray =====================================
def _items(benchmark, rt, n, rounds, warm_n):
    f, get = rt.remote(count), rt.get

    def consume(n=n):
        gen = f.remote(n)
        total = 0
        for _ in range(n):
            total += get(next(gen))
        with pytest.raises(StopIteration):
            next(gen)
        assert total == n * (n - 1) // 2

    consume(warm_n)
    benchmark.pedantic(consume, rounds=rounds, iterations=1, warmup_rounds=0)
    return n / benchmark.stats.stats.median


def _first_item(benchmark, rt, trials):
    f, get = rt.remote(first_then_more), rt.get
    current = []

    def drain():  # untimed: the previous trial's task has ended before the next starts
        while current:
            for _ in current.pop():
                pass

    def first():
        gen = f.remote()
        assert get(next(gen)) == 0
        current.append(gen)

    for _ in range(5):
        drain()
        first()
    drain()
    benchmark.pedantic(first, setup=drain, rounds=trials, iterations=1)
    drain()
    return benchmark.stats.stats.median


def _big(benchmark, rt, rounds, check_readonly):
    f, get = rt.remote(big_items), rt.get
    pages = len(range(0, BIG_BYTES, PAGE))

    def consume():
        gen = f.remote(BIG_N, BIG_BYTES)
        total = 0
        for ref in gen:
            a = get(ref)
            if check_readonly:
                assert not a.flags.writeable and a.nbytes == BIG_BYTES
            total += int(a[::PAGE].sum())  # one byte per page: the view is really there
            del a, ref
        assert total == BIG_N * pages * 7

    consume()  # the source array made in the worker(s), the arena blocks warm
    consume()
    benchmark.pedantic(consume, rounds=rounds, iterations=1, warmup_rounds=1)
    return BIG_N * BIG_BYTES / benchmark.stats.stats.median / 1e9


def _memory(benchmark, rt, kind, rounds):
    f = rt.remote(MEM_FUNCTIONS[kind]).options(num_returns=MEM_N, max_retries=0)
    get = rt.get
    path = os.path.join(tempfile.gettempdir(), f"pygen-bench-pid-{os.getpid()}")
    samplers = []

    def run():
        sampler = RssSampler(path).start()
        refs = f.remote(MEM_N, MEM_BYTES, path)
        last = get(refs[-1])
        assert last.nbytes == MEM_BYTES and last[0] == MEM_N - 1
        del last, refs
        samplers.append(sampler.stop())

    def settle():  # the previous round's objects freed before the next round
        gc.collect()
        time.sleep(0.2)

    try:
        benchmark.pedantic(run, setup=settle, rounds=rounds, iterations=1, warmup_rounds=1)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    measured = samplers[-rounds:]
    peak_mb = statistics.median(s.peak_kb for s in measured) / 1024
    growth_mb = statistics.median(s.peak_kb - s.start_kb for s in measured) / 1024
    start_mb = statistics.median(s.start_kb for s in measured) / 1024
    note(benchmark, peak_rss_anon_MiB=round(peak_mb, 1), growth_MiB=round(growth_mb, 1),
         start_rss_anon_MiB=round(start_mb, 1), samples=[s.samples for s in measured],
         arrays_worth=round(growth_mb * 1024 * 1024 / MEM_BYTES, 2))
    return peak_mb, growth_mb, start_mb


def _mem_text(peak, growth, start, secs):
    return (f"peak {peak:,.0f} MiB = start {start:,.0f} MiB + {growth:,.0f} MiB "
            f"({growth * 2**20 / MEM_BYTES:.1f} arrays' worth), {seconds(secs)} per run")


# == pygen ==============================================================================
def test_pygen_stream_items(benchmark, runtimes, record, compare):
    pygen = runtimes.pygen()
    per_s = _items(benchmark, pygen, ITEMS_N, ITEMS_ROUNDS, warm_n=10_000)
    load = note(benchmark, items_per_s=round(per_s), n=ITEMS_N)
    FIG.pygen("items", per_s, benchmark, compare, ROW_ITEMS, load)
    record("pygen stream items", f"{rate(per_s)} ({ITEMS_N:,} small ints, next + get)")
    compare(ROW_ITEMS, pygen=rate(per_s), goal=">= 10x Ray")


def test_pygen_first_item(benchmark, runtimes, record, compare):
    pygen = runtimes.pygen()
    secs = _first_item(benchmark, pygen, FIRST_TRIALS)
    load = note(benchmark, first_item_us=round(secs * 1e6, 1), trials=FIRST_TRIALS)
    FIG.pygen("first", secs, benchmark, compare, ROW_FIRST, load)
    record("pygen first item", f"{seconds(secs)} from .remote() to the value "
                               f"(median of {FIRST_TRIALS})")
    compare(ROW_FIRST, pygen=seconds(secs), goal=">= 10x sooner than Ray")


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_pygen_memory_pattern(benchmark, runtimes, record, compare, kind):
    pygen = runtimes.pygen()
    peak, growth, start = _memory(benchmark, pygen, kind, MEM_ROUNDS)
    FIG.pygen(f"mem-{kind}", peak, benchmark, compare, ROW_MEM[kind], benchmark.extra_info["load1"])
    record(f"pygen memory, {kind}",
           _mem_text(peak, growth, start, benchmark.stats.stats.median))
    compare(ROW_MEM[kind], pygen=f"{peak:,.0f} MiB (+{growth:,.0f})",
            goal="generator: ~1 array" if kind == "generator" else "")


def test_pygen_large_items(benchmark, runtimes, record, compare):
    pygen = runtimes.pygen()
    gbps = _big(benchmark, pygen, BIG_ROUNDS, check_readonly=True)
    load = note(benchmark, GBps=round(gbps, 2))
    FIG.pygen("big", gbps, benchmark, compare, ROW_BIG, load)
    record("pygen large items", f"{gbps:.2f} GB/s ({BIG_N} x {BIG_BYTES // MB} MB, "
                                f"zero-copy, remote() to last item)")
    compare(ROW_BIG, pygen=f"{gbps:.2f} GB/s", goal=">= 0.8x np.copyto")


# == the plain memory copy (nothing else running) ===========================================
def test_numpy_copy(benchmark, runtimes, record, compare):
    """numpy's own copy of one 50 MB array: np.copyto into a warm array (pytest-benchmark's
    timing), and arr.copy() (a fresh allocation each time)."""
    runtimes.stop()
    src = np.full(BIG_BYTES, 7, dtype=np.uint8)
    dst = np.empty_like(src)
    dst[:] = 1  # faulted in: copyto measures the copy alone
    benchmark.pedantic(np.copyto, args=(dst, src), rounds=COPY_ROUNDS, iterations=1,
                       warmup_rounds=3)
    copyto = BIG_BYTES / benchmark.stats.stats.median / 1e9
    times = []
    for _ in range(COPY_ROUNDS):
        t0 = time.perf_counter()
        c = src.copy()
        times.append(time.perf_counter() - t0)
        del c
    copy = BIG_BYTES / statistics.median(times) / 1e9
    info = {"copyto_GBps": round(copyto, 2), "copy_GBps": round(copy, 2)}
    text = f"np.copyto {copyto:.2f} GB/s, arr.copy() {copy:.2f} GB/s (50 MB)"
    if "big" in FIG.values:
        pg = FIG.values["big"]
        info.update(pygen_over_copyto=round(pg / copyto, 3), pygen_over_copy=round(pg / copy, 3))
        FIG.infos["big"].update(numpy_copyto_GBps=info["copyto_GBps"],
                                numpy_copy_GBps=info["copy_GBps"],
                                ratio_vs_copyto=info["pygen_over_copyto"],
                                ratio_vs_copy=info["pygen_over_copy"])
        text += (f"; pygen large items / copyto = {pg / copyto:.2f}, "
                 f"/ copy() = {pg / copy:.2f} (goal >= 0.8)")
        compare(ROW_BIG, other_reference=f"np.copyto {copyto:.2f} GB/s, copy() {copy:.2f}",
                pygen_vs_other=f"{pg / copyto:.2f}x / {pg / copy:.2f}x")
    note(benchmark, **info)
    record("numpy copy 50 MB", text)


# == Ray ===============================================================================
def test_ray_stream_items(benchmark, runtimes, record, compare):
    ray = runtimes.ray()
    per_s = _items(benchmark, ray, RAY_ITEMS_N, RAY_ITEMS_ROUNDS, warm_n=1_000)
    load = note(benchmark, ray_version=ray_version(), items_per_s=round(per_s), n=RAY_ITEMS_N)
    _ray_row(benchmark, record, compare, "items", ROW_ITEMS, per_s, rate(per_s),
             f"Ray stream items ({RAY_ITEMS_N:,} small ints)", load, higher_is_better=True)


def test_ray_first_item(benchmark, runtimes, record, compare):
    ray = runtimes.ray()
    secs = _first_item(benchmark, ray, RAY_FIRST_TRIALS)
    load = note(benchmark, ray_version=ray_version(), first_item_us=round(secs * 1e6, 1),
                trials=RAY_FIRST_TRIALS)
    _ray_row(benchmark, record, compare, "first", ROW_FIRST, secs, seconds(secs),
             f"Ray first item (median of {RAY_FIRST_TRIALS})", load, higher_is_better=False)


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_ray_memory_pattern(benchmark, runtimes, record, compare, kind):
    ray = runtimes.ray()
    peak, growth, start = _memory(benchmark, ray, kind, MEM_ROUNDS)
    load = note(benchmark, ray_version=ray_version())
    record(f"Ray memory, {kind}", _mem_text(peak, growth, start, benchmark.stats.stats.median))
    compare(ROW_MEM[kind], Ray=f"{peak:,.0f} MiB (+{growth:,.0f})")
    key = f"mem-{kind}"
    if key in FIG.values:
        compare(ROW_MEM[kind], pygen_vs_Ray=f"{peak / FIG.values[key]:.2f}x (peaks)")
    FIG.ray_load(compare, ROW_MEM[kind], load)


def test_ray_large_items(benchmark, runtimes, record, compare):
    ray = runtimes.ray()
    gbps = _big(benchmark, ray, RAY_BIG_ROUNDS, check_readonly=True)
    load = note(benchmark, ray_version=ray_version(), GBps=round(gbps, 2))
    _ray_row(benchmark, record, compare, "big", ROW_BIG, gbps, f"{gbps:.2f} GB/s",
             "Ray large items", load, higher_is_better=True)


def _ray_row(benchmark, record, compare, key, row, value, cell, label, load, higher_is_better):
    text = f"{cell} (Ray {ray_version()})"
    if key in FIG.values:
        pg = FIG.values[key]
        better = pg / value if higher_is_better else value / pg
        FIG.infos[key].update(ray=round(value, 6), ratio_vs_ray=round(better, 2))
        benchmark.extra_info["pygen_vs_ray"] = round(better, 2)
        text += (f"; pygen / Ray = {ratio(better)}" if higher_is_better else
                 f"; Ray / pygen = {ratio(better)} (pygen sooner when > 1)")
        compare(row, pygen_vs_Ray=ratio(better))
    record(label, text)
    compare(row, Ray=cell)
    FIG.ray_load(compare, row, load)
