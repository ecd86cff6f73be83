"""The functions the benchmarks run in workers, in a module that imports nothing heavy.

pygen's, Ray's and a multiprocessing pool's workers import this module by name before a
task's first run, and the ``init`` + first result benchmark must not time an import of
the benchmark machinery.  numpy is imported inside the functions that need it.
"""
from __future__ import annotations

import os
import time
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional


def noop(i: Any) -> Any:
    return i


def count(n: int) -> Iterator[int]:
    for i in range(n):
        yield i


def first_then_more() -> Iterator[int]:
    yield 0
    time.sleep(0.005)  # still running when the first item is read
    yield 1


_SOURCES: Dict[int, Any] = {}


def source_array(nbytes: int) -> Any:
    """One array of 7s per size and process, made once: the large-items benchmark times the
    transfer, not a fresh 50 MB allocation (page faults, huge-page compaction) per run."""
    a = _SOURCES.get(nbytes)
    if a is None:
        import numpy as np
        a = _SOURCES[nbytes] = np.full(nbytes, 7, dtype=np.uint8)
    return a


def big_items(n: int, nbytes: int) -> Iterator[Any]:
    a = source_array(nbytes)
    for _ in range(n):
        yield a        # captured (copied into the store, or pickled) at each yield


def big_list(n: int, nbytes: int, pidfile: str) -> List[Any]:
    import numpy as np
    report_pid(pidfile)
    return [np.full(nbytes, i, dtype=np.uint8) for i in range(n)]


def big_generator(n: int, nbytes: int, pidfile: str) -> Iterator[Any]:
    import numpy as np
    report_pid(pidfile)
    for i in range(n):
        yield np.full(nbytes, i, dtype=np.uint8)


# -- actors: the same classes on pygen's and Ray's side ------------------------------------------
class Echo:
    """A sync actor: a no-op method and a generator method."""

    def noop(self, i: Any) -> Any:
        return i

    def count(self, n: int) -> Iterator[int]:
        for i in range(n):
            yield i


class AsyncEcho:
    """An async actor (its methods are ``async def``): a no-op and an async generator."""

    async def noop(self, i: Any) -> Any:
        return i

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


def pipe_echo(conn: Any) -> None:
    """The child of the pipe round trip: send back whatever arrives, until the pipe closes."""
    recv, send = conn.recv, conn.send
    try:
        while True:
            send(recv())
    except EOFError:
        pass


def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def rss_anon_kb(pid: int) -> Optional[int]:
    """RssAnon of ``pid`` in kB (private resident memory; shared-memory pages do not count)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def report_pid(path: str) -> None:
    """A task's first statement: tell the driver's sampler its pid and RssAnon at start."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {rss_anon_kb(os.getpid()) or 0}")
    os.rename(tmp, path)


def warm_probe(seconds: float) -> int:
    """pygen only: wait for this worker's pre-fault of the arena, stay busy a little (so
    the other worker takes the other probe), report the pid."""
    import pygen.context
    store = getattr(pygen.context.current(), "store", None)
    if store is not None:
        store.prefault_wait(timeout=120)
    return sleep_pid(seconds)


# -- multiprocessing: a generator run in a pool worker, its items sent through a queue --------
_QUEUE: Any = None
END_OF_STREAM = "pygen.bench: end of stream"


def set_queue(queue: Any) -> None:
    """Pool initializer: the queue every stream of this pool writes to."""
    global _QUEUE
    _QUEUE = queue


def stream_into_queue(fn: Callable[..., Iterator[Any]], args: tuple) -> None:
    """Run generator ``fn(*args)`` here and put each item on the pool's queue as it is
    yielded (the queue's pipe blocks the producer when the consumer falls behind)."""
    try:
        for item in fn(*args):
            _QUEUE.put(item)
    finally:
        _QUEUE.put(END_OF_STREAM)
