"""Benchmark plumbing: a results table that the store benchmarks fill and that is printed
at the end of the run (pytest-benchmark's own table has the raw timings)."""
from __future__ import annotations

import pytest

RESULTS: "list[tuple[str, str]]" = []


@pytest.fixture(scope="session")
def record():
    """record(name, text): one line of the summary printed at the end of the run."""
    def add(name: str, text: str) -> None:
        RESULTS.append((name, text))
    return add


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("pygen store benchmarks (medians)")
    width = max(len(n) for n, _ in RESULTS)
    for name, text in RESULTS:
        terminalreporter.write_line(f"{name:<{width}}  {text}")
