# c_store.pxd -- mirrors store.h, the C API the binding wraps (see store.h for contracts).
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t


cdef extern from "store.h" nogil:
    enum:
        STORE_ID_SIZE
        STORE_DEFAULT_MAX_SLOTS
        STORE_MAX_SLOTS
        STORE_STATE_CREATED
        STORE_STATE_SEALED
        STORE_TRIM_ALL

    ctypedef struct store_t:
        pass

    ctypedef struct store_options_t:
        uint64_t capacity
        uint32_t max_objects
        uint32_t max_slots
        int prefault
        const char *name
        uint64_t window_min
        uint64_t window_max
        uint32_t purge_delay_ms

    ctypedef struct store_obj_t:
        uint32_t entry
        uint8_t *data
        uint64_t data_size
        uint8_t *meta
        uint64_t meta_size

    ctypedef struct store_info_t:
        uint32_t state
        uint32_t creator_slot
        uint64_t data_size
        uint64_t meta_size
        uint64_t offset
        uint32_t npin_slots
        uint32_t pins_here
        int delete_pending

    ctypedef struct store_stats_t:
        uint64_t capacity, used, free, largest_free
        uint64_t objects, sealed, pinned, delete_pending
        uint64_t slots_in_use, max_slots, max_objects
        uint64_t reserved, prefaulted, recoveries
        uint64_t blocks, free_blocks, pins_here, segment_size
        uint64_t committed, tables, window, window_target, high_water, purged
        uint64_t purge_delay_ms, shm_bytes, trimmer_wakeups

    ctypedef struct store_slot_info_t:
        uint32_t slot
        uint32_t pid

    ctypedef struct store_report_t:
        uint64_t blocks, alloc_blocks, free_blocks, used, free_bytes, largest_free
        uint64_t objects, sealed, pinned, delete_pending, slots_in_use

    int store_create(const store_options_t *opt, store_t **out)
    int store_attach(const char *name, int prefault, store_t **out)
    int store_attach_fd(int fd, int prefault, store_t **out)
    int store_close(store_t *s)
    int store_release_wait(int64_t timeout_ns)
    int store_unlink(store_t *s)
    int store_unlink_name(const char *name)

    const char *store_name(const store_t *s)
    int store_fd(const store_t *s)
    uint32_t store_slot(const store_t *s)
    uint64_t store_capacity(const store_t *s)
    int store_is_creator(const store_t *s)
    uint32_t store_max_slots(const store_t *s)

    int store_create_object(store_t *s, const uint8_t *id, uint64_t data_size, uint64_t meta_size,
                            store_obj_t *out)
    int store_seal(store_t *s, const uint8_t *id)
    int store_abort(store_t *s, const uint8_t *id)
    int store_get(store_t *s, const uint8_t *id, int64_t timeout_ns, store_obj_t *out)
    int store_release(store_t *s, uint32_t entry, const uint8_t *id)
    int store_delete(store_t *s, const uint8_t *id, int *freed_now)
    int store_contains(store_t *s, const uint8_t *id, int *present)
    int store_wait_sealed(store_t *s, const uint8_t *id, int64_t timeout_ns)
    int store_info(store_t *s, const uint8_t *id, store_info_t *out, uint64_t *pin_bits, size_t pin_words)
    int store_stats(store_t *s, store_stats_t *out)
    int store_list(store_t *s, uint8_t *ids, size_t cap, size_t *n)

    int store_slots(store_t *s, store_slot_info_t *out, size_t cap, size_t *n)
    int store_release_slot(store_t *s, uint32_t slot, uint32_t pid, uint64_t *dropped)
    int store_reap(store_t *s, uint32_t *reaped)

    int store_check(store_t *s, store_report_t *out)
    int store_debug_hold_lock(store_t *s, uint32_t ms)
    int store_debug_recover(store_t *s)
    int store_prefault_wait(store_t *s, int64_t timeout_ns)
    int store_trim(store_t *s, int flags, uint64_t *released)
    int store_warm(store_t *s, uint64_t *added)
    int store_debug_commit_lies(store_t *s, uint64_t *lies)
    int store_debug_build()
    int store_debug_crash_at(int point, int64_t countdown)


cdef extern from "copy.h" nogil:
    void store_copy(void *dst, const void *src, size_t n)
    size_t store_copy_skew(const void *dst, const void *src)
    enum: COPY_SKEW_ROOM


cdef extern from "reserve.h" nogil:
    int release_range(int fd, uint64_t off, uint64_t len)
