/* fault.h -- fault injection: named crash points inside critical sections.
 *
 * Concept: the store promises that a process killed at *any* instant, even holding the
 * lock in the middle of an allocation, leaves the store consistent for the others.  To
 * test that promise deterministically, the code calls FAULT_POINT(p) at the instants that
 * matter (between two writes that must both happen for a structure to be consistent).
 * A test arms one point with `store_debug_crash_at(point, countdown)`; the countdown-th
 * time that point is reached, the process sends itself SIGKILL -- exactly what the kernel
 * would do to it under memory pressure or `kill -9`.  Disarmed, a point costs one load
 * and one predictable branch, so the points stay in release builds (the Python tests
 * run against the release build).
 */
#ifndef PYGEN_FAULT_H
#define PYGEN_FAULT_H

#include <stdint.h>

enum fault_point {
    FAULT_NONE = 0,
    FAULT_ALLOC_SPLIT = 1,        /* arena_alloc: block taken off its list, before the split  */
    FAULT_ALLOC_SPLIT_HALF = 2,   /* arena_alloc: remainder header written, not yet listed    */
    FAULT_FREE_COALESCE = 3,      /* arena_free: neighbour taken off its list, not yet merged */
    FAULT_FREE_MERGED = 4,        /* arena_free: merged header written, not yet listed        */
    FAULT_CREATE_FILLED = 5,      /* create: entry fields written, state not yet CREATED      */
    FAULT_CREATE_PUBLISHED = 6,   /* create: state CREATED, not yet in the index              */
    FAULT_CREATE_INDEXED = 7,     /* create: indexed, writer pin not yet taken                */
    FAULT_SEAL = 8,               /* seal: state SEALED, sequence not yet bumped              */
    FAULT_PIN = 9,                /* get: pin bit set, counters not yet updated               */
    FAULT_UNPIN = 10,             /* release: pin bit cleared, counters not yet updated       */
    FAULT_DELETE_STATE = 11,      /* delete: state FREE, still in the index                   */
    FAULT_DELETE_UNINDEXED = 12,  /* delete: index tombstoned, block not yet freed            */
    FAULT_DELETE_FREED = 13,      /* delete: block freed, entry not yet on the free list      */
    FAULT_RECOVER = 14,           /* recovery: halfway through rebuilding the allocator       */
    FAULT_RELEASE_SLOT = 15,      /* release_slot: some pins of the slot dropped, not all     */
    FAULT_REBUILD_BEGIN = 16,     /* recovery: allocator counters cleared, free lists not yet */
    FAULT_WARM_RESERVED = 17,     /* window growth: chunks reserved and mapped, bits not set
                                   * (outside the lock)                                        */
    FAULT_WARM_COMMIT = 18,       /* window growth: half of a run's bits set                   */
    FAULT_PURGE_CLEARED = 19,     /* give-back: a run's bits cleared, its hole not yet punched */
    FAULT_PURGE_PUNCHED = 20,     /* give-back: a run punched, the step not finished           */
    FAULT_CREATE_RESERVED = 21,   /* create: the block's chunks reserved, bits not yet set
                                   * (outside the lock)                                        */
    FAULT_COUNT
};

extern volatile int fault_armed_point;
extern volatile int64_t fault_countdown;

/* Arm `point` to SIGKILL this process the `countdown`-th time it is reached
 * (countdown >= 1).  point 0 disarms.  Process-global, not thread-safe by design
 * (tests arm it before starting work). */
int store_debug_crash_at(int point, int64_t countdown);

void fault_fire(void);

#define FAULT_POINT(p)                                                                  \
    do {                                                                                \
        if (__builtin_expect(fault_armed_point == (p), 0) && --fault_countdown <= 0)   \
            fault_fire();                                                               \
    } while (0)

#endif
