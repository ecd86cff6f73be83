/* store_impl.h -- the segment header and the process handle, shared by the two files
 * that implement store.h: store.c (objects, pins, slots, waits, recovery) and
 * footprint.c (taking memory as objects need it and giving it back).  Not for the
 * binding: store.h is the API.
 */
#ifndef PYGEN_STORE_IMPL_H
#define PYGEN_STORE_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "arena.h"
#include "commit.h"
#include "reserve.h"
#include "shm.h"
#include "store.h"
#include "table.h"

#define STORE_MAGIC 0x3154534e45475950ull   /* "PYGENST1" */
#define STORE_VERSION 2u                    /* 2: commit map, footprint policy, no reserved_upto */

typedef struct slot_rec {
    uint32_t in_use;
    uint32_t pid;
    uint64_t start_time;   /* /proc/<pid>/stat field 22: tells a reused pid from ours */
} slot_rec_t;

/* The segment header (shared memory, at offset 0). */
typedef struct store_hdr {
    uint64_t magic;
    uint32_t version;
    _Atomic uint32_t ready;            /* set last by the creator                        */
    uint64_t total_size;
    uint64_t slots_off, entries_off, index_off, commit_off, arena_off;
    uint32_t max_slots;
    uint32_t creator_pid;
    uint64_t recoveries;
    uint32_t slots_in_use;
    uint32_t reserved0_;
    /* Footprint policy, fixed at create (footprint.c). */
    uint64_t window_min, window_max;   /* warm window bytes: when idle, at most          */
    uint32_t purge_delay_ms;           /* free memory idle this long is given back       */
    uint32_t window_decay_ms;          /* the window shrinks after this long ungrown     */
    /* Footprint state, under the lock. */
    uint64_t window_target;            /* bytes kept reserved above the high-water mark  */
    uint64_t warm_top;                 /* high-water mark when the window was last full  */
    uint64_t purge_seq;                /* bumped by every punch                          */
    uint64_t purged;                   /* bytes given back so far                        */
    uint64_t trimmer_wakeups;          /* times a free woke the trimmer                  */
    uint32_t last_grow_ms;             /* last allocation from the wilderness            */
    _Atomic uint32_t trimmer_idle;     /* the trimmer sleeps with nothing pending        */
    _Atomic uint32_t warm_kick;        /* futex words the creator's two threads sleep on */
    _Atomic uint32_t trim_kick;
    commit_ctl_t commit;
    table_ctl_t table;
    _Alignas(64) _Atomic uint32_t seal_seq;   /* futex word: bumped by every seal        */
    _Atomic uint32_t waiters;          /* processes in a wait: seal wakes only if > 0    */
    _Alignas(64) pthread_mutex_t lock;
    _Alignas(64) arena_ctl_t arena;
} store_hdr_t;

struct store {
    shm_segment_t seg;
    store_hdr_t *hdr;
    slot_rec_t *slots;
    arena_t arena;
    table_t table;
    commit_t commit;
    uint32_t slot;
    uint32_t pid;
    int creator;
    uint32_t *local_pins;       /* this handle's pin count per entry (private memory)   */
    uint64_t local_pin_total;
    bg_thread_t warmer;         /* creator only: keeps the warm window reserved, mapped  */
    bg_thread_t trimmer;        /* creator only: gives idle free memory back             */
    _Atomic uint64_t warmed;    /* bytes this process's warmer reserved and mapped       */
    _Atomic int warm_blocked;   /* the warmer's last reservation failed (/dev/shm full)  */
};

static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static inline table_entry_t *ent(store_t *s, uint32_t e) { return table_entry(&s->table, e); }

/* The store's robust lock (store.c): STORE_OK, having recovered the store if its previous
 * owner died holding it, or a status. */
int store_lock_(store_t *s);
void store_unlock_(store_t *s);

/* ---- footprint.c ------------------------------------------------------------------ */

/* Fill the policy fields of a new header (creator, before anyone can see it). */
void fp_format(store_t *s, const store_options_t *opt);

/* Start / stop the creator's warmer and trimmer threads. */
void fp_start_threads(store_t *s);
void fp_stop_threads(store_t *s);

/* Object blocks (lock held unless said).  The chunks [off, off+len) overlaps that are not
 * committed, as at most FP_RUNS runs (more: *whole = 1, reserve the whole range). */
#define FP_RUNS 8
typedef struct fp_need {
    commit_run_t runs[FP_RUNS];
    int nruns;
    int whole;
    uint64_t lo, hi;            /* every chunk the block overlaps */
} fp_need_t;
void fp_block_need(store_t *s, uint64_t off, uint64_t len, fp_need_t *need);
/* Reserve what `need` lists for the block [off, off+len) (lock NOT held); on ENOSPC,
 * give back our own idle memory and try once more.  STORE_OK or STORE_ERR_NOSPC / SYS. */
int fp_block_reserve(store_t *s, const fp_need_t *need, uint64_t off, uint64_t len);
/* Mark what `need` lists committed (lock held, after fp_block_reserve succeeded). */
void fp_block_commit(store_t *s, const fp_need_t *need, uint32_t now);

/* A block of `got` bytes was just split off the wilderness (lock held): grow the window.
 * 1 if the warmer should be woken (fp_wake_warmer, after unlocking). */
int fp_note_growth(store_t *s, uint64_t got, uint32_t now);
void fp_wake_warmer(store_t *s);

/* A block [off, off+len) was just freed (lock held): stamp its chunks, and wake the
 * trimmer if it sleeps with nothing pending. */
void fp_note_free(store_t *s, uint64_t off, uint64_t len);

/* Footprint figures for store_stats (lock held). */
void fp_stats(store_t *s, store_stats_t *out);

/* Invariants of the commit map against the file (lock held): 0 or INVALID. */
int fp_check(store_t *s);

#endif
