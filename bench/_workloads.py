"""The task functions of the benchmarks, in a module of their own that imports nothing
heavy: workers (pygen's and Ray's) import it by name before a task's first run, and the
``init`` + first result benchmark must not time an import of pytest or of the test
modules.  numpy is imported inside the functions that need it."""
from __future__ import annotations

import os
import time


def noop(i):
    return i


def count(n):
    for i in range(n):
        yield i


def first_then_more():
    yield 0
    time.sleep(0.005)  # still running when the first item is read
    yield 1


_SOURCES = {}


def source_array(nbytes):
    """One array of 7s per size and process, made once: the large-items benchmark times the
    transfer, not a fresh 50 MB allocation (page faults, huge-page compaction) per run."""
    a = _SOURCES.get(nbytes)
    if a is None:
        import numpy as np
        a = _SOURCES[nbytes] = np.full(nbytes, 7, dtype=np.uint8)
    return a


def big_items(n, nbytes):
    a = source_array(nbytes)
    for _ in range(n):
        yield a        # captured (copied into the store) at each yield


def big_list(n, nbytes, pidfile):
    import numpy as np
    report_pid(pidfile)
    return [np.full(nbytes, i, dtype=np.uint8) for i in range(n)]


def big_generator(n, nbytes, pidfile):
    import numpy as np
    report_pid(pidfile)
    for i in range(n):
        yield np.full(nbytes, i, dtype=np.uint8)


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def rss_anon_kb(pid):
    """RssAnon of ``pid`` in kB (private resident memory; shared-memory pages do not count)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def report_pid(path):
    """A task's first statement: tell the driver's sampler its pid and RssAnon at start."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {rss_anon_kb(os.getpid()) or 0}")
    os.rename(tmp, path)


def warm_probe(seconds):
    """pygen only: wait for this worker's pre-fault of the arena, stay busy a little (so
    the other worker takes the other probe), report the pid."""
    import pygen.context
    store = getattr(pygen.context.current(), "store", None)
    if store is not None:
        store.prefault_wait(timeout=120)
    return sleep_pid(seconds)
