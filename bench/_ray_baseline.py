"""One runtime at a time: pygen or Ray, never both (they would fight for the 2 CPUs and the
memory, and each would measure the other's noise).

A benchmark module owns one ``Runtimes`` (a module-scoped fixture): ``runtimes.pygen()``
stops Ray (and waits until its processes are gone) before starting pygen, and
``runtimes.ray()`` shuts pygen down before starting Ray.  Modules run their pygen tests
first and their Ray tests after, so Ray is started once per module.

Ray is optional (``pip install -e '.[ray]'`` or ``pip install 'ray==2.60.0'``); when it
cannot be imported (or ``BENCH_NO_RAY=1`` is set), ``runtimes.ray()`` skips the test with
``RAY_SKIP_REASON``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import pytest

import _workloads

GiB = 1 << 30
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

# pygen as the benchmarks run it (init with defaults is measured on its own).
PYGEN_NUM_CPUS = 2
PYGEN_STORE_BYTES = 2 * GiB

# Ray as the figures were taken: 2 CPUs, no dashboard, a modest store.
RAY_INIT_KWARGS: Dict[str, Any] = dict(
    num_cpus=2,
    include_dashboard=False,
    ignore_reinit_error=True,
    object_store_memory=2 * 10**9,
    log_to_driver=False,
    logging_level=logging.WARNING,
)

# Keep Ray quiet and local; set before ray is imported (environment of its processes too).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

RAY_SKIP_REASON: Optional[str] = None
if os.environ.get("BENCH_NO_RAY"):
    RAY_SKIP_REASON = "BENCH_NO_RAY is set: Ray's rows are skipped"
elif importlib.util.find_spec("ray") is None:
    RAY_SKIP_REASON = ("Ray is not installed: Ray's rows are skipped (pip install -e '.[ray]', "
                       "or pip install 'ray==2.60.0', to measure them beside pygen's)")


def ray_version() -> str:
    import ray
    return ray.__version__


def _descendants() -> List[int]:
    import psutil
    try:
        return [p.pid for p in psutil.Process().children(recursive=True)]
    except psutil.Error:
        return []


def wait_gone(pids: List[int], timeout: float) -> List[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); the survivors."""
    import psutil
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        alive = []
        for pid in left:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                pass
        left = alive
        if left:
            time.sleep(0.05)
    return left


class Runtimes:
    """The runtime of a benchmark module: pygen or Ray, one at a time."""

    def __init__(self) -> None:
        self.active: Optional[str] = None

    # -- pygen ---------------------------------------------------------------------------
    def pygen(self, warm: bool = True) -> Any:
        """pygen with PYGEN_NUM_CPUS workers and a PYGEN_STORE_BYTES arena; with ``warm``,
        every worker is up and every process has pre-faulted the arena (steady state)."""
        import pygen
        if self.active == "pygen" and pygen.is_initialized():
            return pygen
        self.stop()
        pygen.init(num_cpus=PYGEN_NUM_CPUS, object_store_memory=PYGEN_STORE_BYTES)
        self.active = "pygen"
        if warm:
            warm_pygen()
        return pygen

    def stop_pygen(self) -> None:
        import pygen
        if pygen.is_initialized():
            pygen.shutdown()
        if self.active == "pygen":
            self.active = None

    # -- Ray -----------------------------------------------------------------------------
    def ray(self) -> Any:
        """Ray with RAY_INIT_KWARGS, started once (the test is skipped without Ray)."""
        if RAY_SKIP_REASON:
            pytest.skip(RAY_SKIP_REASON)
        import ray
        if self.active == "ray" and ray.is_initialized():
            return ray
        self.stop()
        start_ray()
        self.active = "ray"
        warm_ray()
        return ray

    def stop_ray(self) -> float:
        """Shut Ray down and wait for its processes; the seconds ``ray.shutdown()`` took."""
        if RAY_SKIP_REASON:
            return 0.0
        if "ray" not in sys.modules:
            return 0.0
        import ray
        took = 0.0
        if ray.is_initialized():
            took = stop_ray_now()
        if self.active == "ray":
            self.active = None
        return took

    def stop(self) -> None:
        self.stop_pygen()
        self.stop_ray()


def start_ray() -> None:
    import ray
    # Ray's workers import the benchmark modules' functions by name: give them bench/.
    path = os.environ.get("PYTHONPATH", "")
    if BENCH_DIR not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = BENCH_DIR + (os.pathsep + path if path else "")
    ray.init(**RAY_INIT_KWARGS)


def stop_ray_now() -> float:
    """ray.shutdown(), timed; then wait (untimed) until Ray's processes are gone."""
    import ray
    before = _descendants()
    t0 = time.perf_counter()
    ray.shutdown()
    took = time.perf_counter() - t0
    left = wait_gone(before, timeout=15.0)
    if left:
        import warnings
        warnings.warn(f"Ray processes still alive 15 s after ray.shutdown(): {left}")
    return took


def warm_pygen() -> None:
    """Every worker up, the arena pre-faulted in the driver and in every worker."""
    import pygen
    import pygen.context
    node = pygen.context.current().node  # the driver's in-process node (DriverClient)
    node.store.prefault_wait(timeout=120)
    probe = pygen.remote(_workloads.warm_probe)
    for _ in range(10):
        pids = set(pygen.get([probe.remote(0.2) for _ in range(PYGEN_NUM_CPUS)]))
        if len(pids) == PYGEN_NUM_CPUS:
            return
    raise RuntimeError(f"pygen: the {PYGEN_NUM_CPUS} probes never ran in "
                       f"{PYGEN_NUM_CPUS} distinct workers")


def warm_ray() -> None:
    """Ray's workers started (Ray starts them lazily) and its task path exercised."""
    import ray
    probe = ray.remote(_workloads.sleep_pid)
    ray.get([probe.remote(0.5) for _ in range(RAY_INIT_KWARGS["num_cpus"])])
    ray.get([probe.remote(0) for _ in range(200)])


def ray_or_skip() -> Any:
    """The ray module, or skip the test with RAY_SKIP_REASON."""
    if RAY_SKIP_REASON:
        pytest.skip(RAY_SKIP_REASON)
    import ray
    return ray
