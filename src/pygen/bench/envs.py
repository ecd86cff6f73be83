"""Where a benchmark runs: one environment at a time, never two.

pygen and Ray would fight for the CPUs and the memory, and each would measure the other's
noise; a multiprocessing pool or joblib's workers idling beside them would too.  The
runner keeps one ``Env`` started at a time and stops it (waiting until its processes are
gone) before it starts the next.

* ``store``: a bare pygen object store in this process (the store's own benchmarks);
* ``pygen``: ``pygen.init`` with ``NUM_CPUS`` workers, warm (every worker up, the
  warm window of the arena ready); the footprint workloads start it themselves, afresh
  each round (``fresh_start``), as Ray's;
* ``plain``: nothing running (numpy's copy, round trips, a bare interpreter, writes into
  fresh /dev/shm pages);
* ``multiprocessing``: a pool of the same number of processes, and a queue for streams;
* ``joblib``: joblib's default (loky) workers, as many;
* ``ray``: ``ray.init`` with 2 CPUs, no dashboard, a new local instance (optional:
  skipped when Ray is not installed, or when ``BENCH_NO_RAY`` is set).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional

from . import tasks
from .measure import descendants, wait_gone

GiB = 1 << 30

# pygen as the benchmarks run it (init with defaults is measured on its own).
NUM_CPUS = 2
PYGEN_STORE_BYTES = 2 * GiB
STORE_BYTES = 2 * GiB + 256 * (1 << 20)   # the store benchmarks' bare store (1 GB objects)

# Ray as the figures of the issues were taken: 2 CPUs, no dashboard, a modest store; a new
# local instance always ("local": never a cluster a `ray start` on this machine left behind).
RAY_INIT_KWARGS: Dict[str, Any] = dict(
    address="local",
    num_cpus=NUM_CPUS,
    include_dashboard=False,
    ignore_reinit_error=True,
    object_store_memory=2 * 10**9,
    log_to_driver=False,
    logging_level=logging.WARNING,
)


class Env:
    """One place benchmarks run.  ``start()`` is idempotent and returns ``self``;
    ``stop()`` returns when every process the environment started is gone."""

    name = ""

    def unavailable(self) -> Optional[str]:
        """Why this environment cannot run here (the reason a side is skipped), or None."""
        return None

    def start(self) -> "Env":
        return self

    def stop(self) -> None:
        pass


class PlainEnv(Env):
    """Nothing running: the floors (numpy's copy, a pipe round trip, a bare interpreter)."""

    name = "plain"


class StoreEnv(Env):
    """A bare object store in this process, fully reserved and pre-faulted (warm)."""

    name = "store"

    def __init__(self) -> None:
        self.store: Any = None

    def start(self) -> "StoreEnv":
        if self.store is None:
            from pygen import _store
            store = _store.Store.create(STORE_BYTES)
            store.unlink()
            if not store.prefault_wait(timeout=120):
                store.close()
                raise RuntimeError("the benchmark store's pre-fault did not finish in 120 s")
            self.store = store
        return self

    def stop(self) -> None:
        import gc
        if self.store is not None:
            gc.collect()  # buffers caught in cycles hold pins
            self.store.close()
            self.store = None


class PygenEnv(Env):
    """pygen with NUM_CPUS workers and a PYGEN_STORE_BYTES arena, warm; or started with its
    defaults by ``cold_start`` (the init benchmark)."""

    name = "pygen"

    def __init__(self) -> None:
        # None, "cold" (defaults, not warm), "fresh" (fresh_start) or "ready" (start)
        self.state: Optional[str] = None

    @property
    def api(self) -> Any:
        import pygen
        return pygen

    def start(self) -> "PygenEnv":
        import pygen
        if self.state == "ready" and pygen.is_initialized():
            return self
        self.stop()
        pygen.init(num_cpus=NUM_CPUS, object_store_memory=PYGEN_STORE_BYTES)
        self.state = "ready"
        warm_pygen()
        return self

    def cold_start(self) -> None:
        """``pygen.init()`` with its defaults, as a user's first call."""
        import pygen
        pygen.init()
        self.state = "cold"

    def fresh_start(self, store_bytes: int = PYGEN_STORE_BYTES) -> None:
        """``pygen.init`` with NUM_CPUS and a ``store_bytes`` ceiling, not warmed: what a
        user's program has right after its ``init`` (the footprint benchmarks)."""
        import pygen
        pygen.init(num_cpus=NUM_CPUS, object_store_memory=store_bytes)
        self.state = "fresh"

    def wait_workers_up(self, timeout: float = 60.0) -> None:
        """Until every worker ``init`` started has said hello and the store's warm window
        is ready (where Ray's ``init`` is when it returns), without running a task."""
        import pygen.context
        node = pygen.context.current().node  # type: ignore[union-attr]
        pool = node.pool
        deadline = time.monotonic() + timeout
        while pool.starting or sum(1 for _ in pool.task_workers()) < NUM_CPUS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pygen's {NUM_CPUS} workers were not up {timeout} s "
                                   f"after init")
            time.sleep(0.005)
        node.store.prefault_wait(timeout=timeout)

    def shutdown(self) -> None:
        """What a user calls (the shutdown benchmark times this)."""
        import pygen
        if pygen.is_initialized():
            pygen.shutdown()
        self.state = None

    def settle(self) -> None:
        """pygen's shutdown returns when its workers are reaped; a large arena is unmapped
        by a detached thread after it: wait for that (untimed), the next round's memory
        and CPUs are then free."""
        from pygen import _store
        _store.wait_released(timeout=60)

    def stop(self) -> None:
        self.shutdown()


class RayEnv(Env):
    """Ray with RAY_INIT_KWARGS, warm (its workers are started lazily: the warm-up starts
    them and exercises the task path)."""

    name = "ray"

    def __init__(self) -> None:
        self.state: Optional[str] = None
        self._others: List[int] = []   # processes of ours that are not Ray's (a forkserver)
        self._ray: List[int] = []      # Ray's processes at its last shutdown

    def unavailable(self) -> Optional[str]:
        return ray_unavailable()

    @property
    def api(self) -> Any:
        import ray
        return ray

    def start(self) -> "RayEnv":
        if self.state == "fresh":
            self.stop()
        if self.state is None:
            self.cold_start()
        if self.state != "ready":
            warm_ray()
            self.state = "ready"
        return self

    def cold_start(self) -> None:
        import ray
        self._others = descendants()
        ray.init(**RAY_INIT_KWARGS)
        self.state = "cold"

    def fresh_start(self, store_bytes: int = PYGEN_STORE_BYTES) -> None:
        """``ray.init`` as RAY_INIT_KWARGS, with pygen's ceiling as its store's size."""
        import ray
        self._others = descendants()
        ray.init(**dict(RAY_INIT_KWARGS, object_store_memory=store_bytes))
        self.state = "fresh"   # not what start() gives: start() restarts it

    def wait_workers_up(self, timeout: float = 60.0) -> None:
        """Ray's ``init`` returns with its processes up: nothing to wait for."""

    def shutdown(self) -> None:
        """``ray.shutdown()`` alone (what the shutdown benchmark times)."""
        import ray
        if ray.is_initialized():
            self._ray = [p for p in descendants() if p not in self._others]
            ray.shutdown()
        self.state = None

    def settle(self) -> None:
        """Wait (untimed) until the processes Ray had started are gone."""
        left = wait_gone(self._ray, timeout=15.0)
        self._ray = []
        if left:
            import warnings
            warnings.warn(f"Ray processes still alive 15 s after ray.shutdown(): {left}")

    def stop(self) -> None:
        import sys
        if "ray" not in sys.modules:
            return
        import ray
        if ray.is_initialized():
            self.shutdown()
        self.settle()
        self.state = None


class MultiprocessingEnv(Env):
    """A ``multiprocessing`` pool of NUM_CPUS processes (forkserver), warm, and a queue its
    workers write streams to (``tasks.stream_into_queue``)."""

    name = "multiprocessing"

    def __init__(self) -> None:
        self.pool: Any = None
        self.queue: Any = None

    def start(self) -> "MultiprocessingEnv":
        if self.pool is None:
            import multiprocessing
            ctx = multiprocessing.get_context("forkserver")
            self.queue = ctx.SimpleQueue()
            self.pool = ctx.Pool(NUM_CPUS, initializer=tasks.set_queue, initargs=(self.queue,))
            pids = set()
            for _ in range(10):
                pids |= set(self.pool.map(tasks.sleep_pid, [0.2] * NUM_CPUS, chunksize=1))
                if len(pids) >= NUM_CPUS:
                    break
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        return self.pool.apply(fn, args)

    def map(self, fn: Any, items: Any) -> List[Any]:
        return list(self.pool.map(fn, items, chunksize=1))

    def stream(self, fn: Any, *args: Any) -> Iterator[Any]:
        """The items of generator ``fn(*args)`` run in a pool worker, as they come."""
        done = self.pool.apply_async(tasks.stream_into_queue, (fn, args))
        get = self.queue.get
        while True:
            item = get()
            if isinstance(item, str) and item == tasks.END_OF_STREAM:
                break
            yield item
        done.get()  # the producer's error, if it raised

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
            self.queue.close()
            self.queue = None


class JoblibEnv(Env):
    """joblib's ``Parallel(n_jobs=NUM_CPUS, batch_size=1)`` with its default backend (loky),
    kept open between calls so its workers stay up, as a user's ``with Parallel(...)`` block."""

    name = "joblib"

    def __init__(self) -> None:
        self.parallel: Any = None
        self._others: List[int] = []

    def unavailable(self) -> Optional[str]:
        if importlib.util.find_spec("joblib") is None:
            return "joblib is not installed (pip install joblib, or pip install 'pygen[bench]')"
        return None

    def start(self) -> "JoblibEnv":
        if self.parallel is None:
            from joblib import Parallel, delayed
            self._others = descendants()   # not joblib's (a multiprocessing forkserver lives on)
            self.parallel = Parallel(n_jobs=NUM_CPUS, batch_size=1)
            self.parallel.__enter__()
            self.parallel(delayed(tasks.sleep_pid)(0.2) for _ in range(NUM_CPUS))
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        from joblib import delayed
        return self.parallel([delayed(fn)(*args)])[0]

    def map(self, fn: Any, items: Any) -> List[Any]:
        from joblib import delayed
        return list(self.parallel(delayed(fn)(i) for i in items))

    def stop(self) -> None:
        if self.parallel is not None:
            self.parallel.__exit__(None, None, None)
            self.parallel = None
            # loky keeps its workers for reuse (minutes): end them now
            from joblib.externals.loky import get_reusable_executor
            # its workers, not its resource tracker (which lives as long as this process)
            theirs = [p for p in descendants()
                      if p not in self._others and "resource_tracker" not in _cmdline(p)]
            get_reusable_executor().shutdown(wait=True)
            wait_gone(theirs, timeout=15.0)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_unavailable() -> Optional[str]:
    if os.environ.get("BENCH_NO_RAY"):
        return "BENCH_NO_RAY is set"
    if importlib.util.find_spec("ray") is None:
        return ("Ray is not installed (pip install 'ray==2.60.0', or pip install 'pygen[ray]', "
                "to measure it beside pygen)")
    return None


# Keep Ray quiet and local; set before ray is imported (the environment of its processes too).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def warm_pygen() -> None:
    """Every worker up, the arena pre-faulted in the driver and in every worker."""
    import pygen
    import pygen.context
    node = pygen.context.current().node  # type: ignore[union-attr]  # the driver's node
    node.store.prefault_wait(timeout=120)
    probe = pygen.remote(tasks.warm_probe)
    for _ in range(10):
        pids = set(pygen.get([probe.remote(0.2) for _ in range(NUM_CPUS)]))
        if len(pids) == NUM_CPUS:
            return
    raise RuntimeError(f"pygen: the {NUM_CPUS} probes never ran in {NUM_CPUS} distinct workers")


def warm_ray() -> None:
    """Ray's workers started (Ray starts them lazily) and its task path exercised."""
    import ray
    probe = ray.remote(tasks.sleep_pid)
    ray.get([probe.remote(0.5) for _ in range(NUM_CPUS)])
    ray.get([probe.remote(0) for _ in range(200)])


def all_envs() -> Dict[str, Env]:
    """A fresh environment of each kind, by name."""
    envs: List[Env] = [StoreEnv(), PygenEnv(), PlainEnv(), MultiprocessingEnv(), JoblibEnv(),
                       RayEnv()]
    return {e.name: e for e in envs}


# The order environments run in: the bare store first (nothing else mapped), Ray last.
ENV_ORDER = ("store", "pygen", "plain", "multiprocessing", "joblib", "ray")
