"""The binding's API in one process: objects, buffers, pins, lifetimes, close/unlink."""
from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import numpy as np
import pytest

from pygen import _store
from pygen.exceptions import ObjectStoreError

from .conftest import MiB, fd_count, oid

pytestmark = pytest.mark.timeout(60)


def test_id_size_and_properties(store):
    assert _store.ID_SIZE == 20
    assert store.name.startswith("/dev/shm/pygen-%d-" % os.getpid())
    assert os.path.exists(store.name)
    assert store.slot == 0
    assert store.capacity == 32 * MiB
    assert store.is_creator
    assert isinstance(store.fd, int) and store.fd >= 0
    st = store.stats()
    for key in ("capacity", "used", "free", "largest_free", "objects", "sealed", "pinned",
                "delete_pending", "slots_in_use", "reserved", "max_objects"):
        assert key in st
    assert st["max_objects"] == 4096
    assert st["used"] + st["free"] == st["capacity"]


def test_create_write_seal_get(store):
    k = oid(1)
    w = store.create_object(k, 1000, 10)
    assert isinstance(w, _store.ObjectWriter)
    data, meta = w.data, w.metadata
    assert not data.readonly and not meta.readonly
    assert len(data) == 1000 and len(meta) == 10
    data[:] = bytes(range(256)) * 3 + bytes(232)
    meta[:] = b"0123456789"
    assert store.get(k) is None            # not sealed yet
    assert not store.contains(k)
    assert store.info(k)["state"] == "created"
    del data, meta, w
    store.seal(k)
    assert store.contains(k) and k in store
    b = store.get(k)
    assert isinstance(b, _store.ObjectBuffer)
    assert b.object_id == k and len(b) == 1000
    assert bytes(b.data[:256]) == bytes(range(256))
    assert bytes(b.metadata) == b"0123456789"
    assert bytes(memoryview(b)[:3]) == b"\x00\x01\x02"   # buffer protocol = data region
    info = store.info(k)
    assert info == {"state": "sealed", "data_size": 1000, "meta_size": 10,
                    "offset": info["offset"], "creator_slot": 0, "pinned_slots": [0],
                    "pins_here": 1, "delete_pending": False}
    assert info["offset"] % 64 == 0
    assert store.list_ids() == [k]
    b.release()
    assert store.info(k)["pins_here"] == 0
    assert store.delete(k) is True
    assert store.info(k) is None
    assert store.stats()["objects"] == 0
    store.check()


def test_buffers_cannot_be_built_by_hand():
    with pytest.raises(TypeError):
        _store.ObjectBuffer()
    with pytest.raises(TypeError):
        _store.ObjectWriter()
    with pytest.raises(TypeError):
        _store.Store()


def test_read_only_views_refuse_writes(store):
    k = oid(2)
    w = store.create_object(k, 64, 8)
    del w
    store.seal(k)
    b = store.get(k)
    with pytest.raises(TypeError):
        b.data[0] = 1
    with pytest.raises(TypeError):
        b.metadata[0] = 1
    assert memoryview(b).readonly
    arr = np.frombuffer(b, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1
    with pytest.raises(ValueError):
        arr.setflags(write=True)
    with pytest.raises(BufferError):
        _store.copy_into(b, 0, b"x")   # not writable
    with pytest.raises(TypeError):   # ctypes asks for a writable buffer
        ctypes.c_char.from_buffer(b)
    del arr, b


def test_pin_counts_and_release(store):
    k = oid(3)
    store.create_object(k, 10)
    store.seal(k)
    b1, b2 = store.get(k), store.get(k)
    info = store.info(k)
    assert info["pins_here"] == 2 and info["pinned_slots"] == [0]
    assert store.stats()["pinned"] == 1
    b1.release()
    b1.release()   # idempotent
    assert b1.released
    with pytest.raises(ValueError):
        b1.data
    assert store.info(k)["pins_here"] == 1
    del b2
    assert store.info(k)["pins_here"] == 0
    assert store.stats()["pinned"] == 0


def test_release_waits_for_live_views(store):
    k = oid(4)
    w = store.create_object(k, 100)
    w.data[:5] = b"hello"
    del w
    store.seal(k)
    b = store.get(k)
    view = b.data
    b.release()                       # a view is alive: the pin stays
    assert store.info(k)["pins_here"] == 1
    assert bytes(view[:5]) == b"hello"
    del view
    assert store.info(k)["pins_here"] == 0
    del b


def test_view_keeps_data_alive_after_delete(store):
    k = oid(5)
    w = store.create_object(k, 1 * MiB)
    np.frombuffer(w, dtype=np.uint8)[:] = 7
    del w
    store.seal(k)
    arr = np.frombuffer(store.get(k), dtype=np.uint8)   # the array holds the only ref
    gc.collect()
    offset = store.info(k)["offset"]
    assert store.delete(k) is False                    # pinned: freed later
    assert store.get(k) is None and not store.contains(k)
    assert store.info(k)["delete_pending"]
    assert store.stats()["delete_pending"] == 1
    # the block is not reused while the view lives
    k2 = oid(6)
    w2 = store.create_object(k2, 1 * MiB)
    np.frombuffer(w2, dtype=np.uint8)[:] = 9
    del w2
    store.seal(k2)
    assert store.info(k2)["offset"] != offset
    assert int(arr.min()) == 7 and int(arr.max()) == 7
    used = store.stats()["used"]
    del arr
    st = store.stats()
    assert st["objects"] == 1 and st["delete_pending"] == 0
    assert st["used"] < used
    # the space is reclaimed: the next object of that size lands where the first was
    assert store.delete(k2) is True
    store.create_object(k, 1 * MiB)
    assert store.info(k)["offset"] == offset
    store.abort(k)
    store.check()


def test_abort_with_live_writer(store):
    k = oid(7)
    w = store.create_object(k, 100)
    w.data[:1] = b"x"
    store.abort(k)
    assert store.info(k) is None
    w2 = store.create_object(k, 50)     # the id is free again at once
    assert store.stats()["objects"] == 2
    w.data[:1] = b"y"                    # the old writer's memory is still ours
    del w
    assert store.stats()["objects"] == 1
    del w2
    store.abort(k)
    assert store.stats()["objects"] == 0
    store.check()


def test_delete_while_writer_alive_is_deferred(store):
    k = oid(8)
    w = store.create_object(k, 100)
    store.seal(k)
    assert store.delete(k) is False
    del w
    assert store.stats()["objects"] == 0


def test_copy_into(store):
    k = oid(9)
    w = store.create_object(k, 1000)
    src = np.arange(100, dtype=np.int32)
    assert _store.copy_into(w.data, 64, src) == 400
    assert _store.copy_into(w, 600, b"abc") == 3
    with pytest.raises(ValueError):
        _store.copy_into(w.data, 700, src)
    with pytest.raises(ValueError):
        _store.copy_into(w.data, -1, b"a")
    fortran = np.asfortranarray(np.arange(12, dtype=np.int8).reshape(3, 4))
    assert _store.copy_into(w.data, 900, fortran) == 12
    del w
    store.seal(k)
    b = store.get(k)
    assert np.array_equal(np.frombuffer(b, dtype=np.int32, count=100, offset=64), src)
    assert bytes(b.data[600:603]) == b"abc"
    del b


def test_get_waits_with_gil_released(store):
    k = oid(10)
    got = {}

    def reader():
        got["buf"] = store.get(k, timeout=None)
        got["at"] = time.monotonic()

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.1)            # the reader is blocked in C, without the GIL
    w = store.create_object(k, 10)
    w.data[:2] = b"ok"
    del w
    sealed_at = time.monotonic()
    store.seal(k)
    t.join(30)
    assert not t.is_alive()
    assert bytes(got["buf"].data[:2]) == b"ok"
    assert got["at"] >= sealed_at  # it returned because of the seal (how fast: bench/)
    del got["buf"]
    assert store.wait_sealed(k, timeout=0) is True
    t0 = time.monotonic()
    assert store.wait_sealed(oid(11), timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.09  # it waited its timeout (a lower bound)
    assert store.get(oid(11), timeout=0.05) is None


def test_close_defers_until_last_buffer(make_store):
    s = make_store()
    other = _store.Store.attach(s.name, prefault=False)
    k = oid(12)
    w = s.create_object(k, 100)
    w.data[:3] = b"abc"
    del w
    s.seal(k)
    b = other.get(k)
    other.close()
    assert other.closed
    with pytest.raises(ObjectStoreError, match="closed"):
        other.get(k)
    assert bytes(b.data[:3]) == b"abc"            # still mapped, still pinned
    assert len(s.slots()) == 2 and s.info(k)["pinned_slots"] == [1]
    del b                                         # the deferred close happens now
    assert s.slots() == [(0, os.getpid())]
    assert s.stats()["pinned"] == 0
    other.close()                                 # idempotent
    s.check()


def test_close_unlink_leave_nothing(make_store):
    before = fd_count()
    names = []
    for _ in range(5):
        s = _store.Store.create(4 * MiB)           # with the pre-fault thread
        a = _store.Store.attach(s.name)
        f = _store.Store.attach_fd(os.dup(s.fd), prefault=False)
        assert f.name == s.name
        names.append(s.name)
        for h in (a, f):
            h.close()
        s.unlink()
        s.unlink()                                 # idempotent
        s.close()
        s.unlink()                                 # by name, after close
    assert fd_count() == before
    assert not any(os.path.exists(n) for n in names)
    assert [n for n in os.listdir("/dev/shm") if n.startswith("pygen-%d-" % os.getpid())] == []


def test_context_manager_and_name(make_store, tmp_path):
    name = "pygen-%d-test-named" % os.getpid()
    with _store.Store.create(1 * MiB, name=name, prefault=False) as s:
        assert s.name == "/dev/shm/" + name
        s.unlink()
    assert s.closed


def test_slots_and_release_slot_in_process(make_store):
    s = make_store(max_slots=4)
    a = _store.Store.attach(s.name, prefault=False)
    assert a.slot == 1 and not a.is_creator
    assert sorted(s.slots()) == [(0, os.getpid()), (1, os.getpid())]
    k = oid(13)
    s.create_object(k, 10)
    s.seal(k)
    b = a.get(k)
    assert s.info(k)["pinned_slots"] == [1]
    assert s.release_slot(1, pid=os.getpid() + 1) == 0     # pid mismatch: nothing
    assert s.release_slot(1) == 1
    assert s.info(k)["pinned_slots"] == []
    with pytest.raises(ObjectStoreError):
        s.release_slot(0)                                   # our own slot
    b.release()   # its slot is gone: only the local count drops
    del b
    with pytest.raises(ObjectStoreError, match="taken for dead"):
        a.get(k)
    a.close()
    assert s.slots() == [(0, os.getpid())]
    s.check()


def test_list_ids_many(make_store):
    s = make_store(max_objects=512)
    ids = {oid(i) for i in range(300)}
    for k in ids:
        s.create_object(k, 1)
    assert set(s.list_ids()) == ids
    assert s.stats()["objects"] == 300
    for k in ids:
        s.abort(k)
    assert s.list_ids() == []


def test_close_while_another_thread_waits(make_store):
    s = make_store()
    other = _store.Store.attach(s.name, prefault=False)
    k = oid(14)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("buf", other.get(k, timeout=10)))
    t.start()
    time.sleep(0.05)
    other.close()                 # a call is in flight without the GIL: close is deferred
    assert other.closed and len(s.slots()) == 2
    w = s.create_object(k, 10)
    w.data[:2] = b"hi"
    del w
    s.seal(k)
    t.join(30)
    assert not t.is_alive()
    assert bytes(got["buf"].data[:2]) == b"hi"   # mapped and pinned
    assert len(s.slots()) == 2
    del got["buf"]                # the last user: now the slot goes and the map with it
    assert s.slots() == [(0, os.getpid())]
    s.check()


def test_named_store_exists(make_store):
    s = make_store(1 * MiB)
    from pygen.exceptions import ObjectExistsError
    with pytest.raises(ObjectExistsError, match="already exists"):
        _store.Store.create(1 * MiB, name=s.name)
