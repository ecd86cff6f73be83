"""Fixtures for the object-store tests: stores that always get closed and unlinked, a
leak check after every test, and a fork server for child processes.

Child processes come from a multiprocessing *forkserver* whose server preloaded the
binding: each child is a fork of a clean, single-threaded interpreter (fast, and safe,
unlike forking this test process, which has pre-fault threads running).  Children
attach to the store by name, like a worker would.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal

import pytest

from pygen import _store

MiB = 1 << 20


def oid(n: int, tag: bytes = b"T") -> bytes:
    """A 20-byte object id."""
    return tag.ljust(4, b"-")[:4] + n.to_bytes(16, "big")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaked_pins():
    """Every ObjectBuffer/ObjectWriter a test made is gone when it ends."""
    yield
    gc.collect()
    assert _store._live_handles() == 0, "a test leaked ObjectBuffer/ObjectWriter objects"


@pytest.fixture
def make_store():
    """Factory: Store.create(...) whose segment is unlinked and closed after the test."""
    made = []

    def make(capacity=32 * MiB, **kwargs):
        kwargs.setdefault("prefault", False)
        s = _store.Store.create(capacity, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.unlink()
        finally:
            s.close()
        assert not os.path.exists(s.name)


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture(scope="session")
def mp():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pygen._store", "pygen.serialization", "numpy", "store._children"])
    return ctx


def kill_and_reap(proc, timeout: float = 10.0) -> None:
    """SIGKILL a child and wait for it, so its pid is gone (not a zombie)."""
    if proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended between the check and the kill
    proc.join(timeout)
    assert not proc.is_alive()
