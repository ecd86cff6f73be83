"""The object store on its own: a large numpy array put in one process and read, zero-copy,
in another; timings printed.

    python examples/store_demo.py [size_in_MB]

The parent creates the store and unlinks its name at once (what the runtime does: a killed
driver leaves nothing in /dev/shm), then starts a child that attaches through the inherited
fd. The child puts an array; the parent gets it as a read-only view of the arena (no
copy), checks it, puts its own array back, and the child reads that one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from pygen import _store
from pygen.serialization import deserialize, serialize

MB = 1_000_000
PARENT_ID = b"demo-parent-array..."
CHILD_ID = b"demo-child-array...."


def say(line: str) -> None:
    """One write per line: parent and child share stdout, and under ``python -u`` (or
    PYTHONUNBUFFERED) ``print`` writes the text and its newline separately, so the other
    process's line could land in between."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def child(fd: int, size: int) -> None:
    store = _store.Store.attach_fd(fd)
    arr = np.arange(size // 8, dtype=np.int64)
    t0 = time.perf_counter()
    serialize(arr).write_to(store, CHILD_ID)
    dt = time.perf_counter() - t0
    say(f"[child  pid={os.getpid()}] put {arr.nbytes / MB:.0f} MB in {dt * 1e3:.1f} ms "
          f"({arr.nbytes / dt / 1e9:.1f} GB/s), slot {store.slot}")
    # wait for the parent's array, then read it without copying
    assert store.wait_sealed(PARENT_ID, timeout=60)
    t0 = time.perf_counter()
    _, back = deserialize(store.get(PARENT_ID))
    dt = time.perf_counter() - t0
    say(f"[child  pid={os.getpid()}] got {back.nbytes / MB:.0f} MB in {dt * 1e6:.1f} us "
          f"(zero-copy, writeable={back.flags.writeable}), sum={int(back.sum())}")
    del back
    store.close()


def parent(size: int) -> None:
    store = _store.Store.create(3 * size + 64 * MB)
    store.unlink()                       # nothing left in /dev/shm, whatever happens
    store.prefault_wait(timeout=60)      # a warm arena (done in the background normally)
    say(f"[parent pid={os.getpid()}] store of {store.capacity / MB:.0f} MB, name unlinked; "
          f"passing fd {store.fd} to the child")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(store.fd), str(size)],
                            pass_fds=(store.fd,))
    assert store.wait_sealed(CHILD_ID, timeout=60)
    times = []
    for _ in range(3):                   # the first get also pays for imports in numpy
        t0 = time.perf_counter()
        buf = store.get(CHILD_ID)
        _, arr = deserialize(buf)
        times.append(time.perf_counter() - t0)
    assert arr[-1] == arr.size - 1 and not arr.flags.writeable
    say(f"[parent pid={os.getpid()}] got {arr.nbytes / MB:.0f} MB in "
          f"{', '.join(f'{t * 1e6:.1f}' for t in times)} us (zero-copy view of the arena at "
          f"offset {store.info(CHILD_ID)['offset']})")
    mine = arr * 2                       # an ordinary private array
    t0 = time.perf_counter()
    serialize(mine).write_to(store, PARENT_ID)
    dt = time.perf_counter() - t0
    dst = np.empty_like(mine)
    dst[:] = 0
    t1 = time.perf_counter()
    np.copyto(dst, mine)
    dt_np = time.perf_counter() - t1
    say(f"[parent pid={os.getpid()}] put {mine.nbytes / MB:.0f} MB in {dt * 1e3:.1f} ms "
          f"({mine.nbytes / dt / 1e9:.1f} GB/s; numpy's own copy: {mine.nbytes / dt_np / 1e9:.1f} "
          f"GB/s)")
    del dst
    proc.wait(60)
    del arr, buf, mine
    say(f"[parent] stats: {store.stats()}")
    store.check()
    store.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        parent(int(float(sys.argv[1]) * MB) if len(sys.argv) > 1 else 400 * MB)
