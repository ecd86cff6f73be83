"""Random create/seal/get/release/delete/abort sequences against a model (hypothesis),
with the store's full invariant check (`check()`) after every step."""
from __future__ import annotations

import gc

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pygen import _store
from pygen.exceptions import (ObjectExistsError, ObjectNotFoundError, ObjectNotSealedError,
                              ObjectStoreError, ObjectStoreFullError)

pytestmark = pytest.mark.timeout(120)

KEYS = st.integers(min_value=0, max_value=11)
SIZES = st.one_of(st.integers(0, 300), st.integers(300, 40_000))


def key(k: int) -> bytes:
    return b"HYPO" + k.to_bytes(16, "big")


def pattern(k: int, gen: int, n: int) -> bytes:
    return bytes((k * 7 + gen + i) & 0xFF for i in range(min(n, 64)))


class Obj:
    """The model of one object: what the store must say about it."""

    def __init__(self, k, gen, size, writer):
        self.k, self.gen, self.size = k, gen, size
        self.sealed = False
        self.pending = False      # delete asked while pinned
        self.writer = writer      # the live ObjectWriter, if any (it pins)
        self.readers = []         # live ObjectBuffers

    @property
    def pins(self):
        return len(self.readers) + (self.writer is not None)


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.s = _store.Store.create(1 << 20, max_objects=24, prefault=False)
        self.live = {}       # k -> Obj, as the index sees them
        self.orphans = []    # aborted or deleted objects still held by pins
        self.gen = 0

    def teardown(self):
        for o in list(self.live.values()) + self.orphans:
            o.readers.clear()
            o.writer = None
        gc.collect()
        self.s.check()
        self.s.unlink()
        self.s.close()

    def _settle(self, o):
        """An object whose last pin went: freed if a delete/abort was waiting."""
        if o.pins == 0 and o.pending:
            if self.live.get(o.k) is o:
                del self.live[o.k]
            if o in self.orphans:
                self.orphans.remove(o)

    @rule(k=KEYS, size=SIZES, meta=st.integers(0, 100))
    def create(self, k, size, meta):
        if k in self.live:
            with pytest.raises(ObjectExistsError):
                self.s.create_object(key(k), size, meta)
            return
        try:
            w = self.s.create_object(key(k), size, meta)
        except ObjectStoreFullError:
            st_ = self.s.stats()
            assert (st_["largest_free"] < size + meta + 64 + 128
                    or st_["objects"] >= st_["max_objects"])
            return
        self.gen += 1
        p = pattern(k, self.gen, size)
        w.data[: len(p)] = p
        self.live[k] = Obj(k, self.gen, size, w)

    @rule(k=KEYS)
    def seal(self, k):
        o = self.live.get(k)
        if o is None:
            with pytest.raises(ObjectNotFoundError):
                self.s.seal(key(k))
        elif o.sealed:
            with pytest.raises(ObjectStoreError, match="already sealed"):
                self.s.seal(key(k))
        else:
            self.s.seal(key(k))
            o.sealed = True

    @rule(k=KEYS)
    def drop_writer(self, k):
        o = self.live.get(k)
        if o is not None and o.writer is not None:
            o.writer = None
            self._settle(o)

    @rule(k=KEYS)
    def abort(self, k):
        o = self.live.get(k)
        if o is None:
            with pytest.raises(ObjectNotFoundError):
                self.s.abort(key(k))
        elif o.sealed:
            with pytest.raises(ObjectStoreError, match="cannot be aborted"):
                self.s.abort(key(k))
        else:
            self.s.abort(key(k))
            del self.live[k]           # the id is free at once
            if o.pins:
                o.pending = True
                self.orphans.append(o)

    @rule(k=KEYS)
    def get(self, k):
        o = self.live.get(k)
        b = self.s.get(key(k))
        if o is None or not o.sealed or o.pending:
            assert b is None
            return
        assert b is not None and len(b) == o.size
        p = pattern(k, o.gen, o.size)
        assert bytes(b.data[: len(p)]) == p
        o.readers.append(b)

    @precondition(lambda self: any(o.readers for o in list(self.live.values()) + self.orphans))
    @rule(data=st.data())
    def release(self, data):
        holders = [o for o in list(self.live.values()) + self.orphans if o.readers]
        o = data.draw(st.sampled_from(holders))
        b = o.readers.pop(data.draw(st.integers(0, len(o.readers) - 1)))
        if data.draw(st.booleans()):
            b.release()
        del b
        self._settle(o)

    @rule(k=KEYS)
    def delete(self, k):
        o = self.live.get(k)
        if o is None or o.pending:
            with pytest.raises(ObjectNotFoundError):
                self.s.delete(key(k))
        elif not o.sealed:
            with pytest.raises(ObjectNotSealedError):
                self.s.delete(key(k))
        else:
            freed = self.s.delete(key(k))
            assert freed == (o.pins == 0)
            if freed:
                del self.live[k]
            else:
                o.pending = True

    @invariant()
    def consistent(self):
        report = self.s.check()
        st_ = self.s.stats()
        n = len(self.live) + len(self.orphans)
        assert report["objects"] == st_["objects"] == n
        assert st_["sealed"] == sum(o.sealed for o in list(self.live.values()) + self.orphans)
        assert st_["pinned"] == sum(o.pins > 0 for o in list(self.live.values()) + self.orphans)
        assert st_["delete_pending"] == sum(o.pending for o in list(self.live.values()) + self.orphans)
        assert st_["used"] + st_["free"] == st_["capacity"]
        assert sorted(self.s.list_ids()) == sorted(key(k) for k in self.live)
        for k, o in self.live.items():
            assert self.s.contains(key(k)) == (o.sealed and not o.pending)


StoreModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreModel = StoreModel.TestCase
