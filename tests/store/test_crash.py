"""Processes killed with SIGKILL at the worst moments: holding the lock, allocating in a
loop, at every named crash point (inside the critical sections, and between reserving
memory and marking it reserved), in the middle of a recovery or of a slot release.  After each, this process must find the store
consistent (`check()`), every sealed object intact (checksums), the statistics adding
up, and must go on allocating."""
from __future__ import annotations

import random
import signal
import time
import zlib

import pytest

from pygen import _store

from . import _children
from .conftest import MiB, kill_and_reap, oid

pytestmark = pytest.mark.timeout(120)

PARENT_TAG = b"PRNT"


@pytest.fixture
def populated(make_store):
    """A 16 MiB store holding 20 sealed objects of random bytes; {id: crc32}."""
    s = make_store(16 * MiB, max_objects=4096)
    rng = random.Random(5)
    objects = {}
    for i in range(20):
        k = oid(i, PARENT_TAG)
        data = rng.randbytes(rng.randrange(1, 100_000))
        w = s.create_object(k, len(data), 8)
        w.data[:] = data
        w.metadata[:] = b"parent!!"
        del w
        s.seal(k)
        objects[k] = zlib.crc32(data)
    return s, objects


def release_dead(s, pid):
    """What the runtime does when it sees a worker die: release its slot (if recovery
    did not already)."""
    for slot, owner in s.slots():
        if owner == pid:
            s.release_slot(slot, pid=pid)


def verify(s, objects, round_=0):
    s.check()
    for k, crc in objects.items():
        b = s.get(k)
        assert b is not None, f"object {k.hex()} lost"
        assert zlib.crc32(b.data) == crc and bytes(b.metadata) == b"parent!!"
        del b
    # leftovers of dead children: sealed ones are deleted, unsealed ones were aborted
    for k in s.list_ids():
        if k not in objects:
            s.delete(k)
    assert _store._debug_commit_lies(s) == 0      # no committed chunk is a hole
    st = s.stats()
    assert st["used"] + st["free"] == st["capacity"]
    assert st["objects"] == st["sealed"] == len(objects)
    assert st["pinned"] == 0 and st["delete_pending"] == 0
    assert st["slots_in_use"] == 1
    # and it still allocates
    k = oid(10_000 + round_, b"MORE")
    w = s.create_object(k, 50_000)
    w.data[-1:] = b"z"
    del w
    s.seal(k)
    assert s.delete(k) is True
    s.check()


def test_killed_holding_the_lock_50_times(populated, mp):
    s, objects = populated
    for i in range(50):
        before = s.stats()["recoveries"]
        ready = mp.Event()
        p = mp.Process(target=_children.hold_lock, args=(s.name, ready, 30_000))
        p.start()
        assert ready.wait(30)
        time.sleep(0.01)              # it is inside the lock now
        kill_and_reap(p)
        assert s.stats()["recoveries"] == before + 1     # we found its lock dead
        release_dead(s, p.pid)
        verify(s, objects, i)


def test_killed_while_allocating_50_times(populated, mp):
    s, objects = populated
    rng = random.Random(11)
    for i in range(50):
        ready = mp.Event()
        p = mp.Process(target=_children.alloc_loop, args=(s.name, i, ready, b"AL%02d" % i))
        p.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0, 0.015))
        kill_and_reap(p)
        release_dead(s, p.pid)
        verify(s, objects, i)
    print(f"recoveries after 50 kills while allocating: {s.stats()['recoveries']}")


# reached only while recovering (recover, rebuild_begin) or releasing a slot: own tests
POINTS = [name for name in _store.CRASH_POINTS
          if name not in ("recover", "rebuild_begin", "release_slot")]
# between reserving memory and marking it, outside the lock: nothing to recover
OUTSIDE_THE_LOCK = ("warm_reserved", "create_reserved")


@pytest.mark.parametrize("countdown", [1, 4])
@pytest.mark.parametrize("point", POINTS)
def test_crash_point(populated, mp, point, countdown):
    s, objects = populated
    before = s.stats()["recoveries"]
    p = mp.Process(target=_children.crash_workload,
                   args=(s.name, _store.CRASH_POINTS[point], countdown, 3, list(objects)))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, f"child ended with {p.exitcode}, not killed at {point}"
    if point in OUTSIDE_THE_LOCK:
        release_dead(s, p.pid)
    verify(s, objects)
    inside = point not in OUTSIDE_THE_LOCK
    assert s.stats()["recoveries"] == before + inside   # it died inside the lock, or not


def test_crash_during_recovery(populated, mp):
    s, objects = populated
    a = mp.Process(target=_children.crash_workload,
                   args=(s.name, _store.CRASH_POINTS["create_filled"], 2, 1, list(objects)))
    a.start()
    a.join(60)
    assert a.exitcode == -signal.SIGKILL
    b = mp.Process(target=_children.crash_workload,
                   args=(s.name, _store.CRASH_POINTS["recover"], 1, 2, list(objects)))
    b.start()
    b.join(60)
    assert b.exitcode == -signal.SIGKILL        # died halfway through recovering
    verify(s, objects)


def test_crash_during_release_slot(populated, mp):
    s, objects = populated
    q = mp.Queue()
    holder = mp.Process(target=_children.pin_and_wait, args=(s.name, list(objects), q))
    holder.start()
    slot, pid = q.get(timeout=30)
    releaser = mp.Process(target=_children.release_slot_and_die, args=(s.name, slot, 7))
    releaser.start()
    releaser.join(60)
    assert releaser.exitcode == -signal.SIGKILL
    kill_and_reap(holder)
    s.check()
    release_dead(s, pid)
    verify(s, objects)


def test_dead_childs_pins_released_by_slot(populated, mp):
    s, objects = populated
    q = mp.Queue()
    p = mp.Process(target=_children.pin_and_wait, args=(s.name, list(objects), q))
    p.start()
    slot, pid = q.get(timeout=30)
    first = next(iter(objects))
    assert s.info(first)["pinned_slots"] == [slot]
    assert s.stats()["pinned"] == len(objects) + 1      # + its unsealed object
    assert s.delete(first) is False                     # pinned by the child
    kill_and_reap(p)
    assert (slot, pid) in s.slots()                     # dead, but nobody said so yet
    assert s.release_slot(slot, pid=pid) == len(objects) + 1
    assert s.info(first) is None                        # the pending delete happened
    st = s.stats()
    assert st["pinned"] == 0 and st["objects"] == len(objects) - 1
    assert (slot, pid) not in s.slots()
    assert s.release_slot(slot, pid=pid) == 0           # twice: nothing more to do
    del objects[first]
    verify(s, objects)
