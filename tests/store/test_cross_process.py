"""Several processes on one store: zero-copy put/get across processes, wake-ups on seal,
attach by inherited fd, close-on-exec, and the stale-segment sweep."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from pygen import _store, serialization

from . import _children
from .conftest import MiB, kill_and_reap, oid

pytestmark = pytest.mark.timeout(60)


def test_put_in_child_get_zero_copy_here(store, mp):
    q = mp.Queue()
    p = mp.Process(target=_children.put_array, args=(store.name, oid(1), 1_000_000, q))
    p.start()
    crc = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    buf = store.get(oid(1))
    _, arr = serialization.deserialize(buf)
    assert zlib.crc32(arr) == crc and arr.shape == (1_000_000,)
    assert not arr.flags.writeable
    lo = np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]
    assert lo <= arr.__array_interface__["data"][0] < lo + len(buf)
    assert store.slots() == [(0, os.getpid())]     # the child closed its slot
    del arr, buf


def test_put_here_get_zero_copy_in_child(store, mp):
    a = np.random.default_rng(1).integers(0, 1 << 30, size=300_000)
    serialization.serialize(a).write_to(store, oid(2))
    q = mp.Queue()
    p = mp.Process(target=_children.get_array, args=(store.name, oid(2), q))
    p.start()
    crc, writeable, inside, pid = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert crc == zlib.crc32(a) and not writeable and inside
    assert store.info(oid(2))["pinned_slots"] == []


def test_wait_sealed_wakes_on_seal_in_another_process(store, mp):
    q = mp.Queue()
    p = mp.Process(target=_children.seal_later, args=(store.name, oid(3), 0.2, q))
    p.start()
    assert store.wait_sealed(oid(3), timeout=60) is True
    woke = time.monotonic()  # CLOCK_MONOTONIC is system-wide
    sealed_before = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert woke >= sealed_before  # woken after the other process's seal (how fast: bench/)
    b = store.get(oid(3))
    assert bytes(b.data[:5]) == b"hello"
    del b
    t0 = time.monotonic()
    assert store.wait_sealed(oid(4), timeout=0.3) is False
    assert time.monotonic() - t0 >= 0.29  # it waited its timeout (a lower bound)


def test_get_with_timeout_across_processes(store, mp):
    q = mp.Queue()
    p = mp.Process(target=_children.seal_later, args=(store.name, oid(5), 0.1, q))
    p.start()
    b = store.get(oid(5), timeout=None)
    assert b is not None and bytes(b.data[:5]) == b"hello"
    p.join(30)
    assert p.exitcode == 0
    del b


CHILD_FDS = r"""
import os
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink("/proc/self/fd/" + fd))
    except OSError:
        pass
print("\n".join(links))
"""


def test_fds_are_close_on_exec(store):
    a = _store.Store.attach(store.name, prefault=False)
    out = subprocess.run([sys.executable, "-c", CHILD_FDS], close_fds=False,
                         capture_output=True, text=True, timeout=30).stdout
    assert "pygen-" not in out, out
    a.close()


CHILD_ATTACH_FD = r"""
import sys
from pygen import _store
s = _store.Store.attach_fd(int(sys.argv[1]), prefault=False)
b = s.get(bytes.fromhex(sys.argv[2]))
print(bytes(b.data[:7]).decode(), s.slot, s.name, sep="|")
del b
s.close()
"""


def test_attach_by_inherited_fd(store):
    w = store.create_object(oid(6), 100)
    w.data[:7] = b"via fd!"
    del w
    store.seal(oid(6))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", CHILD_ATTACH_FD, str(store.fd), oid(6).hex()],
                       pass_fds=(store.fd,), capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    text, slot, name = r.stdout.strip().split("|")
    assert text == "via fd!" and int(slot) == 1 and name == store.name


def test_unlinked_store_still_attachable_by_fd(make_store, mp):
    s = make_store(4 * MiB)
    s.unlink()                                   # what the runtime does right away
    assert not os.path.exists(s.name)
    f = _store.Store.attach_fd(os.dup(s.fd), prefault=False)
    assert f.name == s.name
    w = f.create_object(oid(7), 10)
    del w
    f.seal(oid(7))
    assert s.contains(oid(7))
    f.close()


def test_stale_segment_of_killed_creator_is_swept(mp, make_store):
    q = mp.Queue()
    p = mp.Process(target=_children.create_store_and_wait, args=(q,))
    p.start()
    name = q.get(timeout=30)
    assert os.path.exists(name)
    kill_and_reap(p)
    assert os.path.exists(name)                  # nobody unlinked it ...
    make_store(1 * MiB)                          # ... until the next store is created
    assert not os.path.exists(name)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("pygen-%d-" % p.pid)]
