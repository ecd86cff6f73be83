"""What pygen's facade costs on a Ray cluster: the same workloads through plain Ray and
through pygen-on-Ray (``pygen.init(address=...)``), on the same Ray instance, in the same
run.  Goal (issue 12): the facade costs at most 10% on each, i.e. pygen-on-Ray's rate is
at least 0.9x plain Ray's.  Measured, not asserted.

    pytest bench/test_bench_ray_facade.py --benchmark-only

The workloads are written once against an ``api`` (the ``ray`` module or the ``pygen``
module: the calls are the same), so both sides run the very same code, round by round in
turn.  The ratio of the medians is printed at the end of the run (and is in each test's
``extra_info``).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

from _suite import QUICK

pytestmark = pytest.mark.timeout(900)

# name -> (what one round does, items in a round, rounds)
SIZES: Dict[str, Tuple[str, int, int]] = {
    "tasks_bulk": ("{n} no-op tasks submitted, then one get", 200 if QUICK else 1000, 7),
    "tasks_serial": ("get(f.remote()) one at a time, {n} a round", 50 if QUICK else 200, 7),
    "stream_items": ("items of a streaming generator (next + get), {n} small ints",
                     500 if QUICK else 2000, 7),
    "actor_bulk": ("{n} actor calls submitted, then one get", 200 if QUICK else 1000, 7),
    "actor_serial": ("actor calls one at a time, {n} a round", 50 if QUICK else 200, 7),
    "put_get": ("put + get of a 1 MB array, {n} a round", 20 if QUICK else 100, 7),
}
MEDIANS: Dict[Tuple[str, str], float] = {}


def _workloads(api: Any) -> Dict[str, Callable[[int], Any]]:
    """The workloads, made with ``api``'s decorator (defined here, so both sides pickle
    them by value: Ray's workers need not import this file)."""

    @api.remote
    def noop() -> None:
        return None

    @api.remote
    def ints(n: int) -> Any:
        for i in range(n):
            yield i

    @api.remote
    class Echo:
        def ping(self) -> None:
            return None

    echo = Echo.remote()
    api.get(echo.ping.remote())
    array = np.ones(2**20 // 8)

    def tasks_bulk(n: int) -> Any:
        return api.get([noop.remote() for _ in range(n)])

    def tasks_serial(n: int) -> None:
        for _ in range(n):
            api.get(noop.remote())

    def stream_items(n: int) -> int:
        count = 0
        for ref in ints.remote(n):
            api.get(ref)
            count += 1
        assert count == n
        return count

    def actor_bulk(n: int) -> Any:
        return api.get([echo.ping.remote() for _ in range(n)])

    def actor_serial(n: int) -> None:
        for _ in range(n):
            api.get(echo.ping.remote())

    def put_get(n: int) -> None:
        for _ in range(n):
            assert api.get(api.put(array)).nbytes == array.nbytes

    return {"tasks_bulk": tasks_bulk, "tasks_serial": tasks_serial,
            "stream_items": stream_items, "actor_bulk": actor_bulk,
            "actor_serial": actor_serial, "put_get": put_get}


@pytest.fixture(scope="module")
def sides(envs):
    """Ray started once (the suite's Ray environment, warm), and pygen connected to it."""
    reason = envs.unavailable("ray")
    if reason:
        pytest.skip(reason)
    import pygen
    import ray

    envs.enter("ray")
    pygen.init(address="auto")
    try:
        yield {"ray": _workloads(ray), "pygen-on-ray": _workloads(pygen)}
    finally:
        pygen.shutdown()  # Ray was started by the suite: pygen leaves it running


@pytest.mark.parametrize("name", list(SIZES))
def test_facade(benchmark, sides, name):
    """pytest-benchmark times pygen-on-Ray's rounds; each is preceded (in ``setup``,
    outside pytest-benchmark's timing) by a round of plain Ray timed here: the two sides
    alternate round by round, so a burst of load on this noisy machine hits both."""
    what, n, rounds = SIZES[name]
    ours, plain = sides["pygen-on-ray"][name], sides["ray"][name]
    for run in (plain, ours):
        run(max(1, n // 10))   # warm: workers started, functions exported
    plain_rounds: List[float] = []

    def plain_round() -> None:
        t0 = time.perf_counter()
        plain(n)
        plain_rounds.append(time.perf_counter() - t0)

    benchmark.pedantic(ours, args=(n,), setup=plain_round, rounds=rounds, iterations=1,
                       warmup_rounds=1)
    MEDIANS[(name, "pygen-on-ray")] = benchmark.stats.stats.median
    MEDIANS[(name, "ray")] = statistics.median(plain_rounds[1:])  # the first: warm-up's
    benchmark.extra_info.update(
        what=what.format(n=n), per_second=n / MEDIANS[(name, "pygen-on-ray")],
        plain_ray_per_second=n / MEDIANS[(name, "ray")],
        rate_vs_plain_ray=MEDIANS[(name, "ray")] / MEDIANS[(name, "pygen-on-ray")])


def summary() -> List[str]:
    """Lines of the facade's table (conftest prints them at the end of the run)."""
    if not MEDIANS:
        return []
    lines = [f"{'workload':<14} {'plain Ray /s':>14} {'pygen-on-Ray /s':>16} {'ratio':>7}"]
    ratios = []
    for name, (what, n, _) in SIZES.items():
        ray_s, ours_s = MEDIANS.get((name, "ray")), MEDIANS.get((name, "pygen-on-ray"))
        if not ray_s or not ours_s:
            continue
        ratio = ray_s / ours_s
        ratios.append(ratio)
        lines.append(f"{name:<14} {n / ray_s:>14,.0f} {n / ours_s:>16,.0f} {ratio:>6.2f}x"
                     f"   {what.format(n=n)}")
    if ratios:
        lines.append(f"pygen-on-Ray's rate / plain Ray's: median {statistics.median(ratios):.2f}x,"
                     f" lowest {min(ratios):.2f}x (goal: >= 0.90x on each)")
    return lines
