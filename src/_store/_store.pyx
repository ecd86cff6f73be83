# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""pygen._store -- the thin Cython binding over the C object store (store.h).

    Python                              this module                         C core
    ------                              -----------                         ------
    Store.create / attach / attach_fd   owns a store_t*                     store_create / store_attach*
    s.create_object(oid, n, m) -------> ObjectWriter (pin, writable) ------ store_create_object
        w.data / w.metadata             memoryviews over the arena
    s.seal(oid) / s.abort(oid)                                              store_seal / store_abort
    s.get(oid, timeout) --------------> ObjectBuffer (pin, read-only) ----- store_get (GIL released
        b.data / b.metadata / buffer    memoryviews over the arena           while waiting)
        numpy.frombuffer(b), pickle 5 buffers: zero copies
    last view of b gone / b.release() -> unpin -------------------------- store_release

The binding holds no policy.  It converts arguments, maps status codes to exceptions in
one function (`_raise_status`), and ties lifetimes together:

* An ObjectBuffer/ObjectWriter holds one pin on its object and a reference to its Store.
  Every buffer view it exports (its own buffer protocol, `.data`, `.metadata`, numpy
  arrays or pickle buffers built on them) keeps it alive, so the pin -- and with it the
  object's memory -- outlives every view.  `release()` only stops new views; the pin goes
  when the last view does.
* A Store unmaps only when its last ObjectBuffer/ObjectWriter is gone and no call is
  running without the GIL: `close()` before that defers the real close (slot release,
  unmap) to that moment.  No view ever dangles.

ObjectBuffer/ObjectWriter cannot be built from Python.  The GIL is released around
waits, big creates (which may reserve pages) and copies (`copy_into`).
"""
cimport cython
from cpython.buffer cimport (PyBUF_ANY_CONTIGUOUS, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from c_fault cimport *
from c_status cimport *
from c_store cimport *

import os

from pygen.exceptions import (ObjectExistsError, ObjectNotFoundError, ObjectNotSealedError,
                              ObjectStoreError, ObjectStoreFullError)

__all__ = ["ID_SIZE", "Store", "ObjectBuffer", "ObjectWriter", "copy_into", "copy_skew",
           "COPY_SKEW", "punch_hole", "wait_released", "DEBUG", "CRASH_POINTS"]

ID_SIZE = STORE_ID_SIZE
DEBUG = bool(store_debug_build())

# Fault-injection points (fault.h), for the crash tests.
CRASH_POINTS = {
    "alloc_split": FAULT_ALLOC_SPLIT,
    "alloc_split_half": FAULT_ALLOC_SPLIT_HALF,
    "free_coalesce": FAULT_FREE_COALESCE,
    "free_merged": FAULT_FREE_MERGED,
    "create_filled": FAULT_CREATE_FILLED,
    "create_published": FAULT_CREATE_PUBLISHED,
    "create_indexed": FAULT_CREATE_INDEXED,
    "seal": FAULT_SEAL,
    "pin": FAULT_PIN,
    "unpin": FAULT_UNPIN,
    "delete_state": FAULT_DELETE_STATE,
    "delete_unindexed": FAULT_DELETE_UNINDEXED,
    "delete_freed": FAULT_DELETE_FREED,
    "recover": FAULT_RECOVER,
    "release_slot": FAULT_RELEASE_SLOT,
    "rebuild_begin": FAULT_REBUILD_BEGIN,
    "warm_reserved": FAULT_WARM_RESERVED,
    "warm_commit": FAULT_WARM_COMMIT,
    "purge_cleared": FAULT_PURGE_CLEARED,
    "purge_punched": FAULT_PURGE_PUNCHED,
    "create_reserved": FAULT_CREATE_RESERVED,
}

cdef enum:
    # Longest stretch spent in C without the GIL during a wait: between stretches we
    # check for signals (Ctrl-C interrupts a `get(timeout=None)`).
    WAIT_SLICE_NS = 100000000
    # Creates at least this big release the GIL: they may reserve (fallocate) pages.
    BIG_CREATE = 1048576

cdef Py_ssize_t _n_live = 0       # ObjectBuffer/ObjectWriter holding a pin, all stores


def _live_handles():
    """How many ObjectBuffer/ObjectWriter of this process still hold a pin (tests)."""
    return _n_live


# ---- the one place where status codes become exceptions ---------------------------

cdef str _hex(object oid):
    return oid.hex() if isinstance(oid, bytes) else repr(oid)


cdef int _raise_status(int rc, str op, object oid=None, object requested=None,
                       Store store=None) except -1:
    """Raise the exception for status `rc` of operation `op` (never returns normally)."""
    detail = store_last_error().decode("utf-8", "replace")
    what = f" {_hex(oid)}" if oid is not None else ""
    if rc in (STORE_ERR_FULL, STORE_ERR_TOO_LARGE, STORE_ERR_TABLE_FULL):
        st = store._stats_or_none() if store is not None else None
        capacity = st["capacity"] if st else None
        largest = st["largest_free"] if st else None
        if rc == STORE_ERR_TOO_LARGE:
            raise ObjectStoreFullError(
                f"object of {requested} bytes is larger than the whole object store of "
                f"{capacity} bytes", requested, capacity)
        if rc == STORE_ERR_FULL:
            raise ObjectStoreFullError(
                f"object store is full: no room for an object of {requested} bytes; the "
                f"largest free block is {largest} bytes ({st['free'] if st else '?'} of "
                f"{capacity} bytes free)", requested, largest)
        raise ObjectStoreFullError(
            f"object table is full: all {st['max_objects'] if st else '?'} entries are in use "
            f"(object of {requested} bytes, {largest} bytes free in the largest block); "
            f"create the store with a larger max_objects", requested, largest)
    if rc == STORE_ERR_NOSPC:
        try:
            sv = os.statvfs("/dev/shm")
            available = sv.f_bavail * sv.f_frsize
        except OSError:
            available = None
        raise ObjectStoreFullError(
            f"{detail}: use a smaller object_store_memory, or make /dev/shm larger "
            f"(e.g. `sudo mount -o remount,size=<bytes> /dev/shm`)", requested, available)
    if rc == STORE_ERR_ABSENT:
        if oid is None:   # a store, not an object, is missing: the core says which
            raise ObjectNotFoundError(f"{op}: {detail}")
        raise ObjectNotFoundError(f"object{what} is not in the object store ({op})")
    if rc == STORE_ERR_EXISTS:
        if oid is None:   # a segment name is taken
            raise ObjectExistsError(f"{op}: {detail}")
        raise ObjectExistsError(f"object{what} already exists in the object store ({op})")
    if rc == STORE_ERR_NOT_SEALED:
        raise ObjectNotSealedError(f"object{what} is not sealed yet ({op})")
    if rc == STORE_ERR_NO_SLOT:
        raise ObjectStoreError(
            f"{op}: {detail}; create the store with a larger max_slots, or release the slots "
            f"of dead processes (Store.release_slot / Store.reap)")
    if rc == STORE_ERR_INVALID:
        raise ObjectStoreError(f"{op}{what}: {detail}")
    if rc == STORE_ERR_SYS:
        err = store_last_errno()
        raise OSError(err, f"{op}: {detail}: {strerror(err).decode()}")
    if rc == STORE_ERR_TIMEOUT:   # callers turn timeouts into None/False before this
        raise TimeoutError(f"{op}{what}: timed out")
    raise ObjectStoreError(f"{op}: unknown status {rc}")


# ---- argument conversion ----------------------------------------------------------

cdef inline const uint8_t *_id_ptr(object oid) except NULL:
    if type(oid) is bytes and PyBytes_GET_SIZE(oid) == STORE_ID_SIZE:
        return <const uint8_t *>PyBytes_AS_STRING(oid)
    if not isinstance(oid, bytes):
        raise TypeError(f"object id must be bytes, not {type(oid).__name__}")
    if len(oid) != STORE_ID_SIZE:
        raise ValueError(f"object id must be {STORE_ID_SIZE} bytes, got {len(oid)}")
    return <const uint8_t *>PyBytes_AS_STRING(oid)


cdef inline int64_t _timeout_ns(object timeout) except? -2:
    """None: forever (-1); seconds otherwise (negative counts as 0)."""
    if timeout is None:
        return -1
    cdef double t = timeout
    if t <= 0:
        return 0
    if t > 1e9:
        return -1
    return <int64_t>(t * 1e9)


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


# ---- pinned objects and their views -----------------------------------------------

cdef class Store

@cython.no_gc
cdef class _Pinned:
    """An object held by one pin; its buffer protocol exports the data region."""

    cdef Store _store
    cdef bytes _oid
    cdef uint32_t _entry
    cdef uint8_t *_data
    cdef uint8_t *_meta
    cdef Py_ssize_t _data_size
    cdef Py_ssize_t _meta_size
    cdef Py_ssize_t _exports    # buffer views handed out and not yet released
    cdef bint _pinned           # the pin is still held
    cdef bint _released         # release() was called: no new views
    cdef bint _readonly

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} cannot be created directly; use "
                        f"Store.get / Store.create_object")

    def __dealloc__(self):
        self._unpin()

    cdef void _unpin(self) noexcept:
        global _n_live
        if not self._pinned:
            return
        self._pinned = False
        _n_live -= 1
        cdef Store store = self._store
        if store._s != NULL:
            store_release(store._s, self._entry, <const uint8_t *>PyBytes_AS_STRING(self._oid))
        store._user_done()

    cdef void _export_done(self) noexcept:
        self._exports -= 1
        if self._released and self._exports == 0:
            self._unpin()

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self._released:
            raise ValueError("buffer was released")
        PyBuffer_FillInfo(view, self, self._data, self._data_size, self._readonly, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._export_done()

    def __len__(self):
        return self._data_size

    @property
    def object_id(self):
        return self._oid

    @property
    def data(self):
        """The data region as a memoryview (keeps this object, and its pin, alive)."""
        return memoryview(self)

    @property
    def metadata(self):
        """The metadata region as a memoryview (keeps this object, and its pin, alive)."""
        if self._released:
            raise ValueError("buffer was released")
        cdef _Region r = _Region.__new__(_Region)
        r._owner = self
        r._ptr = self._meta
        r._len = self._meta_size
        return memoryview(r)

    @property
    def released(self):
        return self._released

    def release(self):
        """Give up the pin: now if no view is alive, else when the last one goes.

        Idempotent.  No new views can be taken afterwards.
        """
        self._released = True
        if self._exports == 0:
            self._unpin()

    def __repr__(self):
        return (f"<{type(self).__name__} {self._oid.hex()} data={self._data_size} "
                f"meta={self._meta_size}{' released' if self._released else ''}>")


@cython.no_gc
@cython.final
cdef class ObjectBuffer(_Pinned):
    """A sealed object, pinned, read-only.  Made by Store.get."""


@cython.no_gc
@cython.final
cdef class ObjectWriter(_Pinned):
    """An unsealed object being written, pinned, writable.  Made by Store.create_object."""


@cython.no_gc
@cython.final
cdef class _Region:
    """Exports one region (the metadata) of a _Pinned, counting as one of its views."""

    cdef _Pinned _owner
    cdef uint8_t *_ptr
    cdef Py_ssize_t _len

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self._owner is None:
            raise TypeError("_Region cannot be created directly")
        PyBuffer_FillInfo(view, self, self._ptr, self._len, self._owner._readonly, flags)
        self._owner._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._owner._export_done()


# ---- the store --------------------------------------------------------------------

cdef class Store:
    """A process's handle on one shared-memory object store (see the module docstring)."""

    cdef store_t *_s
    cdef Py_ssize_t _users      # live buffers/writers + calls running without the GIL
    cdef bint _closing          # close() was called: no new operations
    cdef object _name
    cdef int _fd
    cdef uint32_t _slot
    cdef object _capacity
    cdef bint _is_creator

    def __init__(self, *args, **kwargs):
        raise TypeError("use Store.create(), Store.attach() or Store.attach_fd()")

    def __dealloc__(self):
        if self._s != NULL:
            store_close(self._s)
            self._s = NULL

    @staticmethod
    cdef Store _wrap(store_t *s):
        cdef Store self = Store.__new__(Store)
        self._s = s
        self._name = store_name(s).decode("utf-8", "surrogateescape")
        self._fd = store_fd(s)
        self._slot = store_slot(s)
        self._capacity = store_capacity(s)
        self._is_creator = store_is_creator(s)
        return self

    @staticmethod
    def create(capacity, *, name=None, max_objects=None, max_slots=256, prefault=True,
               window_min=None, window_max=None, purge_delay=None):
        """Create a new store with an arena of `capacity` bytes (rounded up to a page).

        `capacity` is a ceiling: memory is reserved as objects need it.  With `prefault`
        this process runs the store's two threads: the warmer keeps a window of
        `window_min` bytes (growing with use up to `window_max`) reserved and mapped above
        the allocator's high-water mark; the trimmer gives back free memory idle for
        `purge_delay` seconds.  None: the defaults (store.h)."""
        cdef store_options_t opt
        cdef store_t *s = NULL
        cdef bytes bname = None
        if capacity < 0:
            raise ValueError("capacity must be positive")
        for what, v in (("window_min", window_min), ("window_max", window_max)):
            if v is not None and v <= 0:
                raise ValueError(f"{what} must be > 0 bytes, got {v}")
        if purge_delay is not None and not (0 < purge_delay <= 3600):
            raise ValueError(f"purge_delay must be in (0, 3600] seconds, got {purge_delay}")
        opt.capacity = capacity
        opt.max_objects = 0 if max_objects is None else max_objects
        opt.max_slots = max_slots
        opt.prefault = bool(prefault)
        opt.window_min = 0 if window_min is None else window_min
        opt.window_max = 0 if window_max is None else window_max
        opt.purge_delay_ms = 0 if purge_delay is None else max(1, <uint32_t>(purge_delay * 1000))
        opt.name = NULL
        if name is not None:
            bname = os.fsencode(name)
            opt.name = bname
        cdef int rc
        with nogil:
            rc = store_create(&opt, &s)
        if rc != STORE_OK:
            _raise_status(rc, "create store", None, capacity)
        return Store._wrap(s)

    @staticmethod
    def attach(name, *, prefault=True):
        """Attach to an existing store by name (its path, as `Store.name` gives it)."""
        cdef store_t *s = NULL
        cdef bytes bname = os.fsencode(name)
        cdef const char *cname = bname
        cdef int rc
        cdef int pf = bool(prefault)
        with nogil:
            rc = store_attach(cname, pf, &s)
        if rc != STORE_OK:
            _raise_status(rc, f"attach {name}")
        return Store._wrap(s)

    @staticmethod
    def attach_fd(int fd, *, prefault=True):
        """Attach through an inherited fd; the store owns the fd from now on."""
        cdef store_t *s = NULL
        cdef int rc
        cdef int pf = bool(prefault)
        with nogil:
            rc = store_attach_fd(fd, pf, &s)
        if rc != STORE_OK:
            _raise_status(rc, f"attach fd {fd}")
        return Store._wrap(s)

    cdef store_t *_handle(self) except NULL:
        if self._s == NULL or self._closing:
            raise ObjectStoreError("the object store is closed")
        return self._s

    cdef void _user_done(self) noexcept:
        self._users -= 1
        if self._users == 0 and self._closing and self._s != NULL:
            store_close(self._s)
            self._s = NULL

    cdef _Pinned _pinned(self, type cls, object oid, store_obj_t *o, bint readonly):
        global _n_live
        cdef _Pinned p = cls.__new__(cls)
        p._store = self
        p._oid = oid
        p._entry = o.entry
        p._data = o.data
        p._data_size = o.data_size
        p._meta = o.meta
        p._meta_size = o.meta_size
        p._readonly = readonly
        p._pinned = True
        self._users += 1
        _n_live += 1
        return p

    # -- properties --

    @property
    def name(self):
        return self._name

    @property
    def fd(self):
        return self._fd

    @property
    def slot(self):
        return self._slot

    @property
    def capacity(self):
        return self._capacity

    @property
    def is_creator(self):
        return self._is_creator

    @property
    def closed(self):
        return self._s == NULL or self._closing

    # -- objects --

    def create_object(self, oid, Py_ssize_t data_size, Py_ssize_t meta_size=0):
        """Create `oid` with room for data_size + meta_size bytes: an ObjectWriter."""
        cdef store_t *s = self._handle()
        cdef const uint8_t *idp = _id_ptr(oid)
        cdef store_obj_t o
        cdef int rc
        if data_size < 0 or meta_size < 0:
            raise ValueError("sizes must be >= 0")
        if data_size + meta_size < BIG_CREATE:
            rc = store_create_object(s, idp, data_size, meta_size, &o)
            if rc == STORE_OK:
                return self._pinned(ObjectWriter, oid, &o, False)
        else:
            # Without the GIL another thread may call close(): counting ourselves as a
            # user until the writer exists keeps the mapping alive.
            self._users += 1
            try:
                with nogil:
                    rc = store_create_object(s, idp, data_size, meta_size, &o)
                if rc == STORE_OK:
                    return self._pinned(ObjectWriter, oid, &o, False)
            finally:
                self._user_done()
        _raise_status(rc, "create", oid, data_size + meta_size, self)

    def seal(self, oid):
        cdef int rc = store_seal(self._handle(), _id_ptr(oid))
        if rc != STORE_OK:
            _raise_status(rc, "seal", oid)

    def abort(self, oid):
        cdef int rc = store_abort(self._handle(), _id_ptr(oid))
        if rc != STORE_OK:
            _raise_status(rc, "abort", oid)

    cdef int _wait(self, store_t *s, const uint8_t *idp, int64_t timeout_ns,
                   store_obj_t *out) except? -100:
        """store_get (out != NULL) or store_wait_sealed without the GIL, in slices with a
        signal check between them.  The caller counts itself as a user of the store
        around this call (close() from another thread must not unmap under us)."""
        cdef int64_t deadline = -1 if timeout_ns < 0 else _now_ns() + timeout_ns
        cdef int64_t slice_ns
        cdef int rc
        while True:
            slice_ns = WAIT_SLICE_NS
            if deadline >= 0:
                slice_ns = min(slice_ns, max(deadline - _now_ns(), 1))
            with nogil:
                if out != NULL:
                    rc = store_get(s, idp, slice_ns, out)
                else:
                    rc = store_wait_sealed(s, idp, slice_ns)
            if rc != STORE_ERR_TIMEOUT or (deadline >= 0 and _now_ns() >= deadline):
                return rc
            PyErr_CheckSignals()

    def get(self, oid, timeout=0.0):
        """The sealed object as a pinned, read-only ObjectBuffer; None if it is absent or
        not sealed within `timeout` seconds (0: don't wait; None: wait forever)."""
        cdef store_t *s = self._handle()
        cdef const uint8_t *idp = _id_ptr(oid)
        cdef int64_t t = _timeout_ns(timeout)
        cdef store_obj_t o
        cdef int rc
        if t == 0:
            rc = store_get(s, idp, 0, &o)
            if rc == STORE_OK:
                return self._pinned(ObjectBuffer, oid, &o, True)
        else:
            self._users += 1
            try:
                rc = self._wait(s, idp, t, &o)
                if rc == STORE_OK:   # the buffer counts as a user before we stop counting
                    return self._pinned(ObjectBuffer, oid, &o, True)
            finally:
                self._user_done()
        if rc == STORE_ERR_ABSENT or rc == STORE_ERR_NOT_SEALED or rc == STORE_ERR_TIMEOUT:
            return None
        _raise_status(rc, "get", oid)

    def delete(self, oid):
        """Delete a sealed object: True if freed now, False if freed by its last unpin."""
        cdef int freed = 0
        cdef int rc = store_delete(self._handle(), _id_ptr(oid), &freed)
        if rc != STORE_OK:
            _raise_status(rc, "delete", oid)
        return freed != 0

    def contains(self, oid):
        """True if `oid` is present and sealed (and not being deleted)."""
        cdef int present = 0
        cdef int rc = store_contains(self._handle(), _id_ptr(oid), &present)
        if rc != STORE_OK:
            _raise_status(rc, "contains", oid)
        return present != 0

    def __contains__(self, oid):
        return self.contains(oid)

    def wait_sealed(self, oid, timeout=None):
        """Wait until `oid` is sealed: True, or False after `timeout` seconds."""
        cdef store_t *s = self._handle()
        cdef const uint8_t *idp = _id_ptr(oid)
        cdef int64_t t = _timeout_ns(timeout)
        cdef int rc
        if t == 0:
            rc = store_wait_sealed(s, idp, 0)
        else:
            self._users += 1
            try:
                rc = self._wait(s, idp, t, NULL)
            finally:
                self._user_done()
        if rc == STORE_OK:
            return True
        if rc == STORE_ERR_TIMEOUT:
            return False
        _raise_status(rc, "wait_sealed", oid)

    def info(self, oid):
        """A dict describing `oid`, or None if it is not in the store."""
        cdef store_t *s = self._handle()
        cdef store_info_t inf
        cdef size_t words = (store_max_slots(s) + 63) // 64
        cdef uint64_t bits[64]    # STORE_MAX_SLOTS / 64 words
        cdef int rc = store_info(s, _id_ptr(oid), &inf, bits, words)
        if rc == STORE_ERR_ABSENT:
            return None
        if rc != STORE_OK:
            _raise_status(rc, "info", oid)
        slots = [w * 64 + b for w in range(words) if bits[w] for b in range(64)
                 if (bits[w] >> b) & 1]
        return {
            "state": "sealed" if inf.state == STORE_STATE_SEALED else "created",
            "data_size": inf.data_size,
            "meta_size": inf.meta_size,
            "offset": inf.offset,
            "creator_slot": inf.creator_slot,
            "pinned_slots": slots,
            "pins_here": inf.pins_here,
            "delete_pending": bool(inf.delete_pending),
        }

    cdef object _stats_or_none(self):
        if self._s == NULL:
            return None
        try:
            return self.stats()
        except Exception:
            return None

    def stats(self):
        """Counters of the whole store (and of this process's pins and pre-fault)."""
        cdef store_stats_t st
        cdef int rc = store_stats(self._handle(), &st)
        if rc != STORE_OK:
            _raise_status(rc, "stats")
        return {
            "capacity": st.capacity, "used": st.used, "free": st.free,
            "largest_free": st.largest_free, "objects": st.objects, "sealed": st.sealed,
            "pinned": st.pinned, "delete_pending": st.delete_pending,
            "slots_in_use": st.slots_in_use, "reserved": st.reserved,
            "max_objects": st.max_objects, "max_slots": st.max_slots,
            "prefaulted": st.prefaulted, "recoveries": st.recoveries,
            "blocks": st.blocks, "free_blocks": st.free_blocks, "pins_here": st.pins_here,
            "segment_size": st.segment_size, "committed": st.committed, "tables": st.tables,
            "window": st.window, "window_target": st.window_target,
            "high_water": st.high_water, "purged": st.purged,
            "purge_delay": st.purge_delay_ms / 1000.0, "shm_bytes": st.shm_bytes,
            "trimmer_wakeups": st.trimmer_wakeups,
        }

    def list_ids(self):
        """Ids of every object in the store (created or sealed)."""
        cdef store_t *s = self._handle()
        cdef size_t n = 0, cap
        cdef uint8_t *buf
        cdef int rc = store_list(s, NULL, 0, &n)
        while rc == STORE_OK:
            cap = n + 64
            buf = <uint8_t *>malloc(cap * STORE_ID_SIZE)
            if buf == NULL:
                raise MemoryError()
            try:
                rc = store_list(s, buf, cap, &n)
                if rc == STORE_OK and n <= cap:
                    return [PyBytes_FromStringAndSize(<char *>buf + i * STORE_ID_SIZE, STORE_ID_SIZE)
                            for i in range(n)]
            finally:
                free(buf)
        _raise_status(rc, "list_ids")

    # -- process slots --

    def slots(self):
        """[(slot, pid)] of every slot in use."""
        cdef store_t *s = self._handle()
        cdef store_slot_info_t buf[STORE_MAX_SLOTS]
        cdef size_t n = 0
        cdef int rc = store_slots(s, buf, STORE_MAX_SLOTS, &n)
        if rc != STORE_OK:
            _raise_status(rc, "slots")
        return [(buf[i].slot, buf[i].pid) for i in range(n)]

    def release_slot(self, int slot, pid=None):
        """Release a dead process's slot: its pins dropped, its unsealed objects aborted.
        With `pid`, only if the slot still belongs to that pid.  Returns pins dropped."""
        cdef uint64_t dropped = 0
        cdef int rc
        if slot < 0:
            raise ValueError("slot must be >= 0")
        rc = store_release_slot(self._handle(), slot, 0 if pid is None else pid, &dropped)
        if rc != STORE_OK:
            _raise_status(rc, "release_slot")
        return dropped

    def reap(self):
        """Release every slot whose process is gone; returns how many."""
        cdef uint32_t n = 0
        cdef int rc = store_reap(self._handle(), &n)
        if rc != STORE_OK:
            _raise_status(rc, "reap")
        return n

    # -- checks, lifetime --

    def check(self):
        """Verify every invariant; a dict of counts, or ObjectStoreError naming the first
        violated invariant."""
        cdef store_report_t r
        cdef int rc = store_check(self._handle(), &r)
        if rc != STORE_OK:
            _raise_status(rc, "check")
        return {
            "blocks": r.blocks, "alloc_blocks": r.alloc_blocks, "free_blocks": r.free_blocks,
            "used": r.used, "free": r.free_bytes, "largest_free": r.largest_free,
            "objects": r.objects, "sealed": r.sealed, "pinned": r.pinned,
            "delete_pending": r.delete_pending, "slots_in_use": r.slots_in_use,
        }

    def prefault_wait(self, timeout=None):
        """Wait until the warm window is reserved and mapped (or /dev/shm refuses more):
        True, or False on timeout.  True at once in a process that runs no warmer."""
        cdef store_t *s = self._handle()
        cdef int64_t t = _timeout_ns(timeout)
        cdef int rc
        self._users += 1
        with nogil:
            rc = store_prefault_wait(s, t)
        self._user_done()
        return rc == STORE_OK

    def trim(self, all=False):
        """Give back now the free memory idle for the purge delay outside the warm window
        (all=True: every free byte, window included).  Returns the bytes given back."""
        cdef store_t *s = self._handle()
        cdef uint64_t released = 0
        cdef int flags = STORE_TRIM_ALL if all else 0
        cdef int rc
        self._users += 1
        try:
            with nogil:
                rc = store_trim(s, flags, &released)
        finally:
            self._user_done()
        if rc != STORE_OK:
            _raise_status(rc, "trim")
        return released

    def warm(self):
        """Reserve and map the warm window now, in this process.  Returns the bytes added."""
        cdef store_t *s = self._handle()
        cdef uint64_t added = 0
        cdef int rc
        self._users += 1
        try:
            with nogil:
                rc = store_warm(s, &added)
        finally:
            self._user_done()
        if rc != STORE_OK:
            _raise_status(rc, "warm")
        return added

    def close(self):
        """Release this process's slot and unmap -- at once if no ObjectBuffer/ObjectWriter
        of this store is alive, else when the last one goes (their views stay valid)."""
        if self._s == NULL or self._closing:
            return
        self._closing = True
        if self._users == 0:
            rc = store_close(self._s)
            self._s = NULL

    def unlink(self):
        """Remove the segment's name (idempotent); mappings stay valid."""
        cdef int rc
        if self._s != NULL:
            rc = store_unlink(self._s)
        else:
            bname = os.fsencode(self._name)
            rc = store_unlink_name(bname)
        if rc != STORE_OK:
            _raise_status(rc, "unlink")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"slot={self._slot}"
        return f"<Store {self._name} capacity={self._capacity} {state}>"


# ---- copies, files and test hooks ------------------------------------------------

def punch_hole(int fd, uint64_t offset, uint64_t length):
    """Give the blocks of [offset, offset+length) of file `fd` back to the file system
    (the node's spill file), keeping its size; a no-op where holes are not supported."""
    cdef int rc
    with nogil:
        rc = release_range(fd, offset, length)
    if rc != STORE_OK:
        _raise_status(rc, "punch_hole")


def copy_into(dst, Py_ssize_t offset, src):
    """Copy the bytes of buffer `src` into writable buffer `dst` at `offset`, with the GIL
    released (one copy of a numpy array into the arena; big copies are chunked and split
    over the CPUs, see copy.h).  Returns the bytes copied."""
    cdef Py_buffer d, sv
    cdef Py_ssize_t n
    PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE | PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(src, &sv, PyBUF_ANY_CONTIGUOUS)
        try:
            n = sv.len
            if offset < 0 or offset > d.len or n > d.len - offset:
                raise ValueError(f"copy of {n} bytes at offset {offset} does not fit in a "
                                 f"buffer of {d.len} bytes")
            if n < 65536:   # small: not worth dropping the GIL
                memcpy(<char *>d.buf + offset, sv.buf, n)
            else:
                with nogil:
                    store_copy(<char *>d.buf + offset, sv.buf, n)
            return n
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&d)


COPY_SKEW = COPY_SKEW_ROOM


def copy_skew(dst, Py_ssize_t offset, src):
    """Bytes to place `src` after `offset` in `dst` so that copying it runs at full speed
    (a multiple of 64, at most COPY_SKEW; see "4K aliasing" in copy.h)."""
    cdef Py_buffer d, sv
    PyObject_GetBuffer(dst, &d, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(src, &sv, PyBUF_ANY_CONTIGUOUS)
        try:
            return store_copy_skew(<char *>d.buf + offset, sv.buf)
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&d)


def _debug_crash_at(int point, int64_t countdown):
    """Arm a crash point: this process SIGKILLs itself the countdown-th time it passes."""
    cdef int rc = store_debug_crash_at(point, countdown)
    if rc != STORE_OK:
        _raise_status(rc, "_debug_crash_at")


def _debug_hold_lock(Store store, uint32_t ms):
    """Hold the store's lock for `ms` milliseconds (GIL released)."""
    cdef store_t *s = store._handle()
    cdef int rc
    store._users += 1
    with nogil:
        rc = store_debug_hold_lock(s, ms)
    store._user_done()
    if rc != STORE_OK:
        _raise_status(rc, "_debug_hold_lock")


def wait_released(timeout=None):
    """Wait until the closes of this process's large stores, which unmap and free their
    memory in a detached thread, are done: True, or False after `timeout` seconds."""
    cdef int64_t t = _timeout_ns(timeout)
    cdef int rc
    with nogil:
        rc = store_release_wait(t)
    return rc == STORE_OK


def _debug_commit_lies(Store store):
    """Committed chunks that were not really reserved (0 unless the commit map lies).
    Meaningful only while no other process reserves memory in this store."""
    cdef uint64_t n = 0
    cdef int rc = store_debug_commit_lies(store._handle(), &n)
    if rc != STORE_OK:
        _raise_status(rc, "_debug_commit_lies")
    return n


def _debug_recover(Store store):
    """Run crash recovery now, as if the lock's owner had died."""
    cdef int rc = store_debug_recover(store._handle())
    if rc != STORE_OK:
        _raise_status(rc, "_debug_recover")
