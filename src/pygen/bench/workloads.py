"""Every benchmark workload, defined once: what one round does, at which size, and the
code that does it on each side (pygen, Ray, multiprocessing, joblib, and the floors).

``pygen bench`` and the pytest-benchmark suite in ``bench/`` both run ``plan()``: the same
workloads, the same sizes, the same code.  To add a workload, append one ``Workload`` to
``WORKLOADS`` (or to the list a ``_...()`` function below builds): its sides say where it
runs; everything else (order, progress, table, JSON, chart, pytest) follows.

A side builds a ``Trial`` from a started environment (``envs``) and a ``Size``: ``run()``
is one timed round, ``setup()`` what must happen untimed before each round, and
``figure(median_seconds)`` turns the median round into the metric (a rate, a time, GB/s,
MiB).  pygen and Ray run the very same function (``_ray_api`` sides get the ``pygen`` or
``ray`` module as ``api``) with the very same ``Size``: only the number of timed rounds
differs (Ray is 10-20x slower, so it gets fewer samples of the same work).
"""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import tasks
from .measure import PipeEcho, PipeRoundTrip, RssSampler, machine_shmem, shm_held

MB = 1_000_000
PAGE = 4096


@dataclass(frozen=True)
class Size:
    """What one round does, and how many rounds are timed."""

    n: int                      # tasks, items, arrays, trials... per round (the workload)
    rounds: int                 # timed rounds on the fast sides
    slow_rounds: int            # timed rounds on the slow sides (Ray, joblib): same work
    warmup: int = 1             # untimed rounds first (fast sides)
    slow_warmup: int = 1
    nbytes: int = 0             # bytes per item, where items are arrays
    seconds: float = 0.0        # a wait the workload makes (idle, after freeing)


class Trial:
    """One side of one workload, ready to run: ``setup`` (untimed) then ``run`` (timed),
    ``rounds`` times after the warm-up; ``figure`` turns the median round into the metric."""

    def __init__(self, run: Callable[[], None], figure: Callable[[float], float], *,
                 setup: Optional[Callable[[], None]] = None,
                 close: Optional[Callable[[], None]] = None,
                 info: Optional[Callable[[], Dict[str, Any]]] = None) -> None:
        self.run = run
        self.figure = figure
        self.setup = setup or _nothing
        self.close = close or _nothing
        self.info = info or dict
        self.timed_rounds = 1   # set by whoever runs it: the last rounds are the timed ones


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Side:
    """Where a workload runs: the column of the table, the environment it needs, the code."""

    column: str                         # "pygen", "Ray", "multiprocessing", "joblib", or a floor
    env: str                            # an envs.ENV_ORDER name
    make: Callable[[Any, Size], Trial]  # (env, size) -> Trial
    slow: bool = False                  # use the size's slow_rounds / slow_warmup
    cold: bool = False                  # the env is not started for it (it starts it itself)
    in_quick: bool = True               # False: skipped by --quick (too slow for a minute)


@dataclass(frozen=True)
class Workload:
    key: str                # stable id, in JSON and for --compare
    title: str              # the row's label; {n} and {mb} are filled from the size
    unit: str               # "/s" (a rate), "s" (a time), "GB/s", "MiB"
    higher_is_better: bool
    full: Size
    quick: Size
    sides: Tuple[Side, ...]
    goal: str = ""
    note: str = ""

    def size(self, quick: bool) -> Size:
        return self.quick if quick else self.full

    def label(self, quick: bool) -> str:
        s = self.size(quick)
        return self.title.format(n=f"{s.n:,}", mb=f"{s.nbytes // MB:,}",
                                 gb=f"{s.n * s.nbytes / 1e9:g}", s=f"{s.seconds:g}")


# Columns: pygen first, Ray, the other ways to run Python in processes, then the floors
# (what no runtime can beat: a copy, a round trip, a bare interpreter, fresh shared pages).
PYGEN, RAY, MP, JOBLIB = "pygen", "Ray", "multiprocessing", "joblib"
NUMPY_COPY, PIPE, SOCKET, PYTHON_START = ("numpy copy", "pipe round trip", "socket round trip",
                                          "python start")
FRESH_SHM_2, FRESH_SHM_1 = "fresh shm write, 2 threads", "fresh shm write, 1 thread"
FLOORS = (NUMPY_COPY, PIPE, SOCKET, PYTHON_START, FRESH_SHM_2, FRESH_SHM_1)
COLUMNS = (PYGEN, RAY, MP, JOBLIB) + FLOORS


# == figures ===================================================================================
def per_second(n: int) -> Callable[[float], float]:
    return lambda median: n / median


def taken(median: float) -> float:
    return median


def gb_per_second(nbytes: int) -> Callable[[float], float]:
    return lambda median: nbytes / median / 1e9


def _both(make: Callable[[Any, Size], Trial]) -> Tuple[Side, Side]:
    """The pygen side and the Ray side of a workload written once against the Ray-style
    API (``api.remote``, ``api.get``, ``api.put``): the same code, the same size."""
    def on(env: Any, size: Size) -> Trial:
        return make(env.api, size)
    return Side(PYGEN, "pygen", on), Side(RAY, "ray", on, slow=True)


# == starting and stopping ======================================================================
def _init_first_result(env: Any, size: Size) -> Trial:
    """A fresh ``init`` (pygen: its defaults; Ray: 2 CPUs, no dashboard), one trivial task,
    its result.  The runtime is shut down (untimed) before each round; the last round's
    stays up for the shutdown benchmark that follows."""
    f = env.api.remote(tasks.noop)
    env.stop()

    def setup() -> None:
        env.shutdown()
        env.settle()

    def run() -> None:
        env.cold_start()
        assert env.api.get(f.remote(1)) == 1

    return Trial(run, taken, setup=setup)


def _shutdown(env: Any, size: Size) -> Trial:
    """``shutdown()`` of a runtime that has run one task (started untimed before each round,
    unless the init benchmark left one up)."""
    f = env.api.remote(tasks.noop)

    def setup() -> None:
        if env.state is None:
            env.settle()
            env.cold_start()
        assert env.api.get(f.remote(1)) == 1

    return Trial(env.shutdown, taken, setup=setup, close=env.stop)


# The modules a worker imports: a fresh interpreter importing them is the floor of any
# design that starts worker processes.
WORKER_IMPORTS = "import pygen.core.worker"


def _python_start(env: Any, size: Size) -> Trial:
    def run() -> None:
        subprocess.run([sys.executable, "-c", WORKER_IMPORTS], check=True)
    return Trial(run, taken)


# == tasks ===================================================================================
def _serial(api: Any, size: Size) -> Trial:
    f, get, n = api.remote(tasks.noop), api.get, size.n

    def run() -> None:
        for i in range(n):
            get(f.remote(i))
    return Trial(run, per_second(n))


def _serial_calls(env: Any, size: Size) -> Trial:
    """multiprocessing's ``pool.apply``: one task, then its result, n times."""
    call, n = env.call, size.n

    def run() -> None:
        for i in range(n):
            call(tasks.noop, i)
    return Trial(run, per_second(n))


def _socket(env: Any, size: Size) -> Trial:
    """32 bytes there and back over a socketpair, raw (no pickling, no framing)."""
    echo = PipeEcho()
    return Trial(lambda: echo.round_trips(size.n), per_second(size.n), close=echo.close)


def _pipe(env: Any, size: Size) -> Trial:
    """``multiprocessing.Pipe`` ping-pong with a child process: send(i), recv()."""
    pipe = PipeRoundTrip()
    return Trial(lambda: pipe.round_trips(size.n), per_second(size.n), close=pipe.close)


def _bulk(api: Any, size: Size) -> Trial:
    f, get, n = api.remote(tasks.noop), api.get, size.n

    def run() -> None:
        refs = [f.remote(i) for i in range(n)]
        assert get(refs)[-1] == n - 1
    return Trial(run, per_second(n))


def _bulk_map(env: Any, size: Size) -> Trial:
    """``pool.map(f, range(n), chunksize=1)`` / ``Parallel(batch_size=1)(delayed(f)(i) for
    i in range(n))``: n calls, each dispatched on its own, as pygen's and Ray's tasks are."""
    n = size.n

    def run() -> None:
        assert env.map(tasks.noop, range(n))[-1] == n - 1
    return Trial(run, per_second(n))


# == generators ===============================================================================
def _stream_items(api: Any, size: Size) -> Trial:
    return _consume_stream(api.remote(tasks.count).remote, api.get, size)


def _consume_stream(start: Callable[[int], Any], get: Callable[[Any], Any], size: Size,
                    close: Optional[Callable[[], None]] = None) -> Trial:
    """``next`` + ``get`` of each of the n small ints ``start(n)``'s generator yields, and
    its end; warmed by a stream of 1,000 first (the function registered, the path warm)."""
    n = size.n

    def consume(n: int = n) -> None:
        gen = start(n)
        total = 0
        for _ in range(n):
            total += get(next(gen))
        try:
            next(gen)
        except StopIteration:
            pass
        else:
            raise AssertionError("the stream did not end after its last item")
        assert total == n * (n - 1) // 2

    consume(min(n, 1_000))
    return Trial(consume, per_second(n), close=close)


def _stream_items_mp(env: Any, size: Size) -> Trial:
    n = size.n

    def consume() -> None:
        assert sum(env.stream(tasks.count, n)) == n * (n - 1) // 2
    return Trial(consume, per_second(n))


def _first_item(api: Any, size: Size) -> Trial:
    """From ``.remote()`` to the first item's value; the generator keeps running after its
    first yield, so the item cannot ride with the task's end.  One trial per round."""
    f, get = api.remote(tasks.first_then_more), api.get
    current: List[Any] = []

    def drain() -> None:  # untimed: the previous trial's task has ended before the next
        while current:
            for _ in current.pop():
                pass

    def first() -> None:
        gen = f.remote()
        assert get(next(gen)) == 0
        current.append(gen)

    for _ in range(5):
        drain()
        first()
    drain()
    return Trial(first, taken, setup=drain, close=drain)


def _first_item_mp(env: Any, size: Size) -> Trial:
    current: List[Any] = []

    def drain() -> None:
        while current:
            for _ in current.pop():
                pass

    def first() -> None:
        stream = env.stream(tasks.first_then_more)
        assert next(stream) == 0
        current.append(stream)

    return Trial(first, taken, setup=drain, close=drain)


def _consume_big(items: Any, get: Callable[[Any], Any], size: Size, zero_copy: bool) -> None:
    pages = len(range(0, size.nbytes, PAGE))
    total = 0
    for item in items:
        a = get(item)
        if zero_copy:
            assert not a.flags.writeable and a.nbytes == size.nbytes
        total += int(a[::PAGE].sum())  # one byte per page: the data is really there
        del a, item
    assert total == size.n * pages * 7


def _large_items(api: Any, size: Size) -> Trial:
    """A generator yielding n arrays, consumed zero-copy (read-only views of the store),
    from ``.remote()`` to the last item."""
    f = api.remote(tasks.big_items)

    def consume() -> None:
        _consume_big(f.remote(size.n, size.nbytes), api.get, size, zero_copy=True)

    consume()  # the source array made in the worker(s), the arena's blocks warm
    return Trial(consume, gb_per_second(size.n * size.nbytes))


def _large_items_mp(env: Any, size: Size) -> Trial:
    """The same generator in a pool worker; each array pickled through the queue's pipe."""
    def consume() -> None:
        _consume_big(env.stream(tasks.big_items, size.n, size.nbytes), lambda a: a, size,
                     zero_copy=False)

    return Trial(consume, gb_per_second(size.n * size.nbytes))


def _numpy_copy(env: Any, size: Size) -> Trial:
    """``np.copyto`` of one array of the size of the workload's items into a warm array:
    the copy the store does at each put or yield, without the store."""
    import numpy as np
    src = np.full(size.nbytes, 7, dtype=np.uint8)
    dst = np.empty_like(src)
    dst[:] = 1  # faulted in: copyto measures the copy alone
    for _ in range(3):
        np.copyto(dst, src)
    return Trial(lambda: np.copyto(dst, src), gb_per_second(size.nbytes))


# == actors ===================================================================================
def _actor(api: Any, cls: type) -> Tuple[Any, Callable[[], None]]:
    """A new actor of ``cls`` (its process up: one call answered) and how to end it."""
    handle = api.remote(cls).remote()
    assert api.get(handle.noop.remote(0)) == 0

    def end() -> None:
        api.kill(handle)
    return handle, end


def _actor_serial(api: Any, size: Size) -> Trial:
    a, end = _actor(api, tasks.Echo)
    f, get, n = a.noop.remote, api.get, size.n
    for i in range(200):
        get(f(i))

    def run() -> None:
        for i in range(n):
            get(f(i))
    return Trial(run, per_second(n), close=end)


def _actor_bulk(cls: type) -> Callable[[Any, Size], Trial]:
    def make(api: Any, size: Size) -> Trial:
        a, end = _actor(api, cls)
        f, get, n = a.noop.remote, api.get, size.n
        get([f(i) for i in range(1_000)])

        def run() -> None:
            refs = [f(i) for i in range(n)]
            assert get(refs)[-1] == n - 1
        return Trial(run, per_second(n), close=end)
    return make


def _actor_stream(cls: type) -> Callable[[Any, Size], Trial]:
    def make(api: Any, size: Size) -> Trial:
        a, end = _actor(api, cls)
        return _consume_stream(a.count.remote, api.get, size, close=end)
    return make


# == memory: the seed's pattern (a list of large arrays vs a generator of them) =================
class _Peaks:
    """Peak RssAnon of the worker of each round (the task reports its pid to a sampler)."""

    def __init__(self, size: Size) -> None:
        self.size = size
        self.path = os.path.join(tempfile.gettempdir(), f"pygen-bench-pid-{os.getpid()}")
        self.rounds: List[RssSampler] = []

    def sample(self, fn: Callable[[str], Any]) -> None:
        sampler = RssSampler(self.path).start()
        try:
            fn(self.path)
        finally:
            self.rounds.append(sampler.stop())

    def trial(self, run_once: Callable[[str], None]) -> Trial:
        """The figure is the median peak of the timed rounds (the last ones), in MiB."""
        def timed() -> List[RssSampler]:
            return self.rounds[-max(1, trial.timed_rounds):]

        def figure(median: float) -> float:
            return statistics.median(s.peak_kb for s in timed()) / 1024

        def info() -> Dict[str, Any]:
            measured = timed()
            growth = statistics.median(s.peak_kb - s.start_kb for s in measured) / 1024
            start = statistics.median(s.start_kb for s in measured) / 1024
            return {"start_rss_anon_MiB": round(start, 1), "growth_MiB": round(growth, 1),
                    "arrays_worth": round(growth * 2**20 / self.size.nbytes, 2),
                    "samples": [s.samples for s in measured]}

        trial = Trial(lambda: self.sample(run_once), figure, setup=_settle, info=info)
        return trial


def _settle() -> None:
    gc.collect()   # the previous round's objects freed before the next round
    time.sleep(0.2)


def _memory(kind: str) -> Callable[[Any, Size], Trial]:
    fn = tasks.big_list if kind == "list" else tasks.big_generator

    def make(api: Any, size: Size) -> Trial:
        f = api.remote(fn).options(num_returns=size.n, max_retries=0)

        def run_once(path: str) -> None:
            refs = f.remote(size.n, size.nbytes, path)
            last = api.get(refs[-1])
            assert last.nbytes == size.nbytes and last[0] == size.n - 1
            del last, refs

        return _Peaks(size).trial(run_once)
    return make


def _memory_mp(kind: str) -> Callable[[Any, Size], Trial]:
    """multiprocessing: the list returned by ``pool.apply``; the generator's arrays through
    the queue, each dropped by the consumer."""
    def make(env: Any, size: Size) -> Trial:
        def run_once(path: str) -> None:
            if kind == "list":
                last = env.call(tasks.big_list, size.n, size.nbytes, path)[-1]
            else:
                for last in env.stream(tasks.big_generator, size.n, size.nbytes, path):
                    pass
            assert last.nbytes == size.nbytes and last[0] == size.n - 1

        return _Peaks(size).trial(run_once)
    return make


# == the object store alone (no runtime: a bare store in this process) ==========================
def _oid(n: int) -> bytes:
    return b"BNCH" + n.to_bytes(16, "big")


def _store_put(env: Any, size: Size) -> Trial:
    """serialize + write into the store + delete, of one numpy array (the warm arena)."""
    import numpy as np

    from pygen.serialization import serialize
    store = env.store
    arr = np.random.default_rng(size.nbytes).integers(0, 255, size=size.nbytes, dtype=np.uint8)
    k = _oid(size.nbytes // MB)

    def put() -> None:
        serialize(arr).write_to(store, k)
        store.delete(k)

    for _ in range(3):   # warm: the block (LIFO free lists) and the code paths
        put()
    return Trial(put, gb_per_second(size.nbytes))


def _store_get(env: Any, size: Size) -> Trial:
    """store.get + deserialize to a (zero-copy) numpy array."""
    import numpy as np

    from pygen.serialization import deserialize, serialize
    store = env.store
    k = _oid(10_000 + size.nbytes % 9973)
    arr = np.ones(size.nbytes, dtype=np.uint8)
    serialize(arr).write_to(store, k)
    del arr

    def get() -> Any:
        _, value = deserialize(store.get(k))
        return value

    value = get()
    assert isinstance(value, np.ndarray) and value.nbytes == size.nbytes
    assert not value.flags.writeable
    del value

    def close() -> None:
        gc.collect()
        store.delete(k)
    return Trial(get, taken, close=close)


def _store_small_objects(env: Any, size: Size) -> Trial:
    """create + seal + delete of a 16-byte object, n times, from Python, one process."""
    store, k, n = env.store, _oid(99), size.n
    create, seal, delete = store.create_object, store.seal, store.delete

    def loop() -> None:
        for _ in range(n):
            create(k, 16)
            seal(k)
            delete(k)
    return Trial(loop, per_second(n))


def _store_cycle(env: Any, size: Size) -> Trial:
    """The runtime's per-object path for a small value in the store: write_to, get,
    deserialize, delete."""
    import numpy as np

    from pygen.serialization import deserialize, serialize
    store, k = env.store, _oid(98)
    v = serialize(np.arange(128, dtype=np.int64))

    def cycle() -> None:
        v.write_to(store, k)
        b = store.get(k)
        _, a = deserialize(b)
        del a, b
        store.delete(k)
    return Trial(cycle, taken)


def _api_put(api: Any, size: Size) -> Trial:
    """``put`` of one numpy array through the runtime's API, then the ref dropped."""
    import numpy as np
    arr = np.random.default_rng(1).integers(0, 255, size=size.nbytes, dtype=np.uint8)
    put = api.put

    def run() -> None:
        ref = put(arr)
        del ref

    for _ in range(3):
        run()
    return Trial(run, gb_per_second(size.nbytes))


# == footprint: memory follows use (issue 9) ===================================================
# pygen with NUM_CPUS workers and a 2 GiB ceiling (3 GiB for the shutdown with 2 GB stored),
# a fresh runtime each round, not warmed: what a program has right after its init.  Ray the
# same way, with a store of the same size.  "Held": the bytes of the /dev/shm files the
# runtime's processes (this one and those below it) have open (measure.shm_held).
MiB = 1 << 20
_SOURCES: Dict[int, Any] = {}


def _source(nbytes: int) -> Any:
    """The array every footprint workload stores (random bytes, made once per run)."""
    a = _SOURCES.get(nbytes)
    if a is None:
        import numpy as np
        a = _SOURCES[nbytes] = np.random.default_rng(9).integers(0, 255, size=nbytes,
                                                                 dtype=np.uint8)
    return a


def _fresh_runtime(env: Any, store_bytes: Optional[int] = None) -> None:
    """Whatever runs stopped (its processes gone, its memory back), then a fresh start."""
    env.shutdown()
    env.settle()
    gc.collect()
    if store_bytes is None:
        env.fresh_start()
    else:
        env.fresh_start(store_bytes)


def _first_put(settled: bool) -> Callable[[Any, Size], Trial]:
    """A fresh runtime each round (untimed), then one put of the array: at once after
    ``init``, or (``settled``) once the workers ``init`` started are up."""
    def make(env: Any, size: Size) -> Trial:
        src = _source(size.nbytes)
        refs: List[Any] = []

        def setup() -> None:
            refs.clear()
            _fresh_runtime(env)
            if settled:
                env.wait_workers_up()

        def run() -> None:
            refs.append(env.api.put(src))

        def close() -> None:
            refs.clear()
            env.shutdown()
        return Trial(run, gb_per_second(size.nbytes), setup=setup, close=close)
    return make


REPEATED_PUT_WARMUP = 12   # puts before the timed ones: 2.4 GB, more than either store holds


def _repeated_put(api: Any, size: Size) -> Trial:
    """``r = put(a)`` in a loop: each put's block is made while the previous one is still
    held, and that one freed after.  Timed in the steady state: after more puts than the
    store holds, so every page a store hands out has been touched before (pygen reuses two
    blocks in turn from the start; Ray's store first spreads over fresh memory)."""
    src = _source(size.nbytes)
    held: List[Any] = []

    def run() -> None:
        held[:] = [api.put(src)]

    for _ in range(REPEATED_PUT_WARMUP):
        run()
    return Trial(run, gb_per_second(size.nbytes), close=held.clear)


def _repeated_put_on(env: Any, size: Size) -> Trial:
    return _repeated_put(env.api, size)


def _fresh_shm_write(threads: int) -> Callable[[Any, Size], Trial]:
    """The array written into a new /dev/shm file's pages (mapped, never touched before),
    by ``threads`` threads, each its part: the least any shared-memory store pays for
    memory it did not hold yet.  The file is made and mapped untimed."""
    def make(env: Any, size: Size) -> Trial:
        import mmap
        import threading

        import numpy as np
        src = _source(size.nbytes)
        bounds = [(size.nbytes * i // threads, size.nbytes * (i + 1) // threads)
                  for i in range(threads)]
        state: Dict[str, Any] = {}

        def release() -> None:
            dst, mm = state.pop("dst", None), state.pop("mm", None)
            del dst
            if mm is not None:
                mm.close()

        def setup() -> None:
            release()
            path = f"/dev/shm/pygen-bench-{os.getpid()}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.unlink(path)
                os.ftruncate(fd, size.nbytes)
                mm = mmap.mmap(fd, size.nbytes)
            finally:
                os.close(fd)
            state["mm"], state["dst"] = mm, np.frombuffer(mm, dtype=np.uint8)

        def run() -> None:
            dst = state["dst"]
            workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b]))
                       for a, b in bounds]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        return Trial(run, gb_per_second(size.nbytes), setup=setup, close=release)
    return make


class _Readings:
    """A figure read at the end of each round (not its time): the trial's figure is the
    median reading of the timed rounds (the last ones), ``info`` the medians of what was
    noted beside it."""

    def __init__(self) -> None:
        self.values: List[float] = []
        self.notes: List[Dict[str, float]] = []

    def held(self, **notes: float) -> None:
        """Read what the runtime holds in /dev/shm now (measure.shm_held)."""
        held, rss = shm_held()
        self.values.append(held / MiB)
        self.notes.append(dict(rss_shmem_MiB=rss / MiB,
                               machine_shmem_MiB=machine_shmem() / MiB, **notes))

    def trial(self, run: Callable[[], None], **kw: Any) -> Trial:
        def timed(items: List[Any]) -> List[Any]:
            return items[-max(1, trial.timed_rounds):]

        def figure(median: float) -> float:
            return statistics.median(timed(self.values))

        def info() -> Dict[str, Any]:
            notes = timed(self.notes)
            return {k: round(statistics.median(n[k] for n in notes), 1) for k in notes[0]}

        trial = Trial(run, figure, info=info, **kw)
        return trial


def _store_notes(env: Any) -> Dict[str, float]:
    """pygen: the object table and the warm window (the idle goal is tables + 64 MiB)."""
    if env.name != "pygen":
        return {}
    import pygen.state
    st = pygen.state.store_stats()
    return {"tables_MiB": st["tables"] / MiB, "window_MiB": st["window"] / MiB}


def _held_idle(env: Any, size: Size) -> Trial:
    """Held ``seconds`` after a fresh ``init``, nothing stored."""
    r = _Readings()

    def run() -> None:
        time.sleep(size.seconds)
        r.held(**_store_notes(env))

    return r.trial(run, setup=lambda: _fresh_runtime(env), close=env.shutdown)


def _held_full(env: Any, size: Size) -> Trial:
    """Held with n arrays stored (put one after the other, all kept)."""
    r = _Readings()
    src = _source(size.nbytes)
    refs: List[Any] = []

    def setup() -> None:
        refs.clear()
        _fresh_runtime(env)

    def run() -> None:
        refs.extend(env.api.put(src) for _ in range(size.n))
        r.held()

    def close() -> None:
        refs.clear()
        env.shutdown()
    return r.trial(run, setup=setup, close=close)


def _held_freed(env: Any, size: Size) -> Trial:
    """n arrays stored (untimed), freed, then held ``seconds`` later (and at once)."""
    r = _Readings()
    src = _source(size.nbytes)
    refs: List[Any] = []

    def setup() -> None:
        refs.clear()
        _fresh_runtime(env)
        refs.extend(env.api.put(src) for _ in range(size.n))

    def run() -> None:
        refs.clear()
        gc.collect()
        at_once, _ = shm_held()
        time.sleep(size.seconds)
        r.held(at_once_MiB=at_once / MiB)

    return r.trial(run, setup=setup, close=env.shutdown)


SHUTDOWN_STORE_BYTES = 3 << 30


def _shutdown_full(env: Any, size: Size) -> Trial:
    """``shutdown()`` with n arrays stored (a fresh runtime with a 3 GiB ceiling each round).
    pygen unmaps a large arena in a detached thread: when its memory is back is noted."""
    src = _source(size.nbytes)
    refs: List[Any] = []
    back: List[float] = []
    started: List[float] = []

    def memory_back() -> None:
        if started:
            env.settle()   # pygen: until the detached unmapping is done; Ray: its processes
            back.append(time.perf_counter() - started.pop())

    def setup() -> None:
        memory_back()
        refs.clear()
        _fresh_runtime(env, SHUTDOWN_STORE_BYTES)
        refs.extend(env.api.put(src) for _ in range(size.n))

    def run() -> None:
        started.append(time.perf_counter())
        env.shutdown()

    def close() -> None:
        memory_back()
        refs.clear()

    def info() -> Dict[str, Any]:   # after the last round: its memory is waited for here
        memory_back()
        if not back:
            return {}
        return {"memory_back_s": round(statistics.median(back[-trial.timed_rounds:]), 3)}

    trial = Trial(run, taken, setup=setup, close=close, info=info)
    return trial


def _footprint_workloads() -> List[Workload]:
    def both(make: Callable[[Any, Size], Trial]) -> Tuple[Side, Side]:
        # Ray's side starts a fresh Ray (seconds) each round: left to the full run (so is
        # its repeated put, whose steady state takes 12 puts of 200 MB: seconds too)
        return (Side(PYGEN, "pygen", make, cold=True),
                Side(RAY, "ray", make, slow=True, cold=True, in_quick=False))

    copy = Side(NUMPY_COPY, "plain", _numpy_copy)
    fresh = (Side(FRESH_SHM_2, "plain", _fresh_shm_write(2)),
             Side(FRESH_SHM_1, "plain", _fresh_shm_write(1)))
    big = 200 * MB
    return [
        Workload("first_put", "first {mb} MB put, at once after init", "GB/s", True,
                 Size(n=1, rounds=6, slow_rounds=3, warmup=1, slow_warmup=0, nbytes=big),
                 Size(n=1, rounds=2, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big),
                 both(_first_put(settled=False)) + (copy,) + fresh,
                 goal=">= Ray, ~ fresh shm write with 2 threads",
                 note="a fresh runtime each round; pygen's workers are still starting (two "
                      "interpreters importing, on 2 CPUs) when its put runs"),
        Workload("first_put_settled", "first {mb} MB put after init, its workers up", "GB/s",
                 True,
                 Size(n=1, rounds=6, slow_rounds=3, warmup=1, slow_warmup=0, nbytes=big),
                 Size(n=1, rounds=2, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big),
                 (Side(PYGEN, "pygen", _first_put(settled=True), cold=True),) + fresh,
                 note="where Ray is when its init returns (its row above)"),
        Workload("repeated_put", "repeated {mb} MB puts: r = put(a) in a loop", "GB/s", True,
                 Size(n=1, rounds=20, slow_rounds=10, warmup=2, nbytes=big),
                 Size(n=1, rounds=5, slow_rounds=3, nbytes=big),
                 (Side(PYGEN, "pygen", _repeated_put_on),
                  Side(RAY, "ray", _repeated_put_on, slow=True, in_quick=False), copy),
                 goal=">= 0.8x np.copyto",
                 note=f"timed after {REPEATED_PUT_WARMUP} untimed puts (the steady state)"),
        Workload("held_idle", "held in /dev/shm {s} s after init", "MiB", False,
                 Size(n=1, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, seconds=5.0),
                 Size(n=1, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, seconds=2.0),
                 both(_held_idle), goal="<= the object table + 64 MiB",
                 note="held: bytes of the /dev/shm files the runtime's processes have open "
                      "(what those files really hold, each once); pygen's object table in the "
                      "JSON (tables_MiB)"),
        Workload("held_full", "held with {n} x {mb} MB stored", "MiB", False,
                 Size(n=10, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big),
                 Size(n=5, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big),
                 both(_held_full)),
        Workload("held_freed", "held {s} s after freeing {n} x {mb} MB", "MiB", False,
                 Size(n=10, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big,
                      seconds=10.0),
                 Size(n=5, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big,
                      seconds=5.0),
                 both(_held_freed), goal="memory goes back"),
        Workload("shutdown_full", "shutdown with {n} x {mb} MB stored", "s", False,
                 Size(n=10, rounds=4, slow_rounds=2, warmup=0, slow_warmup=0, nbytes=big),
                 Size(n=5, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=big),
                 both(_shutdown_full), goal="< 100 ms",
                 note="pygen: its arena unmapped by a detached thread after shutdown returns "
                      "(memory_back_s in the JSON)"),
    ]


# == the list =================================================================================
def _store_workloads() -> List[Workload]:
    out = []
    for mb in (1, 10, 100, 500):
        rounds = max(5, min(200, 2000 // mb))
        out.append(Workload(
            f"store_put_{mb}MB", "store put {mb} MB (serialize + write + delete)", "GB/s", True,
            Size(n=1, rounds=rounds, slow_rounds=rounds, nbytes=mb * MB),
            Size(n=1, rounds=max(5, rounds // 4), slow_rounds=5, nbytes=mb * MB),
            (Side(PYGEN, "store", _store_put), Side(NUMPY_COPY, "plain", _numpy_copy)),
            goal=">= 0.8x np.copyto"))
    for label, nbytes in (("1 KB", 1_000), ("1 MB", MB), ("1 GB", 1000 * MB)):
        out.append(Workload(
            f"store_get_{label.replace(' ', '')}", f"store get {label} (get + deserialize, zero-copy)",
            "s", False,
            Size(n=1, rounds=2000, slow_rounds=2000, warmup=50, nbytes=nbytes),
            Size(n=1, rounds=300, slow_rounds=300, warmup=20, nbytes=nbytes),
            (Side(PYGEN, "store", _store_get),), goal="< 20 us, flat in size"))
    out.append(Workload(
        "store_create_seal_delete", "store create + seal + delete, 16 bytes", "/s", True,
        Size(n=20_000, rounds=20, slow_rounds=20, warmup=2),
        Size(n=20_000, rounds=5, slow_rounds=5),
        (Side(PYGEN, "store", _store_small_objects),), goal=">= 1,000,000/s"))
    out.append(Workload(
        "store_small_cycle", "store write + get + deserialize + delete, 1 KB array", "s", False,
        Size(n=1, rounds=5000, slow_rounds=5000, warmup=100),
        Size(n=1, rounds=500, slow_rounds=500, warmup=20),
        (Side(PYGEN, "store", _store_cycle),)))
    return out


WORKLOADS: List[Workload] = [
    Workload("init_first_result", "init (defaults) + first task result", "s", False,
             Size(n=1, rounds=8, slow_rounds=3, warmup=1, slow_warmup=0),
             Size(n=1, rounds=3, slow_rounds=1, warmup=0, slow_warmup=0),
             (Side(PYGEN, "pygen", _init_first_result, cold=True),
              Side(RAY, "ray", _init_first_result, slow=True, cold=True),
              Side(PYTHON_START, "plain", _python_start)),
             goal="< 0.3 s",
             note="pygen with its defaults; Ray with 2 CPUs and no dashboard; the floor is a "
                  "fresh interpreter importing pygen's worker"),
    Workload("shutdown", "shutdown", "s", False,
             Size(n=1, rounds=8, slow_rounds=3, warmup=1, slow_warmup=0),
             Size(n=1, rounds=3, slow_rounds=1, warmup=0, slow_warmup=0),
             (Side(PYGEN, "pygen", _shutdown, cold=True),
              Side(RAY, "ray", _shutdown, slow=True, cold=True))),
    Workload("tasks_serial", "tasks one at a time: get(f.remote(i)), {n} a round", "/s", True,
             Size(n=2_000, rounds=10, slow_rounds=3),
             Size(n=500, rounds=3, slow_rounds=1),
             _both(_serial) + (Side(MP, "multiprocessing", _serial_calls),
                               Side(PIPE, "plain", _pipe), Side(SOCKET, "plain", _socket)),
             goal=">= 10x Ray",
             note="multiprocessing: pool.apply; the floors: a multiprocessing.Pipe ping-pong "
                  "with a child process (send(i), recv()), and 32 bytes there and back over a "
                  "raw socketpair; both sleep in recv, so on a VM whose idle CPUs halt they "
                  "pay a wake-up each way: they run up to 2x faster on a busy machine than "
                  "on an idle one"),
    Workload("tasks_bulk", "{n} tasks submitted, then one get", "/s", True,
             Size(n=10_000, rounds=5, slow_rounds=3, slow_warmup=1),
             Size(n=2_000, rounds=3, slow_rounds=1),
             _both(_bulk) + (Side(MP, "multiprocessing", _bulk_map),
                             Side(JOBLIB, "joblib", _bulk_map)),
             goal=">= 10x Ray",
             note="each call dispatched on its own: pool.map with chunksize=1, joblib with "
                  "batch_size=1 (batching would run fewer, larger tasks)"),
    Workload("stream_items", "stream items: next + get, {n} small ints", "/s", True,
             Size(n=50_000, rounds=5, slow_rounds=3, warmup=0, slow_warmup=0),
             Size(n=10_000, rounds=3, slow_rounds=1, warmup=0, slow_warmup=0),
             _both(_stream_items) + (Side(MP, "multiprocessing", _stream_items_mp),),
             goal=">= 10x Ray",
             note="multiprocessing: the generator in a pool worker, its items through a queue"),
    Workload("first_item", "remote() -> first item's value", "s", False,
             Size(n=1, rounds=200, slow_rounds=50, warmup=0, slow_warmup=0),
             Size(n=1, rounds=30, slow_rounds=10, warmup=0, slow_warmup=0),
             _both(_first_item) + (Side(MP, "multiprocessing", _first_item_mp),),
             goal=">= 10x sooner than Ray"),
    Workload("actor_serial", "actor calls one at a time: get(a.f.remote(i)), {n} a round", "/s",
             True,
             Size(n=2_000, rounds=10, slow_rounds=3),
             Size(n=500, rounds=3, slow_rounds=1),
             _both(_actor_serial) + (Side(PIPE, "plain", _pipe), Side(SOCKET, "plain", _socket)),
             goal=">= 10x Ray; within 1.5x of the pipe round trip",
             note="one sync actor, a no-op method; the floors as for tasks one at a time"),
    Workload("actor_bulk", "{n} actor calls submitted, then one get", "/s", True,
             Size(n=10_000, rounds=5, slow_rounds=3, slow_warmup=1),
             Size(n=2_000, rounds=3, slow_rounds=1),
             _both(_actor_bulk(tasks.Echo)), goal=">= 10x Ray"),
    Workload("async_actor_bulk", "{n} calls of an async actor (async def no-op), then one get",
             "/s", True,
             Size(n=10_000, rounds=5, slow_rounds=3, slow_warmup=1),
             Size(n=2_000, rounds=3, slow_rounds=1),
             _both(_actor_bulk(tasks.AsyncEcho)), goal=">= 10x Ray"),
    Workload("actor_stream_items", "actor generator method: next + get, {n} small ints", "/s",
             True,
             Size(n=50_000, rounds=5, slow_rounds=3, warmup=0, slow_warmup=0),
             Size(n=10_000, rounds=3, slow_rounds=1, warmup=0, slow_warmup=0),
             _both(_actor_stream(tasks.Echo)), goal=">= 10x Ray"),
    Workload("async_actor_stream_items",
             "async actor's async generator: next + get, {n} small ints", "/s", True,
             Size(n=50_000, rounds=5, slow_rounds=3, warmup=0, slow_warmup=0),
             Size(n=10_000, rounds=3, slow_rounds=1, warmup=0, slow_warmup=0),
             _both(_actor_stream(tasks.AsyncEcho)), goal=">= 10x Ray"),
    # the memory pattern runs before the large items, whose workers keep a source array
    Workload("memory_list", "peak worker RssAnon: a list of {n} x {mb} MB", "MiB", False,
             Size(n=20, rounds=3, slow_rounds=3, nbytes=50 * MB),
             Size(n=8, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=20 * MB),
             _both(_memory("list")) + (Side(MP, "multiprocessing", _memory_mp("list")),)),
    Workload("memory_generator", "peak worker RssAnon: a generator of {n} x {mb} MB", "MiB",
             False,
             Size(n=20, rounds=3, slow_rounds=3, nbytes=50 * MB),
             Size(n=8, rounds=1, slow_rounds=1, warmup=0, slow_warmup=0, nbytes=20 * MB),
             _both(_memory("generator")) + (Side(MP, "multiprocessing",
                                                 _memory_mp("generator")),),
             goal="~1 array above the start"),
    Workload("large_items", "{n} x {mb} MB items, zero-copy consumer", "GB/s", True,
             Size(n=20, rounds=8, slow_rounds=6, nbytes=50 * MB),
             Size(n=5, rounds=3, slow_rounds=2, nbytes=50 * MB),
             _both(_large_items) + (Side(MP, "multiprocessing", _large_items_mp, slow=True),
                                    Side(NUMPY_COPY, "plain", _numpy_copy)),
             goal=">= 0.8x np.copyto",
             note="numpy copy: np.copyto of one item into a warm array"),
    Workload("api_put", "put of a {mb} MB array, then the ref dropped", "GB/s", True,
             Size(n=1, rounds=20, slow_rounds=10, warmup=2, nbytes=100 * MB),
             Size(n=1, rounds=5, slow_rounds=3, nbytes=100 * MB),
             _both(_api_put) + (Side(NUMPY_COPY, "plain", _numpy_copy),)),
] + _footprint_workloads() + _store_workloads()


def find(key: str) -> Workload:
    for w in WORKLOADS:
        if w.key == key:
            return w
    raise KeyError(f"no benchmark workload {key!r}; known: {', '.join(w.key for w in WORKLOADS)}")


@dataclass(frozen=True)
class Case:
    """One side of one workload: a row of the plan."""

    workload: Workload
    side: Side
    quick: bool

    @property
    def id(self) -> str:
        return f"{self.side.column.replace(' ', '_')}-{self.workload.key}"

    @property
    def size(self) -> Size:
        return self.workload.size(self.quick)

    @property
    def rounds(self) -> int:
        return self.size.slow_rounds if self.side.slow else self.size.rounds

    @property
    def warmup(self) -> int:
        return self.size.slow_warmup if self.side.slow else self.size.warmup


def plan(quick: bool = False, only: Optional[Sequence[str]] = None,
         order: Sequence[str] = ()) -> List[Case]:
    """Every (workload, side), grouped by environment in ``order`` (default
    ``envs.ENV_ORDER``), each group in the order of ``WORKLOADS``.  ``only``: workload keys."""
    from .envs import ENV_ORDER
    order = tuple(order) or ENV_ORDER
    chosen = [w for w in WORKLOADS if not only or w.key in only]
    if only:
        unknown = set(only) - {w.key for w in WORKLOADS}
        if unknown:
            raise KeyError(f"no benchmark workload {sorted(unknown)}; known: "
                           f"{', '.join(w.key for w in WORKLOADS)}")
    return [Case(w, side, quick) for env in order for w in chosen for side in w.sides
            if side.env == env]


__all__ = ["Size", "Trial", "Side", "Workload", "Case", "WORKLOADS", "COLUMNS", "FLOORS", "plan",
           "find"]
