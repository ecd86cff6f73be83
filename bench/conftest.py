"""The pytest-benchmark face of the benchmark suite: the workloads of ``pygen.bench`` (the
very ones ``pygen bench`` runs), timed by pytest-benchmark, and the same side-by-side
table printed at the end of the run.

    pytest bench --benchmark-only                 # every workload, full size
    BENCH_QUICK=1 pytest bench --benchmark-only   # the sizes of ``pygen bench --quick``
    BENCH_NO_RAY=1 ...                            # leave Ray out even when installed
    BENCH_REPORT_DIR=out pytest bench ...         # also write the JSON, Markdown and chart

pytest-benchmark's own table has the raw timings of each round; the figures (rates, GB/s,
MiB) and pygen's ratio to each other side are in ``extra_info`` and in the table below it.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
import pytest

from _suite import MEASURED, QUICK
from pygen.bench import report
from pygen.bench.measure import machine
from pygen.bench.runner import Envs

_RUN = {}


def pytest_sessionstart(session):
    _RUN["started"] = datetime.datetime.now().astimezone()
    _RUN["t0"] = time.monotonic()
    _RUN["load"] = os.getloadavg()


@pytest.fixture(scope="session")
def envs():
    """The environments of the run, one started at a time (pygen, Ray, a pool...)."""
    e = Envs()
    yield e
    e.stop()


def pytest_terminal_summary(terminalreporter):
    facade = sys.modules.get("test_bench_ray_facade")
    lines = facade.summary() if facade is not None else []
    if lines:
        terminalreporter.section("pygen on Ray next to plain Ray (medians, same run)")
        for line in lines:
            terminalreporter.write_line(line)
    if not MEASURED:
        return
    cases = [c for c, _ in MEASURED]
    data = report.build(cases, [m for _, m in MEASURED], quick=QUICK, started=_RUN["started"],
                        duration_s=time.monotonic() - _RUN["t0"], load_start=_RUN["load"],
                        load_end=os.getloadavg(), machine=machine(),
                        command=" ".join(["pytest"] + sys.argv[1:]))
    terminalreporter.section("pygen next to its references (medians, same run)")
    for line in report.text_table(data).splitlines():
        terminalreporter.write_line(line)
    out = os.environ.get("BENCH_REPORT_DIR")
    if out:
        os.makedirs(out, exist_ok=True)
        paths = report.output_paths(out, _RUN["started"], QUICK)
        report.write_json(data, paths["json"])
        with open(paths["md"], "w") as f:
            f.write(report.markdown(data))
        drawn = report.chart(data, paths["png"])
        terminalreporter.write_line(f"wrote {paths['json']}, {paths['md']}"
                                    + (f", {drawn}" if drawn else f"; {report.CHART_NOTE}"))
