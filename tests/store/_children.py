"""Bodies of the child processes of the store tests (run in forkserver children).

Each attaches to the parent's store by name, the way a worker process would, does its
part and reports through a queue or an event.  Several of them never return: the parent
kills them with SIGKILL at a chosen or random instant.
"""
from __future__ import annotations

import os
import random
import time
import zlib

import numpy as np

from pygen import _store, serialization


def _oid(n: int, tag: bytes) -> bytes:
    return tag.ljust(4, b"-")[:4] + n.to_bytes(16, "big")


def put_array(name, object_id, n, q):
    """Write np.arange(n) as a pygen-serialised object; report its checksum."""
    s = _store.Store.attach(name, prefault=False)
    arr = np.arange(n, dtype=np.int64)
    serialization.serialize(arr).write_to(s, object_id)
    q.put(zlib.crc32(arr))
    s.close()


def get_array(name, object_id, q):
    """Read an object zero-copy; report (checksum, writeable, pointer inside the buffer)."""
    s = _store.Store.attach(name, prefault=False)
    buf = s.get(object_id, timeout=10)
    flags, arr = serialization.deserialize(buf)
    base = np.frombuffer(buf, dtype=np.uint8)
    lo = base.__array_interface__["data"][0]
    ptr = arr.__array_interface__["data"][0]
    q.put((zlib.crc32(arr), bool(arr.flags.writeable), lo <= ptr < lo + len(buf),
           os.getpid()))
    del arr, base, buf
    s.close()


def hold_lock(name, ready, ms):
    s = _store.Store.attach(name, prefault=False)
    ready.set()
    _store._debug_hold_lock(s, ms)


def alloc_loop(name, seed, ready, tag):
    """Allocate, write, seal, read and delete in a loop until killed."""
    s = _store.Store.attach(name, prefault=False)
    rng = random.Random(seed)
    i = 0
    while True:
        k = _oid(i, tag)
        size = rng.randrange(1, 200_000)
        try:
            w = s.create_object(k, size, 16)
        except Exception:
            i += 1
            continue
        n = min(8, size)        # sizes 1-7 too: the data region is that small
        w.data[:n] = b"childdat"[:n]
        w.metadata[:4] = b"meta"
        if rng.random() < 0.1:
            del w
            s.abort(k)
        else:
            del w
            s.seal(k)
            b = s.get(k)
            if rng.random() < 0.5:
                s.delete(k)     # pinned: pending until b goes
                del b
            else:
                del b
                s.delete(k)
        i += 1
        if i == 20:
            ready.set()


def crash_workload(name, point, countdown, seed, parent_ids):
    """Arm a crash point, then exercise every operation (memory given back and taken
    again included) until the point kills us."""
    if point == _store.CRASH_POINTS["recover"]:
        _store._debug_crash_at(point, countdown)   # attach itself runs the recovery
    s = _store.Store.attach(name, prefault=False)
    if point == _store.CRASH_POINTS["release_slot"]:
        return   # not used here: see test_crash.py
    _store._debug_crash_at(point, countdown)
    rng = random.Random(seed)
    tag = b"C%03d" % (os.getpid() % 1000)
    for i in range(100_000):
        if i % 16 == 0:
            s.trim(all=True)   # punches free chunks: later creates reserve them again
        elif i % 16 == 8:
            s.warm()           # reserves the window above the high-water mark
        k = _oid(i, tag)
        w = s.create_object(k, rng.randrange(64, 30_000), 8)
        w.data[:4] = b"abcd"
        if i % 8 == 7:
            s.abort(k)
            del w
            continue
        s.seal(k)
        del w
        p = s.get(rng.choice(parent_ids))
        b = s.get(k)
        s.delete(k)
        del b, p
    os._exit(7)   # the point was never reached


def pin_and_wait(name, object_ids, q):
    """Pin objects, report our slot, then wait to be killed."""
    s = _store.Store.attach(name, prefault=False)
    held = [s.get(k) for k in object_ids]
    w = s.create_object(_oid(os.getpid(), b"UNSL"), 1000)   # an unsealed object too
    q.put((s.slot, os.getpid()))
    time.sleep(3600)
    del held, w


def seal_later(name, object_id, delay, q):
    s = _store.Store.attach(name, prefault=False)
    time.sleep(delay)
    w = s.create_object(object_id, 64)
    w.data[:5] = b"hello"
    del w
    q.put(time.monotonic())
    s.seal(object_id)
    s.close()


def create_store_and_wait(q):
    """Create a store (never unlinked) and wait to be killed."""
    s = _store.Store.create(4 << 20, prefault=False)
    q.put(s.name)
    time.sleep(3600)


def release_slot_and_die(name, slot, countdown):
    s = _store.Store.attach(name, prefault=False)
    _store._debug_crash_at(_store.CRASH_POINTS["release_slot"], countdown)
    s.release_slot(slot)
    os._exit(7)
