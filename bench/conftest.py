"""Benchmark plumbing: a results table that the benchmarks fill and that is printed at the
end of the run (pytest-benchmark's own table has the raw timings).

* ``record(name, text)``: one line of the "medians" summary, in the order recorded;
* ``compare(metric, **cells)``: fills cells of one row of the comparison table (pygen next
  to its references: Ray, a plain pipe round trip, numpy's copy); cells are strings, the
  columns are ``COMPARE_COLUMNS``; "pygen vs X" is how many times better pygen does (a
  ratio of rates, or the inverse ratio of times).  Rows are filled in several steps
  (pygen's figure first, Ray's later in the same module), so a later test completes a row.

The 1-minute load average at the start and at the end of the run is printed too: the
figures of a loaded machine (2 vCPUs shared with other jobs) are not the machine's.
"""
from __future__ import annotations

import os

import pytest

RESULTS: "list[tuple[str, str]]" = []
COMPARISON: "dict[str, dict[str, str]]" = {}
COMPARE_COLUMNS = ("pygen", "Ray", "pygen vs Ray", "other reference", "pygen vs other", "goal",
                   "load")
_LOAD: "dict[str, tuple]" = {}


def pytest_sessionstart(session):
    _LOAD["start"] = os.getloadavg()


@pytest.fixture(scope="session")
def record():
    """record(name, text): one line of the summary printed at the end of the run."""
    def add(name: str, text: str) -> None:
        RESULTS.append((name, text))
    return add


@pytest.fixture(scope="session")
def compare():
    """compare(metric, **cells): set cells of the comparison row ``metric`` (see module doc);
    a cell name is a column with its spaces written as '_' (pygen_vs_Ray, other_reference)."""
    names = {c.replace(" ", "_"): c for c in COMPARE_COLUMNS}

    def add(metric: str, **cells: str) -> None:
        row = COMPARISON.setdefault(metric, {})
        for key, value in cells.items():
            if key not in names:
                raise KeyError(f"unknown comparison column {key!r}; one of {sorted(names)}")
            row[names[key]] = str(value)
    return add


def _table(header: "tuple[str, ...]", rows: "list[tuple[str, ...]]") -> "list[str]":
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return lines


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.section("pygen benchmarks (medians)")
        width = max(len(n) for n, _ in RESULTS)
        for name, text in RESULTS:
            terminalreporter.write_line(f"{name:<{width}}  {text}")
    if COMPARISON:
        terminalreporter.section("pygen next to its references (medians, same run)")
        rows = [(metric,) + tuple(cells.get(c, "") for c in COMPARE_COLUMNS)
                for metric, cells in COMPARISON.items()]
        for line in _table(("metric",) + COMPARE_COLUMNS, rows):
            terminalreporter.write_line(line)
    if RESULTS or COMPARISON:
        start = _LOAD.get("start")
        end = os.getloadavg()
        terminalreporter.write_line(
            f"load average (1, 5, 15 min) at start: "
            f"{', '.join(f'{x:.2f}' for x in start) if start else '?'}; at end: "
            f"{', '.join(f'{x:.2f}' for x in end)}  ({os.cpu_count()} CPUs)")
