/* store.h -- the object store's API: byte ranges under 20-byte ids, in shared memory,
 * under one robust lock.  This is the only header the binding (_store.pyx) uses.
 *
 * Concept.  One segment (shm.h) holds, at fixed offsets:
 *
 *     +--------+------------+---------------------+---------------+---------------------+
 *     | header | slot table | object table entries | hash index    | arena (TLSF blocks) |
 *     +--------+------------+---------------------+---------------+---------------------+
 *       lock, counters,  {pid, start time}  table.h              table.h    arena.h
 *       seal_seq, allocator control block
 *
 * Life of an object (plasma's vocabulary):
 *
 *     create_object --> [CREATED] --seal--> [SEALED] --get/release (pins)--> delete
 *          |                |                                                  |
 *          | writer pin     +--abort--> freed (or when the writer pin goes)     +--> freed now,
 *                                                                                   or by the
 *                                                                                   last unpin
 *
 * Processes.  Each handle (store_t, process-local) claims a *slot* in the header.  A pin
 * is recorded twice: the shared entry's bit for the slot ("this slot holds >= 1 pin") and
 * a count in the handle's private memory.  A slot whose process died is released with
 * store_release_slot (pins dropped, its unsealed objects aborted), by the runtime when it
 * sees a worker die, or automatically during recovery and when no slot is free.
 *
 * Crash safety.  Every operation runs under one process-shared robust mutex.  If its
 * owner dies, the next locker gets EOWNERDEAD and rebuilds the index, the free-entry
 * list, the counters and the whole allocator from the entry array (the single source of
 * truth, kept truthful by the write order described in table.h), reaps dead slots, and
 * marks the mutex consistent.  A process killed at any instant therefore leaves a store
 * that the others go on using.
 *
 * Memory follows use.  The capacity is a ceiling, not a commitment: the segment is a
 * sparse file, and the arena's pages are reserved (commit.h) only as blocks are handed out,
 * plus a *warm window* above the allocator's high-water mark that the creator's "warmer"
 * thread keeps reserved and mapped (on idle CPU), sized by use: window_min when idle, up
 * to twice the latest large allocation from the wilderness while busy, back to window_min
 * after window_decay without growth.  Free memory that stayed idle for purge_delay_ms
 * and lies outside the window is given back (holes punched, under the lock, a few MiB at
 * a time) by the creator's "trimmer" thread.  Other processes run no thread and touch only
 * what they read and write.
 *
 * Contracts.  Every function returns 0 or a negative status (status.h); results go
 * through out-parameters.  A handle may be used by several threads of its process (the
 * lock serialises them).  A forked child must not use its parent's handle: it attaches
 * anew.  Waits spin briefly then sleep on a futex (wait.h).
 */
#ifndef PYGEN_STORE_H
#define PYGEN_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define STORE_ID_SIZE 20
#define STORE_DEFAULT_MAX_SLOTS 256u
#define STORE_MAX_SLOTS 4096u
/* One entry per 16 KiB of arena by default (at least 4096): a store full of objects
 * smaller than that runs out of entries (TABLE_FULL) before bytes -- the entry costs
 * ~112 bytes, 0.7% of 16 KiB. */
#define STORE_BYTES_PER_ENTRY (16u << 10)
#define STORE_MIN_DEFAULT_OBJECTS 4096u
#define STORE_MIN_CAPACITY 4096ull

/* Footprint policy defaults (docs/store.md, "Memory follows use", says how they were chosen). */
#define STORE_WINDOW_MIN (32ull << 20)       /* warm window of an idle store                */
#define STORE_WINDOW_MAX (1ull << 30)        /* largest warm window (and at most capacity/4) */
#define STORE_PURGE_DELAY_MS 1000u           /* free memory idle this long is given back     */
#define STORE_WINDOW_DECAY_MS 2000u          /* a window not grown this long shrinks to min  */

typedef struct store store_t;

typedef struct store_options {
    uint64_t capacity;     /* arena bytes (rounded up to a page)                       */
    uint32_t max_objects;  /* object-table entries; 0: max(4096, capacity / 16 KiB)    */
    uint32_t max_slots;    /* process slots; 0: 256; at most 4096                       */
    int prefault;          /* run the warmer and trimmer threads (see "Memory follows use") */
    const char *name;      /* NULL: /dev/shm/pygen-<pid>-<random>; see shm_create       */
    uint64_t window_min;   /* 0: STORE_WINDOW_MIN (both bounded by capacity / 4)         */
    uint64_t window_max;   /* 0: STORE_WINDOW_MAX                                        */
    uint32_t purge_delay_ms;  /* 0: STORE_PURGE_DELAY_MS                                 */
} store_options_t;

/* An object's bytes as mapped in this process. */
typedef struct store_obj {
    uint32_t entry;        /* table entry: the handle for store_release                  */
    uint8_t *data;
    uint64_t data_size;
    uint8_t *meta;         /* data + data_size rounded up to 64                           */
    uint64_t meta_size;
} store_obj_t;

enum { STORE_STATE_CREATED = 1, STORE_STATE_SEALED = 2 };

typedef struct store_info {
    uint32_t state;            /* STORE_STATE_*                                          */
    uint32_t creator_slot;
    uint64_t data_size, meta_size;
    uint64_t offset;           /* of the data, from the start of the segment              */
    uint32_t npin_slots;       /* slots holding >= 1 pin                                  */
    uint32_t pins_here;        /* pins this handle holds                                  */
    int delete_pending;
} store_info_t;

typedef struct store_stats {
    uint64_t capacity, used, free, largest_free;
    uint64_t objects, sealed, pinned, delete_pending;
    uint64_t slots_in_use, max_slots, max_objects;
    uint64_t reserved;         /* arena bytes in committed chunks                        */
    uint64_t prefaulted;       /* arena bytes this process's warmer has reserved and mapped
                                * (a running total)                                     */
    uint64_t recoveries;       /* times a dead lock owner's mess was rebuilt             */
    uint64_t blocks, free_blocks;
    uint64_t pins_here;        /* pins held by this handle (sum of its counts)            */
    uint64_t segment_size;     /* bytes of the whole segment (tables + arena)             */
    uint64_t committed;        /* bytes the store has reserved: tables + committed chunks */
    uint64_t tables;           /* bytes of the tables (header, slots, objects, index, map) */
    uint64_t window;           /* committed bytes of the warm window above high_water     */
    uint64_t window_target;    /* the window's size now                                  */
    uint64_t high_water;       /* the allocator's high-water mark (arena offset)          */
    uint64_t purged;           /* bytes given back to the system so far                  */
    uint64_t purge_delay_ms;
    uint64_t shm_bytes;        /* what the segment really holds (fstat: st_blocks x 512)  */
    uint64_t trimmer_wakeups;  /* times a free woke the trimmer thread                   */
} store_stats_t;

typedef struct store_slot_info {
    uint32_t slot;
    uint32_t pid;
} store_slot_info_t;

typedef struct store_report {
    uint64_t blocks, alloc_blocks, free_blocks, used, free_bytes, largest_free;
    uint64_t objects, sealed, pinned, delete_pending, slots_in_use;
} store_report_t;

/* ---- lifetime ------------------------------------------------------------------ */
int store_create(const store_options_t *opt, store_t **out);
/* `prefault` is accepted and ignored: only the creator runs threads, and a process maps
 * only what it touches. */
int store_attach(const char *name, int prefault, store_t **out);
int store_attach_fd(int fd, int prefault, store_t **out);    /* takes ownership of fd */
/* Release this handle's slot (its pins dropped, its unsealed objects aborted), stop the
 * threads, unmap, close the fd, free the handle.  Always frees the handle.  A segment
 * holding more than 256 MiB is unmapped and closed by a detached thread (freeing its pages
 * takes ~0.2 s per GB): store_release_wait waits for those. */
int store_close(store_t *s);
/* Wait until every close of this process handed to a detached thread is done.
 * STORE_OK, or STORE_ERR_TIMEOUT after timeout_ns (< 0: forever). */
int store_release_wait(int64_t timeout_ns);
int store_unlink(store_t *s);                                /* idempotent */
int store_unlink_name(const char *name);                     /* same, by name (after close) */

const char *store_name(const store_t *s);
int store_fd(const store_t *s);
uint32_t store_slot(const store_t *s);
uint64_t store_capacity(const store_t *s);
int store_is_creator(const store_t *s);
uint32_t store_max_slots(const store_t *s);

/* ---- objects ------------------------------------------------------------------- */
/* Create `id` with room for data_size + meta_size bytes.  The object comes back pinned by
 * this handle (the writer's pin): release it with store_release when the writer is done. */
int store_create_object(store_t *s, const uint8_t *id, uint64_t data_size, uint64_t meta_size,
                        store_obj_t *out);
int store_seal(store_t *s, const uint8_t *id);
/* Drop an unsealed object this handle's slot created (freed when its writer pin goes). */
int store_abort(store_t *s, const uint8_t *id);
/* Pin a sealed object and map it.  timeout_ns: 0 no wait, < 0 forever.
 * ABSENT / NOT_SEALED without waiting; TIMEOUT if a wait ran out. */
int store_get(store_t *s, const uint8_t *id, int64_t timeout_ns, store_obj_t *out);
/* Drop one pin taken by store_get or store_create_object on entry `entry` holding `id`. */
int store_release(store_t *s, uint32_t entry, const uint8_t *id);
/* Delete a sealed object: *freed_now = 1 if its memory went back to the arena, 0 if pins
 * keep it until the last one goes.  Its id reads as absent at once either way. */
int store_delete(store_t *s, const uint8_t *id, int *freed_now);
int store_contains(store_t *s, const uint8_t *id, int *present);
/* OK once sealed; TIMEOUT otherwise (timeout_ns as store_get). */
int store_wait_sealed(store_t *s, const uint8_t *id, int64_t timeout_ns);
/* pin_bits (may be NULL): pin_words 64-bit words, bit s set if slot s pins it. */
int store_info(store_t *s, const uint8_t *id, store_info_t *out, uint64_t *pin_bits, size_t pin_words);
int store_stats(store_t *s, store_stats_t *out);
/* Ids of every indexed object (created or sealed); up to `cap` ids into `ids`
 * (cap x 20 bytes); *n = how many exist (may exceed cap: call again with more room). */
int store_list(store_t *s, uint8_t *ids, size_t cap, size_t *n);

/* ---- process slots ------------------------------------------------------------- */
int store_slots(store_t *s, store_slot_info_t *out, size_t cap, size_t *n);
/* Release `slot` of a (dead) process: pins dropped, unsealed objects it created aborted,
 * slot freed.  pid != 0: only if the slot still belongs to that pid (else *dropped = 0).
 * A slot not in use: *dropped = 0.  This handle's own slot: INVALID (use store_close). */
int store_release_slot(store_t *s, uint32_t slot, uint32_t pid, uint64_t *dropped);
/* Release every slot whose process is gone (dead, zombie, or pid reused). */
int store_reap(store_t *s, uint32_t *reaped);

/* ---- checks and test hooks ----------------------------------------------------- */
/* Verify every invariant of allocator, table, pins and counters (under the lock). */
int store_check(store_t *s, store_report_t *out);
/* Hold the lock for `ms` milliseconds (crash tests kill the holder). */
int store_debug_hold_lock(store_t *s, uint32_t ms);
/* Run the crash recovery now, as if the lock's owner had died. */
int store_debug_recover(store_t *s);
/* Wait until the warm window is reserved (or the warmer can reserve no more, /dev/shm
 * being full); OK at once without a warmer.  TIMEOUT after timeout_ns (< 0: forever). */
int store_prefault_wait(store_t *s, int64_t timeout_ns);

/* ---- footprint ------------------------------------------------------------------- */
/* Give back now the committed chunks of free memory that have been idle for the purge
 * delay and lie outside the warm window -- or, with STORE_TRIM_ALL, every one of them
 * (and the window shrinks to its minimum).  Out (may be NULL): bytes given back.  The
 * trimmer thread does the same on its own, a few MiB per hold of the lock. */
#define STORE_TRIM_ALL 1
int store_trim(store_t *s, int flags, uint64_t *released);
/* Reserve and map the warm window now, in this process.  Out (may be NULL): bytes added. */
int store_warm(store_t *s, uint64_t *added);
/* How many committed chunks were not really reserved (0 unless a bit lies).  Reserves
 * them on the way; meaningful only while no other process is reserving (tests). */
int store_debug_commit_lies(store_t *s, uint64_t *lies);
/* 1 if built with PYGEN_DEBUG (poisoned frees, invariant checks after each operation). */
int store_debug_build(void);
/* Fault injection (fault.h): SIGKILL self the countdown-th time `point` is reached. */
int store_debug_crash_at(int point, int64_t countdown);

#endif
