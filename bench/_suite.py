"""The plan of this pytest run and what it measured (shared by conftest.py and the tests;
a module of its own, so that nothing imports a module named ``conftest``)."""
from __future__ import annotations

import os
from typing import List, Tuple

from pygen.bench.runner import Measurement
from pygen.bench.workloads import Case, plan

QUICK = bool(os.environ.get("BENCH_QUICK"))
CASES = plan(quick=QUICK)
MEASURED: List[Tuple[Case, Measurement]] = []
