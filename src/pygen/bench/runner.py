"""Runs a plan of benchmark cases one environment at a time, and times their rounds.

``run_case`` is shared by ``pygen bench`` (which times rounds itself, ``timed_rounds``)
and by the pytest-benchmark suite in ``bench/`` (which lets pytest-benchmark time them):
the same trial, built the same way, the same figure from the median round.
"""
from __future__ import annotations

import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, TextIO

from .envs import Env, all_envs
from .measure import load1
from .workloads import Case, Trial

QUICK_SKIP = "too slow for --quick (seconds a round): measured by the full run"

# (trial, case, progress) -> median seconds of the timed rounds
RoundsTimer = Callable[[Trial, Case], float]


@dataclass
class Measurement:
    """The figure of one side of one workload, or why there is none."""

    workload: str
    column: str
    value: Optional[float] = None
    median_round_s: Optional[float] = None
    rounds: int = 0
    load1: Optional[float] = None
    info: Dict[str, Any] = field(default_factory=dict)
    skipped: Optional[str] = None
    error: Optional[str] = None
    wall_s: float = 0.0          # the whole case: building the trial, warm-up, rounds


class Envs:
    """The environments of a run, at most one started at a time."""

    def __init__(self) -> None:
        self.envs = all_envs()
        self.current: Optional[Env] = None

    def unavailable(self, name: str) -> Optional[str]:
        return self.envs[name].unavailable()

    def enter(self, name: str, start: bool = True) -> Any:
        env = self.envs[name]
        if self.current is not env:
            self.stop()
            self.current = env
        return env.start() if start else env

    def stop(self) -> None:
        if self.current is not None:
            env, self.current = self.current, None
            env.stop()


def run_case(envs: Envs, case: Case, timer: RoundsTimer) -> Measurement:
    """Build the case's trial in its environment, time its rounds with ``timer``, and turn
    the median round into its figure.  A side that cannot run here is skipped (with the
    reason); a trial that fails is reported with its error, never dropped."""
    m = Measurement(case.workload.key, case.side.column, rounds=case.rounds)
    reason = envs.unavailable(case.side.env)
    if not reason and case.quick and not case.side.in_quick:
        reason = QUICK_SKIP
    if reason:
        m.skipped = reason
        return m
    env = envs.enter(case.side.env, start=not case.side.cold)
    trial = case.side.make(env, case.size)
    trial.timed_rounds = case.rounds
    try:
        m.load1 = load1()
        median = timer(trial, case)
        m.median_round_s = median
        m.value = trial.figure(median)
        m.info = trial.info()
        m.load1 = round(max(m.load1, load1()), 2)
    finally:
        trial.close()
    return m


def timed_rounds(trial: Trial, case: Case,
                 on_round: Optional[Callable[[int, int], None]] = None) -> float:
    """Warm-up rounds, then ``case.rounds`` timed rounds (``setup`` untimed before each);
    the median seconds of the timed ones.  ``on_round(done, total)`` reports progress."""
    total = case.warmup + case.rounds
    times: List[float] = []
    for i in range(total):
        if on_round is not None:
            on_round(i, total)
        trial.setup()
        t0 = time.perf_counter()
        trial.run()
        elapsed = time.perf_counter() - t0
        if i >= case.warmup:
            times.append(elapsed)
    if on_round is not None:
        on_round(total, total)
    return statistics.median(times)


class Progress:
    """Which case runs and how far along it is: one line rewritten in place on a terminal,
    a line per case otherwise (a CI log)."""

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.index = 0
        self.t0 = time.monotonic()
        self.last_write = 0.0
        self.label = ""

    def start(self, case: Case) -> None:
        self.index += 1
        self.label = (f"[{self.index:>{len(str(self.total))}}/{self.total}] "
                      f"{case.side.column}: {case.workload.label(case.quick)}")
        if not self.tty:
            self.stream.write(self.label + "\n")
            self.stream.flush()

    def round(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.tty and (done in (0, total) or now - self.last_write >= 0.1):
            self.last_write = now
            line = f"{self.label}  round {done}/{total}  ({now - self.t0:.0f} s)"
            width = shutil.get_terminal_size().columns - 1   # one line: \r must reach its start
            self.stream.write(f"\r\033[K{line[:width]}")
            self.stream.flush()

    def result(self, m: Measurement, text: str) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{self.label}  {text}\n")
        else:
            self.stream.write(f"    {text} ({m.wall_s:.1f} s)\n")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write(f"{self.total} cases in {time.monotonic() - self.t0:.0f} s\n")
        self.stream.flush()


def run_plan(cases: List[Case], progress: Optional[Progress] = None,
             describe: Optional[Callable[[Measurement], str]] = None) -> List[Measurement]:
    """Run every case in order (the plan is grouped by environment); every environment is
    stopped at the end, whatever happened."""
    envs = Envs()
    out: List[Measurement] = []
    try:
        for case in cases:
            if progress is not None:
                progress.start(case)

            def timer(trial: Trial, case: Case) -> float:
                return timed_rounds(trial, case, progress.round if progress else None)

            t0 = time.monotonic()
            try:
                m = run_case(envs, case, timer)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # reported in the table and the JSON, and the exit code
                m = Measurement(case.workload.key, case.side.column, rounds=case.rounds,
                                error=f"{type(exc).__name__}: {exc}")
                envs.stop()  # whatever state the failed trial left its environment in
            m.wall_s = round(time.monotonic() - t0, 2)
            out.append(m)
            if progress is not None:
                text = (f"skipped: {m.skipped}" if m.skipped else f"FAILED: {m.error}"
                        if m.error else describe(m) if describe else f"{m.value}")
                progress.result(m, text)
    finally:
        envs.stop()
    if progress is not None:
        progress.done()
    return out
