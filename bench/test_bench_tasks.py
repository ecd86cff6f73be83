"""Runtime benchmarks (pytest-benchmark), issue 3.  Targets are goals, measured, not asserted:

* tasks submitted and awaited one at a time per second (``get(f.remote(i))`` in a loop, a
  trivial ``f``); goal >= 10x Ray.  Beside it the floor of any one-round-trip design: a
  tiny message's round trip over a socketpair between two Python processes (``PipeEcho``);
* 10,000 tasks submitted, then awaited with one ``get``, per second; goal >= 10x Ray;
* ``init`` + first task round trip: a fresh ``pygen.init()`` with defaults, one trivial
  task, its result (goal < 0.3 s); ``shutdown`` timed separately.  Beside it the floor of
  a design that starts worker processes: a fresh interpreter importing the worker's modules.

Ray's figures are measured in the same run when Ray is installed (``pip install -e
'.[ray]'``), never while pygen runs: this module runs every pygen test first, then starts
Ray once (2 CPUs, no dashboard, a 2 GB store; ``_ray_baseline``).  For scale, the issue's
figures for Ray 2.60 on this machine: ~720 tasks/s one at a time, ~1,900/s in bulk, init
in seconds.  The comparison table at the end of the run puts each pygen median next to
Ray's and the pipe's, with the 1-minute load average at the time of each measurement.

    pytest bench/test_bench_tasks.py --benchmark-columns=median,ops,rounds
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest

from _measure import Figures, PipeEcho, note, rate, ratio, seconds
from _ray_baseline import (Runtimes, ray_or_skip, ray_version, start_ray, stop_ray_now,
                           warm_ray)
from _workloads import noop

pytestmark = pytest.mark.timeout(900)

SERIAL_N, SERIAL_ROUNDS = 2_000, 10          # pygen: tasks per round, rounds
BULK_N, BULK_ROUNDS = 10_000, 5
INIT_ROUNDS = 8                              # fresh init + first result + shutdown
PIPE_N, PIPE_ROUNDS = 2_000, 10
RAY_SERIAL_N, RAY_SERIAL_ROUNDS = 300, 5     # Ray is ~10x slower: fewer tasks per round
RAY_BULK_ROUNDS = 3                          # 10,000 tasks each, as pygen
RAY_INIT_ROUNDS = int(os.environ.get("BENCH_RAY_INIT_ROUNDS", "3"))  # ~8 s each here

ROW_SERIAL = "tasks one at a time: get(f.remote(i))"
ROW_BULK = f"{BULK_N:,} tasks submitted, then one get"
ROW_INIT = "init (defaults) + first task result"
ROW_SHUTDOWN = "shutdown"

# pygen's medians (and their extra_info dicts), for the ratios of the later tests
FIG = Figures()


@pytest.fixture(scope="module")
def runtimes():
    rt = Runtimes()
    yield rt
    rt.stop()


# == pygen ============================================================================
def test_pygen_init_first_result(benchmark, runtimes, record, compare):
    """A fresh ``pygen.init()`` with defaults (num_cpus = CPUs, 30% of RAM as arena, workers
    started in the background), then one trivial task and its result."""
    import pygen
    runtimes.stop()
    f = pygen.remote(noop)
    inits, shutdowns = [], []

    def setup():
        if pygen.is_initialized():
            t0 = time.perf_counter()
            pygen.shutdown()
            shutdowns.append(time.perf_counter() - t0)

    def init_and_first():
        t0 = time.perf_counter()
        pygen.init()
        inits.append(time.perf_counter() - t0)
        assert pygen.get(f.remote(1)) == 1

    benchmark.pedantic(init_and_first, setup=setup, rounds=INIT_ROUNDS, iterations=1,
                       warmup_rounds=1)
    setup()  # the last shutdown, timed too
    bare = _process_start(["-c", "pass"])
    worker_imports = _process_start(["-c", WORKER_IMPORTS])
    first = benchmark.stats.stats.median
    init_s = statistics.median(inits)
    down_s = statistics.median(shutdowns)
    load = note(benchmark, init_first_result_s=round(first, 4), init_call_s=round(init_s, 4),
                shutdown_s=round(down_s, 4), shutdown_max_s=round(max(shutdowns), 4),
                python_start_s=round(bare, 4), python_start_worker_imports_s=round(worker_imports, 4))
    FIG.pygen("init", first, benchmark, compare, ROW_INIT, load)
    FIG.pygen("shutdown", down_s, benchmark, compare, ROW_SHUTDOWN, load)
    record("pygen init + first result",
           f"{seconds(first)} (init() returns after {seconds(init_s)}); goal < 0.3 s; a bare "
           f"`python -c pass` takes {seconds(bare)}, with the worker's imports {seconds(worker_imports)}")
    record("pygen shutdown", f"{seconds(down_s)} (max {seconds(max(shutdowns))})")
    compare(ROW_INIT, pygen=seconds(first), goal="< 0.3 s",
            other_reference=f"python start + worker imports {seconds(worker_imports)}",
            pygen_vs_other=ratio(worker_imports / first))
    compare(ROW_SHUTDOWN, pygen=seconds(down_s))


def test_pygen_tasks_one_at_a_time(benchmark, runtimes, record, compare):
    pygen = runtimes.pygen()
    f, get = pygen.remote(noop), pygen.get

    def loop():
        for i in range(SERIAL_N):
            get(f.remote(i))

    benchmark.pedantic(loop, rounds=SERIAL_ROUNDS, iterations=1, warmup_rounds=1)
    per_s = SERIAL_N / benchmark.stats.stats.median
    load = note(benchmark, tasks_per_s=round(per_s), us_per_task=round(1e6 / per_s, 1))
    FIG.pygen("serial", per_s, benchmark, compare, ROW_SERIAL, load)
    record("pygen tasks one at a time", f"{rate(per_s)} ({1e6 / per_s:.0f} us per task)")
    compare(ROW_SERIAL, pygen=rate(per_s), goal=">= 10x Ray")


def test_pygen_tasks_bulk(benchmark, runtimes, record, compare):
    pygen = runtimes.pygen()
    f, get = pygen.remote(noop), pygen.get

    def bulk():
        refs = [f.remote(i) for i in range(BULK_N)]
        assert get(refs)[-1] == BULK_N - 1

    benchmark.pedantic(bulk, rounds=BULK_ROUNDS, iterations=1, warmup_rounds=1)
    per_s = BULK_N / benchmark.stats.stats.median
    load = note(benchmark, tasks_per_s=round(per_s))
    FIG.pygen("bulk", per_s, benchmark, compare, ROW_BULK, load)
    record(f"pygen {BULK_N:,} tasks in bulk", rate(per_s))
    compare(ROW_BULK, pygen=rate(per_s), goal=">= 10x Ray")


def test_pipe_round_trip(benchmark, runtimes, record, compare):
    """The floor: a 32-byte message to another Python process and back over a socketpair
    (both sides block in recv; no runtime running)."""
    runtimes.stop()
    echo = PipeEcho()
    try:
        benchmark.pedantic(echo.round_trips, args=(PIPE_N,), rounds=PIPE_ROUNDS, iterations=1,
                           warmup_rounds=1)
    finally:
        echo.close()
    rtt = benchmark.stats.stats.median / PIPE_N
    info = {"round_trip_us": round(rtt * 1e6, 1), "round_trips_per_s": round(1 / rtt)}
    text = f"pipe round trip {rtt * 1e6:.0f} us = {rate(1 / rtt)}"
    if "serial" in FIG.values:
        per_s = FIG.values["serial"]
        info["pygen_over_pipe"] = round(per_s * rtt, 3)
        FIG.infos["serial"].update(pipe_round_trips_per_s=info["round_trips_per_s"],
                                   ratio_vs_pipe=info["pygen_over_pipe"])
        text += f"; pygen one at a time / pipe = {ratio(per_s * rtt)}"
        compare(ROW_SERIAL, other_reference=f"pipe round trip {rate(1 / rtt)}",
                pygen_vs_other=ratio(per_s * rtt))
    note(benchmark, **info)
    record("pipe round trip (floor)", text)


WORKER_IMPORTS = ("import pygen, pygen.core.worker, pygen.core.executor, "
                  "pygen.core.worker_client, pygen.core.transport")


def _process_start(args, rounds=5):
    """Median wall time of a fresh interpreter running ``args`` (the floor of a cold worker)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable] + args, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# == Ray ==============================================================================
def test_ray_init_first_result(benchmark, runtimes, record, compare):
    """``ray.init`` (2 CPUs, no dashboard) + one trivial task, ``RAY_INIT_ROUNDS`` times;
    ``ray.shutdown()`` between rounds is timed apart.  The Ray session of the last round is
    kept for the tests below."""
    runtimes.stop()
    ray = ray_or_skip()
    f = ray.remote(noop)
    shutdowns = []

    def setup():
        if ray.is_initialized():
            shutdowns.append(stop_ray_now())

    def init_and_first():
        start_ray()
        assert ray.get(f.remote(1)) == 1

    benchmark.pedantic(init_and_first, setup=setup, rounds=RAY_INIT_ROUNDS, iterations=1)
    runtimes.active = "ray"
    warm_ray()
    first = benchmark.stats.stats.median
    load = note(benchmark, ray_version=ray_version(), init_first_result_s=round(first, 3),
                shutdown_s=round(statistics.median(shutdowns), 3) if shutdowns else None)
    text = f"{seconds(first)} (Ray {ray_version()}, {RAY_INIT_ROUNDS} rounds)"
    if "init" in FIG.values:
        pg = FIG.values["init"]
        FIG.infos["init"].update(ray_init_first_result_s=round(first, 3),
                                 speedup_vs_ray=round(first / pg, 1))
        text += f"; Ray / pygen = {ratio(first / pg)}"
        compare(ROW_INIT, pygen_vs_Ray=ratio(first / pg))
    record("Ray init + first result", text)
    compare(ROW_INIT, Ray=seconds(first))
    FIG.ray_load(compare, ROW_INIT, load)
    if shutdowns:
        down = statistics.median(shutdowns)
        record("Ray shutdown", f"{seconds(down)} (ray.shutdown(); {len(shutdowns)} samples)")
        compare(ROW_SHUTDOWN, Ray=seconds(down))
        FIG.ray_load(compare, ROW_SHUTDOWN, load)
        if "shutdown" in FIG.values:
            compare(ROW_SHUTDOWN, pygen_vs_Ray=ratio(down / FIG.values["shutdown"]))


def test_ray_tasks_one_at_a_time(benchmark, runtimes, record, compare):
    ray = runtimes.ray()
    f, get = ray.remote(noop), ray.get

    def loop():
        for i in range(RAY_SERIAL_N):
            get(f.remote(i))

    benchmark.pedantic(loop, rounds=RAY_SERIAL_ROUNDS, iterations=1, warmup_rounds=1)
    per_s = RAY_SERIAL_N / benchmark.stats.stats.median
    _ray_rate_row(benchmark, record, compare, "serial", ROW_SERIAL, "one at a time", per_s)


def test_ray_tasks_bulk(benchmark, runtimes, record, compare):
    ray = runtimes.ray()
    f, get = ray.remote(noop), ray.get

    def bulk():
        refs = [f.remote(i) for i in range(BULK_N)]
        assert get(refs)[-1] == BULK_N - 1

    benchmark.pedantic(bulk, rounds=RAY_BULK_ROUNDS, iterations=1, warmup_rounds=0)
    per_s = BULK_N / benchmark.stats.stats.median
    _ray_rate_row(benchmark, record, compare, "bulk", ROW_BULK, f"{BULK_N:,} in bulk", per_s)


def _ray_rate_row(benchmark, record, compare, key, row, label, per_s):
    load = note(benchmark, ray_version=ray_version(), tasks_per_s=round(per_s))
    text = f"{rate(per_s)} (Ray {ray_version()})"
    if key in FIG.values:
        pg = FIG.values[key]
        FIG.infos[key].update(ray_tasks_per_s=round(per_s), ratio_vs_ray=round(pg / per_s, 2))
        benchmark.extra_info["pygen_over_ray"] = round(pg / per_s, 2)
        text += f"; pygen / Ray = {ratio(pg / per_s)} (goal >= 10x)"
        compare(row, pygen_vs_Ray=ratio(pg / per_s))
    record(f"Ray tasks {label}", text)
    compare(row, Ray=rate(per_s))
    FIG.ray_load(compare, row, load)
