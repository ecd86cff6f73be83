"""One test per status code of the C core: each maps to exactly one exception (or, for
TIMEOUT, to a None/False return), with a message that says what happened."""
from __future__ import annotations

import errno
import os

import pytest

from pygen import _store
from pygen.exceptions import (ObjectExistsError, ObjectNotFoundError, ObjectNotSealedError,
                              ObjectStoreError, ObjectStoreFullError, PygenError)

from .conftest import MiB, oid

pytestmark = pytest.mark.timeout(60)


def test_full(make_store):
    s = make_store(1 * MiB)
    w = s.create_object(oid(1), 600_000)
    with pytest.raises(ObjectStoreFullError) as ei:
        s.create_object(oid(2), 600_000)
    e = ei.value
    assert isinstance(e, MemoryError) and isinstance(e, PygenError)
    assert e.requested == 600_000
    largest = s.stats()["largest_free"]
    assert e.available == largest
    assert "600000 bytes" in str(e) and f"largest free block is {largest} bytes" in str(e)
    del w


def test_too_large_fails_at_once_naming_both_sizes(make_store):
    s = make_store(1 * MiB)
    with pytest.raises(ObjectStoreFullError) as ei:
        s.create_object(oid(1), 2 * MiB, 10)
    assert str(ei.value) == ("object of 2097162 bytes is larger than the whole object store "
                             "of 1048576 bytes")
    assert ei.value.requested == 2 * MiB + 10
    assert ei.value.available == 1 * MiB


def test_absent(store):
    for call in (store.seal, store.abort, store.delete):
        with pytest.raises(ObjectNotFoundError) as ei:
            call(oid(1))
        assert isinstance(ei.value, KeyError) and isinstance(ei.value, ObjectStoreError)
        assert oid(1).hex() in str(ei.value)
    assert store.get(oid(1)) is None
    assert store.info(oid(1)) is None
    assert not store.contains(oid(1))


def test_exists(store):
    w = store.create_object(oid(1), 10)
    with pytest.raises(ObjectExistsError, match="already exists"):
        store.create_object(oid(1), 10)
    del w


def test_not_sealed(store):
    w = store.create_object(oid(1), 10)
    with pytest.raises(ObjectNotSealedError, match="not sealed"):
        store.delete(oid(1))
    assert store.get(oid(1)) is None          # get: None, not an error
    del w


def test_table_full(make_store):
    s = make_store(1 * MiB, max_objects=16)
    ws = [s.create_object(oid(i), 8) for i in range(16)]
    with pytest.raises(ObjectStoreFullError, match="object table is full: all 16 entries") as ei:
        s.create_object(oid(99), 8)
    assert ei.value.requested == 8
    del ws


def test_no_slot(make_store):
    s = make_store(1 * MiB, max_slots=1)
    with pytest.raises(ObjectStoreError, match="process slots") as ei:
        _store.Store.attach(s.name, prefault=False)
    assert "max_slots" in str(ei.value)


def test_timeout_is_none_or_false(store):
    assert store.get(oid(1), timeout=0.02) is None
    assert store.wait_sealed(oid(1), timeout=0.02) is False
    w = store.create_object(oid(1), 1)
    assert store.get(oid(1), timeout=0.02) is None      # created, never sealed
    del w


def test_nospc_when_dev_shm_is_too_small():
    sv = os.statvfs("/dev/shm")
    free = sv.f_bavail * sv.f_frsize
    with pytest.raises(ObjectStoreFullError) as ei:
        _store.Store.create(free + (1 << 30))
    msg = str(ei.value)
    assert "/dev/shm has" in msg and "bytes free" in msg
    assert "smaller object_store_memory" in msg and "mount -o remount,size=" in msg
    assert ei.value.requested == free + (1 << 30)
    assert ei.value.available is not None


def test_invalid(store):
    store.create_object(oid(1), 1)   # writer dropped at once
    store.seal(oid(1))
    with pytest.raises(ObjectStoreError, match="already sealed"):
        store.seal(oid(1))
    with pytest.raises(ObjectStoreError, match="cannot be aborted"):
        store.abort(oid(1))
    with pytest.raises(ObjectStoreError, match="out of range"):
        store.release_slot(10_000)
    with pytest.raises(ObjectStoreError):
        _store._debug_crash_at(999, 1)
    with pytest.raises(ObjectStoreError, match="capacity"):
        _store.Store.create(100)


def test_sys_error_keeps_errno():
    with pytest.raises(OSError) as ei:
        _store.Store.attach_fd(987654)
    assert ei.value.errno == errno.EBADF
    assert not isinstance(ei.value, PygenError)


def test_attach_missing_name():
    with pytest.raises(ObjectNotFoundError, match="no segment named"):
        _store.Store.attach("/dev/shm/pygen-no-such-store")


def test_id_type_and_length(store):
    with pytest.raises(TypeError, match="must be bytes"):
        store.get("x" * 20)
    with pytest.raises(TypeError):
        store.create_object(bytearray(20), 1)
    with pytest.raises(ValueError, match="20 bytes, got 3"):
        store.seal(b"abc")
    with pytest.raises(ValueError):
        store.create_object(oid(1), -1)


def test_closed_store(make_store):
    s = make_store(1 * MiB)
    s.close()
    with pytest.raises(ObjectStoreError, match="closed"):
        s.stats()


def test_punch_hole_frees_blocks_and_reports_a_bad_fd():
    fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)   # tmpfs: holes, no name
    try:
        os.pwrite(fd, b"x" * (1 << 20), 0)
        os.fsync(fd)
        _store.punch_hole(fd, 0, 1 << 19)
        assert os.fstat(fd).st_size == 1 << 20                 # the size is kept
        assert os.fstat(fd).st_blocks * 512 <= (1 << 19) + 4096  # the first half is freed
        assert os.pread(fd, 8, 0) == b"\0" * 8 and os.pread(fd, 8, 1 << 19) == b"x" * 8
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="punch_hole.*Bad file descriptor"):
        _store.punch_hole(-1, 0, 10)
