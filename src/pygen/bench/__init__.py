"""The benchmark suite behind ``pygen bench`` and the pytest-benchmark suite in ``bench/``.

Each workload is defined once, in :mod:`pygen.bench.workloads`, with the code it runs on
each side (pygen, Ray, multiprocessing, joblib, and the floors it is compared with);
:mod:`pygen.bench.runner` runs them one runtime at a time, :mod:`pygen.bench.report` turns
the figures into a table, JSON, Markdown and a chart.

This package imports nothing heavy at import time: workers (pygen's, Ray's, a
multiprocessing pool's) import :mod:`pygen.bench.tasks` by name before their first task.
"""
