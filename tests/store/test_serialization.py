"""pygen.serialization through the binding: one copy on write, none on read."""
from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from pygen import _store, serialization
from pygen.serialization import deserialize, serialize

from .conftest import MiB, oid

pytestmark = pytest.mark.timeout(60)


def _arena_span(buf):
    """[lo, hi) addresses of an ObjectBuffer's data region in this process."""
    lo = np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]
    return lo, lo + len(buf)


def _ptr(arr):
    return arr.__array_interface__["data"][0]


def test_numpy_round_trip_is_zero_copy(store):
    a = np.random.default_rng(0).standard_normal((500, 300))
    v = serialize(a)
    assert len(v.buffers) == 1
    v.write_to(store, oid(1))
    assert store.contains(oid(1))
    buf = store.get(oid(1))
    flags, out = deserialize(buf)
    assert flags == 0
    assert np.array_equal(out, a)
    assert not out.flags.writeable
    lo, hi = _arena_span(buf)
    assert lo <= _ptr(out) < hi and _ptr(out) + out.nbytes <= hi
    # the array's base chain ends in the ObjectBuffer: it holds the pin
    base = out
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    assert isinstance(base, memoryview) and base.obj is buf
    del base
    with pytest.raises(ValueError):
        out[0, 0] = 1.0
    del buf
    gc.collect()
    assert store.info(oid(1))["pins_here"] == 1        # the array keeps it pinned
    assert store.delete(oid(1)) is False
    assert float(out.sum()) == pytest.approx(float(a.sum()))
    del out
    assert store.stats()["objects"] == 0


def test_frombuffer_and_pickle_buffers_copy_nothing(store):
    a = np.arange(1 << 16, dtype=np.int64)
    serialize(a).write_to(store, oid(2))
    buf = store.get(oid(2))
    lo, hi = _arena_span(buf)
    _, out = deserialize(buf)
    start = _ptr(out) - lo      # where write_to placed it (see copy.h, 4K aliasing)
    del out
    raw = np.frombuffer(buf, dtype=np.int64, count=a.size, offset=start)
    assert _ptr(raw) == lo + start and np.shares_memory(raw, np.frombuffer(buf, dtype=np.uint8))
    # pickle 5 with our own buffers: the loaded array views them
    stream = pickle.dumps(a, protocol=5, buffer_callback=lambda pb: None)
    b2 = pickle.loads(stream, buffers=[buf.data[start: start + a.nbytes]])
    assert lo <= _ptr(b2) < hi and np.shares_memory(b2, raw)
    assert np.array_equal(b2, a)
    del raw, b2, buf


def test_one_copy_on_write(store, monkeypatch):
    a = np.ones(3 * MiB, dtype=np.uint8)
    copies = []
    real = _store.copy_into

    def counting(dst, off, src):
        copies.append(memoryview(src).nbytes)
        return real(dst, off, src)

    monkeypatch.setattr(_store, "copy_into", counting)
    serialize(a).write_to(store, oid(3))
    assert copies == [a.nbytes]   # the array's bytes are copied once, straight in
    buf = store.get(oid(3))
    _, out = deserialize(buf)
    assert out.nbytes == a.nbytes and int(out[-1]) == 1
    del out, buf


def test_several_buffers_and_plain_values(store):
    value = {"x": np.arange(10), "y": np.zeros((3, 3), dtype=np.float32).T, "z": "text",
             "w": list(range(5))}
    serialize(value).write_to(store, oid(4))
    _, out = deserialize(store.get(oid(4)))
    assert out["z"] == "text" and out["w"] == list(range(5))
    assert np.array_equal(out["x"], value["x"]) and np.array_equal(out["y"], value["y"])
    serialize(12345).write_to(store, oid(5))
    assert deserialize(store.get(oid(5))) == (0, 12345)
    err = ValueError("boom")
    serialize(err, error=True).write_to(store, oid(6))
    flags, e = deserialize(store.get(oid(6)))
    assert flags == serialization.FLAG_ERROR and isinstance(e, ValueError)
    del out


def test_inline_bytes_same_reader(store):
    a = np.arange(100, dtype=np.int16)
    data = serialize(a).to_bytes()
    _, out = deserialize(data)
    assert np.array_equal(out, a)


def test_large_buffers_are_placed_clear_of_4k_aliasing(store):
    """Each large buffer lands 64-aligned at the page offset of its source rounded down to
    64 (a copy into a destination a little ahead of its source mod 4096 runs ~1.4x slower,
    see copy.h); small ones stay packed; every byte arrives."""
    backing = np.random.default_rng(1).integers(0, 255, size=4 * MiB, dtype=np.uint8)
    parts = [backing[16:16 + 300_000], backing[1_000_048:1_000_048 + 200_001],
             np.arange(50, dtype=np.int64), backing[2_000_000:2_000_000 + 150_000],
             backing[3_000_100:3_000_100 + 102_400]]
    v = serialize(parts)
    assert len(v.buffers) == 5
    v.write_to(store, oid(9))
    buf = store.get(oid(9))
    lo, hi = _arena_span(buf)
    _, out = deserialize(buf)
    for src, dst in zip(parts, out):
        assert np.array_equal(src, dst)
        assert _ptr(dst) % 64 == 0 and lo <= _ptr(dst) and _ptr(dst) + dst.nbytes <= hi
        if src.nbytes >= serialization.INLINE_THRESHOLD:
            assert (_ptr(dst) - (_ptr(src) & ~63)) % 4096 == 0
    spans = sorted((_ptr(a), _ptr(a) + a.nbytes) for a in out)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    # the same value inline (no store): the reader does not care where buffers sit
    _, again = deserialize(v.to_bytes())
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    del out, again, buf


def test_copy_skew():
    """For a 64-aligned destination (what write_to hands it), the skew puts the copy at
    the page offset of its source rounded down to 64, for every pair of offsets."""
    room = np.zeros(16 * 4096 + 64, dtype=np.uint8)
    start = -_ptr(room) % 64
    dst = room[start:start + 16 * 4096]  # 64-aligned, as an arena block is
    assert _ptr(dst) % 64 == 0
    src = np.zeros(16 * 4096, dtype=np.uint8)
    checked = 0
    for d_off in range(0, 8192, 64 * 7):
        for s_off in range(0, 8192, 24 * 7):
            skew = _store.copy_skew(dst, d_off, src[s_off:])
            assert 0 <= skew <= _store.COPY_SKEW and skew % 64 == 0
            d_addr = _ptr(dst) + d_off + skew
            s_addr = _ptr(src) + s_off
            assert (d_addr - (s_addr & ~63)) % 4096 == 0, (d_off, s_off, skew)
            checked += 1
    assert checked == len(range(0, 8192, 64 * 7)) * len(range(0, 8192, 24 * 7))


@pytest.mark.parametrize("make", [
    lambda: np.arange(24, dtype=np.float64).reshape(4, 6),
    lambda: np.asfortranarray(np.arange(24, dtype=np.float64).reshape(4, 6)),
    lambda: np.arange(24, dtype=np.int32).reshape(4, 6),
    lambda: np.arange(24, dtype=">i4").reshape(4, 6),
    lambda: np.arange(48, dtype=np.float64).reshape(4, 12)[:, ::2],   # strided: in-band
    lambda: np.zeros((0, 6)),
    lambda: np.array(3.5),
    lambda: np.array(["ab", "cde"]),
    lambda: np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),           # structured
    lambda: np.array([None, 1], dtype=object),
    lambda: np.arange(24.0).reshape(4, 6).view(np.ndarray)[1:3],
], ids=["C", "F", "int32", "big-endian", "strided", "empty", "0-d", "str", "structured",
        "object", "view"])
@pytest.mark.parametrize("readonly", [False, True])
def test_array_streams_are_reused_only_when_equivalent(make, readonly):
    """A plain array's pickle is kept per (dtype, shape, strides, writeable) and reused;
    what comes back is the same whether the stream was fresh or reused, and equals what a
    fresh pickler writes."""
    serialization._array_streams.clear()
    arrays = [make(), make()]
    for a in arrays:
        a.flags.writeable = not readonly
    first = serialize(arrays[0])
    plain = serialization._reduce_ndarray(arrays[0])[0] is serialization._rebuild_ndarray
    assert len(serialization._array_streams) == (1 if plain else 0)
    second = serialize(arrays[1])
    serialization._array_streams.clear()
    fresh = serialize(arrays[1])
    assert second.stream == fresh.stream == first.stream
    for v, a in ((first, arrays[0]), (second, arrays[1])):
        _, out = deserialize(v.to_bytes())
        assert out.dtype == a.dtype and out.shape == a.shape
        if a.flags.c_contiguous or a.flags.f_contiguous:   # else it was copied in-band
            assert (out.flags.c_contiguous, out.flags.f_contiguous) == \
                (a.flags.c_contiguous, a.flags.f_contiguous)
        if a.dtype != object:
            assert np.array_equal(out, a)
        else:
            assert list(out) == list(a)


def test_write_failure_aborts(store):
    class Bad:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        serialize(Bad()).write_to(store, oid(7))
    assert store.info(oid(7)) is None
    v = serialize(np.arange(1000))
    v.buffers[0] = memoryview(bytes(100_000))   # bigger than measured: the copy fails ...
    with pytest.raises(ValueError, match="does not fit"):
        v.write_to(store, oid(8))
    assert store.info(oid(8)) is None           # ... and the half-written object is aborted
    gc.collect()
    assert store.stats()["objects"] == 0


def test_too_large_value(make_store):
    s = make_store(1 * MiB)
    a = np.zeros(2 * MiB, dtype=np.uint8)
    v = serialize(a)
    with pytest.raises(_store_full()) as ei:
        v.write_to(s, oid(9))
    assert "is larger than the whole object store of 1048576 bytes" in str(ei.value)
    assert s.stats()["objects"] == 0


def _store_full():
    from pygen.exceptions import ObjectStoreFullError
    return ObjectStoreFullError
