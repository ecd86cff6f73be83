"""Every benchmark workload of ``pygen.bench.workloads``, each side a test, timed by
pytest-benchmark (``benchmark.pedantic``: the workload's rounds and warm-up, ``setup``
untimed before each round).  Targets are goals, measured, not asserted.

The plan runs one environment at a time (the bare store, pygen, the floors,
multiprocessing, joblib, then Ray): pytest runs the parametrized cases in that order.
A side whose environment is missing (Ray or joblib not installed) is skipped, saying why;
so is, with BENCH_QUICK, a side too slow for ``pygen bench --quick`` (Ray's footprint).
The actors' and the footprint's workloads (issues 8 and 9) are among them: there is no
second definition of any workload here.
"""
from __future__ import annotations

import pytest

from _suite import CASES, MEASURED
from pygen.bench.runner import run_case, timed_rounds

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_workload(benchmark, envs, case):
    def timer(trial, case):
        if getattr(benchmark, "disabled", False):   # --benchmark-disable: time it ourselves
            return timed_rounds(trial, case)
        benchmark.pedantic(trial.run, setup=trial.setup, rounds=case.rounds, iterations=1,
                           warmup_rounds=case.warmup)
        return benchmark.stats.stats.median

    m = run_case(envs, case, timer)
    MEASURED.append((case, m))
    if m.skipped:
        pytest.skip(m.skipped)
    if not getattr(benchmark, "disabled", False):
        benchmark.extra_info.update(value=m.value, unit=case.workload.unit,
                                    column=case.side.column, load1=m.load1, **m.info)
