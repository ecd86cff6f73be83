"""One way to turn a value into bytes and back: pickle protocol 5 + cloudpickle.

    value --cloudpickle(protocol 5, buffer_callback)--> pickle stream + out-of-band buffers
                                                         (numpy arrays: views, no copy)

    small (< INLINE_THRESHOLD)          large
      to_bytes(): header|stream|buffers   write_to(store, oid): create -> copy each buffer
      travels inside a message            once into the arena (GIL released) -> seal

    deserialize(bytes)                  deserialize(ObjectBuffer)
      buffers are slices of the bytes     buffers are read-only slices of the pinned
                                          arena view: arrays come back zero-copy and
                                          keep the object pinned while they live

The encoding is the same in both cases, so there is a single reader:

    metadata = HEADER | nbuf x (offset, length) | pickle stream
    data     = buffer 0 | pad to 64 | buffer 1 | ...      (64-byte aligned for SIMD)

Inline bytes are ``metadata | pad to 64 | data``; the header says where data starts.
Refs met while pickling are recorded (see :func:`collect_refs`) so the runtime can keep
the objects they name alive for as long as the enclosing value lives.
"""
from __future__ import annotations

import collections
import copyreg
import io
import marshal
import pickle
import struct
import sys
import threading
import types
from typing import Any, Callable, List, Optional, Sequence

import cloudpickle

from . import _store

__all__ = [
    "INLINE_THRESHOLD",
    "SerializedValue",
    "serialize",
    "serialize_error",
    "dumps_by_value",
    "deserialize",
    "collect_refs",
    "current_ref_collector",
]

# Values whose encoding is below this travel inside control messages.  ~100 KiB is where a
# store round trip (create + copy + seal + a pin on get, ~10 us) costs less than pushing the
# bytes through a socket twice (~25 us at the ~8 GB/s a socketpair does here for 100 KiB).
INLINE_THRESHOLD = 100 * 1024

_MAGIC = b"PGS1"
_HEADER = struct.Struct("<4sIIQQ")  # magic, flags, nbuf, stream length, data offset (inline)
_BUFDESC = struct.Struct("<QQ")      # offset in data region, length
_HEADER_1BUF = struct.Struct(_HEADER.format + _BUFDESC.format[1:])
_ALIGN = 64

_SKEW_ROOM = _store.COPY_SKEW   # slack before each large buffer, see write_to
_SKEW_MIN = INLINE_THRESHOLD    # buffers this large get it (smaller ones: not worth it)

FLAG_ERROR = 1  # the value is an exception to raise on get

# Types whose pickle can hold no ref, no out-of-band buffer and no ``__main__`` object.
SCALARS = frozenset((int, float, str, bytes, bool, type(None), complex))

_local = threading.local()


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


class collect_refs:
    """Context manager: every ObjectRef pickled inside it is appended to ``self.refs``."""

    def __init__(self) -> None:
        self.refs: list = []
        self._outer: Optional[list] = None

    def __enter__(self) -> "collect_refs":
        self._outer = getattr(_local, "refs", None)
        _local.refs = self.refs
        return self

    def __exit__(self, *exc: Any) -> None:
        _local.refs = self._outer


def current_ref_collector() -> Optional[list]:
    """The list an ObjectRef's ``__reduce__`` appends itself to, if pickling is collecting."""
    return getattr(_local, "refs", None)


class SerializedValue:
    """A value measured and pickled, ready to be written inline or into the store."""

    __slots__ = ("stream", "buffers", "flags", "contained_refs", "meta_size", "data_size",
                 "_offsets")

    def __init__(self, stream: bytes, buffers: Sequence[memoryview], flags: int,
                 contained_refs: list) -> None:
        self.stream = stream
        self.buffers = list(buffers)
        self.flags = flags
        self.contained_refs = contained_refs
        offsets = []
        pos = 0
        for buf in self.buffers:
            pos = _align(pos)
            offsets.append(pos)
            pos += buf.nbytes
            if buf.nbytes >= _SKEW_MIN:
                pos += _SKEW_ROOM  # room to shift it when written (see write_to)
        self._offsets = offsets
        self.data_size = pos
        self.meta_size = _HEADER.size + _BUFDESC.size * len(self.buffers) + len(stream)

    @property
    def total_size(self) -> int:
        """Bytes this value takes once encoded (inline or in the arena)."""
        return _align(self.meta_size) + self.data_size

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    def _metadata(self, data_offset: int, offsets: Sequence[int]) -> bytes:
        if len(offsets) == 1:  # one numpy array, the common large value: one pack
            return _HEADER_1BUF.pack(_MAGIC, self.flags, 1, len(self.stream), data_offset,
                                     offsets[0], self.buffers[0].nbytes) + self.stream
        parts = [_HEADER.pack(_MAGIC, self.flags, len(self.buffers), len(self.stream), data_offset)]
        parts += [_BUFDESC.pack(off, buf.nbytes) for off, buf in zip(offsets, self.buffers)]
        parts.append(self.stream)
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        """The inline encoding: metadata, then the buffers at aligned offsets."""
        if not self.buffers:
            return self._metadata(0, ())
        data_offset = _align(self.meta_size)
        out = bytearray(data_offset + self.data_size)
        out[: self.meta_size] = self._metadata(data_offset, self._offsets)
        for off, buf in zip(self._offsets, self.buffers):
            start = data_offset + off
            out[start: start + buf.nbytes] = buf
        return bytes(out)

    def write_to(self, store: Any, object_id: bytes) -> None:
        """Create ``object_id`` in ``store``, copy every buffer in once, seal it.

        On any failure the half-written object is aborted, never left behind.
        """
        writer = store.create_object(object_id, self.data_size, self.meta_size)
        try:
            data = writer.data
            offsets = self._offsets
            if self.data_size >= _SKEW_MIN:
                # each large buffer may move up by _SKEW_ROOM: placed so that the copy
                # does not run into 4K aliasing with its source (1.4x at 1 MB)
                offsets = [off + _store.copy_skew(data, off, buf)
                           if buf.nbytes >= _SKEW_MIN else off
                           for off, buf in zip(offsets, self.buffers)]
            meta = writer.metadata
            meta[:] = self._metadata(0, offsets)
            for off, buf in zip(offsets, self.buffers):
                _store.copy_into(data, off, buf)
            del meta, data
        except BaseException:
            store.abort(object_id)
            raise
        store.seal(object_id)


def serialize(value: Any, *, error: bool = False) -> SerializedValue:
    """Pickle ``value`` with out-of-band buffers; raises what pickling raises.

    The C pickler goes first (4-5x faster than cloudpickle on small values).  Its
    result is kept unless it refers to ``__main__``, whose functions and classes a worker
    cannot import: then, as when plain pickling fails (lambdas, local classes),
    cloudpickle pickles them by value.
    """
    if type(value) is _ndarray_type and not error:
        stream = _array_streams.get(_array_key(value))
        if stream is not None:  # a plain array seen before: its pickle is known
            return SerializedValue(stream, (pickle.PickleBuffer(value).raw(),), 0, [])
    buffers: List[memoryview] = []
    with collect_refs() as collector:
        try:
            stream = _fast_dumps(value, buffers)
            if b"__main__" in stream:
                raise pickle.PicklingError("refers to __main__")
        except Exception:
            del buffers[:]
            del collector.refs[:]
            stream = dumps_by_value(value, buffer_callback=_keeper(buffers))
    if type(value) is _ndarray_type and not error and len(buffers) == 1:
        _remember_array_stream(value, stream)
    return SerializedValue(stream, buffers, FLAG_ERROR if error else 0, collector.refs)


# -- plain numpy arrays: the pickle stream depends only on dtype, shape, layout and
# writeability (the data goes out-of-band), so it is kept and reused: serialize then costs
# ~1 us instead of ~4 for an array of a shape seen before.

_ndarray_type: Any = None     # numpy.ndarray once numpy is imported (see _dispatch_table)
_array_streams: dict = {}
_ARRAY_STREAMS_MAX = 256


def _remember_array_stream(arr: Any, stream: bytes) -> None:
    if _reduce_ndarray(arr)[0] is not _rebuild_ndarray:
        return  # pickled in-band or by numpy's own reduce: not a reusable stream
    if len(_array_streams) >= _ARRAY_STREAMS_MAX:
        _array_streams.clear()
    _array_streams[_array_key(arr)] = stream


def _array_key(arr: Any) -> tuple:
    return (arr.dtype, arr.shape, arr.strides, arr.flags.writeable)


# -- the C pickler, reused per thread, with a short cut for numpy arrays --------------------
#
# numpy pickles an array through Python code that also pickles its dtype (~13 us for any
# array here).  A plain contiguous array of a simple dtype is rebuilt from (buffer, dtype
# string, shape, order) instead: the buffer still goes out-of-band (copied once into the
# arena, viewed zero-copy on the way back), and the pickle costs ~6 us.  Building a
# Pickler per call would eat half of that, so each thread keeps one.  (An array of a
# shape seen before skips the pickler altogether: see _array_streams.)

_pickler_local = threading.local()


class _ReusablePickler:
    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: List[memoryview] = []
        self.pickler = pickle.Pickler(self.file, protocol=5, buffer_callback=self._keep)
        self.table_key: Any = None
        self.busy = False

    def _keep(self, pb: pickle.PickleBuffer) -> None:
        self.buffers.append(pb.raw())

    def dumps(self, value: Any, buffers: List[memoryview]) -> bytes:
        key = (len(copyreg.dispatch_table), "numpy" in sys.modules)
        if key != self.table_key:  # numpy imported since, or copyreg entries added
            self.pickler.dispatch_table = _dispatch_table()
            self.table_key = key
        self.buffers = buffers
        self.busy = True
        try:
            self.pickler.dump(value)
            return self.file.getvalue()
        finally:
            # the memo holds every object pickled (refs too): keeping them would keep
            # what they name alive until this thread pickles again
            self.pickler.clear_memo()
            self.file.seek(0)
            self.file.truncate()
            self.busy = False
            self.buffers = []


def _fast_dumps(value: Any, buffers: List[memoryview]) -> bytes:
    pickler = getattr(_pickler_local, "pickler", None)
    if pickler is None:
        pickler = _pickler_local.pickler = _ReusablePickler()
    if pickler.busy:  # pickling from inside pickling (a __reduce__ that serializes)
        pickler = _ReusablePickler()
    return pickler.dumps(value, buffers)


def _dispatch_table() -> dict:
    table = dict(copyreg.dispatch_table)
    global _ndarray_type
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        table[numpy.ndarray] = _reduce_ndarray
        _ndarray_type = numpy.ndarray
    return table


def _reduce_ndarray(arr: Any) -> Any:
    dtype = arr.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return arr.__reduce_ex__(5)
    if arr.flags.c_contiguous:
        order = "C"
    elif arr.flags.f_contiguous:
        order = "F"
    else:  # numpy copies a strided array in-band
        return arr.__reduce_ex__(5)
    return (_rebuild_ndarray, (pickle.PickleBuffer(arr), dtype.str, arr.shape, order))


def _rebuild_ndarray(buf: Any, dtype: str, shape: tuple, order: str) -> Any:
    import numpy

    return numpy.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


# -- functions by value, keeping where their code comes from -------------------------------
#
# cloudpickle pickles a function that cannot be imported (one of ``__main__``, a lambda, a
# local function) by value, and replaces its code's file name with "<dynamic-code>" (so
# that its pickle does not depend on where it was defined).  A traceback in the worker
# then names no file and shows no source line.  pygen pickles code objects with marshal
# instead, which keeps everything, the file name included: the worker's traceback reads
# the user's file through linecache, as a local traceback does.  marshal's format is
# tied to the Python version, and every worker runs the driver's own interpreter.

_CLOUDPICKLE_REDUCE_CODE = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple:
    try:
        return marshal.loads, (marshal.dumps(code),)
    except ValueError:  # a constant marshal cannot write (code built by hand): cloudpickle's
        return _CLOUDPICKLE_REDUCE_CODE(code)


class _ByValuePickler(cloudpickle.Pickler):
    dispatch_table = collections.ChainMap({types.CodeType: _reduce_code},
                                          cloudpickle.Pickler.dispatch_table)


def dumps_by_value(value: Any, buffer_callback: Optional[Callable[[Any], Any]] = None) -> bytes:
    """``cloudpickle.dumps(value, protocol=5)``, with code objects that keep their file."""
    file = io.BytesIO()
    _ByValuePickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)
    return file.getvalue()


def serialize_error(err: BaseException) -> SerializedValue:
    """``err`` serialized so that it can be read back, or the error of the last try.

    Some exceptions pickle but cannot be unpickled: pickle rebuilds them by calling
    their class with their ``args``, which fails for an ``__init__(self, a, b)`` that
    passes one message up.  Such a TaskError's cause is then carried by state instead
    (``TaskError.with_cause_by_state``: class, ``args`` and attributes).  Only an
    exception that cannot be pickled even so is left to the caller's fallback.
    """
    from .exceptions import TaskError

    forms = [err]
    if isinstance(err, TaskError):
        forms.append(err.with_cause_by_state())
    failure: Optional[Exception] = None
    for form in forms:
        try:
            sv = serialize(form, error=True)
            deserialize(sv.to_bytes())
            return sv
        except Exception as exc:
            failure = exc
    assert failure is not None
    raise failure


def encode_small(value: Any) -> Optional[bytes]:
    """The inline encoding of a value known to hold no ref, no buffer, no ``__main__``
    object (scalars and containers of them); None if it is not small after all."""
    stream = pickle.dumps(value, protocol=5)
    if len(stream) + _HEADER.size >= INLINE_THRESHOLD:
        return None
    return _HEADER.pack(_MAGIC, 0, 0, len(stream), 0) + stream


def _keeper(buffers: List[memoryview]) -> Any:
    def keep(pb: pickle.PickleBuffer) -> None:
        buffers.append(pb.raw())
    return keep


def parse(metadata: memoryview, data: memoryview) -> "tuple[int, Any]":
    """Decode from separate metadata and data views: (flags, value)."""
    magic, flags, nbuf, stream_len, _ = _HEADER.unpack_from(metadata, 0)
    if magic != _MAGIC:
        raise ValueError("not a pygen-encoded object (bad magic)")
    pos = _HEADER.size
    bufs = []
    for _ in range(nbuf):
        off, length = _BUFDESC.unpack_from(metadata, pos)
        pos += _BUFDESC.size
        bufs.append(data[off: off + length])
    stream = metadata[pos: pos + stream_len]
    return flags, pickle.loads(stream, buffers=bufs)


def deserialize(encoded: Any) -> "tuple[int, Any]":
    """(flags, value) from inline bytes or from a pinned store buffer.

    A store buffer has ``.metadata`` and ``.data`` read-only views; arrays built over
    them keep the buffer (and with it the pin) alive.
    """
    if hasattr(encoded, "metadata"):
        return parse(encoded.metadata, encoded.data)
    if type(encoded) is bytes:
        magic, flags, nbuf, stream_len, _ = _HEADER.unpack_from(encoded, 0)
        if nbuf == 0 and magic == _MAGIC:  # the common small value: no buffers to slice
            return flags, pickle.loads(encoded[_HEADER.size:])
    view = memoryview(encoded)
    _, _, _, _, data_offset = _HEADER.unpack_from(view, 0)
    return parse(view, view[data_offset:])
