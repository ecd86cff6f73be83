/* commit.h -- which parts of the arena hold memory, and since when they have been idle.
 *
 * Concept.  The arena is a sparse tmpfs file: a page holds memory only once it is
 * *reserved* (fallocate, or written).  The store reserves memory as objects need it and
 * gives it back (a hole punched into the file) when it has stayed free for a while, so
 * it keeps a map of the arena in CHUNK-sized pieces (64 KiB), in shared memory:
 *
 *     bits[c]    chunk c is *committed*: every page of it is reserved
 *     stamps[c]  when chunk c was last freed or committed (ms, CLOCK_MONOTONIC, mod 2^32)
 *     committed  how many bits are set (recovery recounts it)
 *
 * The one rule that keeps a write from ever meeting a hole (a SIGBUS when /dev/shm is
 * full): a bit is set only *after* its pages were reserved, and cleared *before* they are
 * punched.  A process killed between the two steps leaves a bit that is too pessimistic
 * (clear over reserved pages), never one that lies.  The map can therefore survive any
 * crash as it is; nothing in it needs rebuilding but the counter.
 *
 * Chunks and blocks.  A block of the allocator and a chunk need not line up.  An object's
 * block reserves every chunk it overlaps (the parts outside it are then reserved free
 * memory, harmless).  A punch only ever takes chunks lying wholly inside the *interior*
 * of a free block: past the page of its header, before the next block's header.  Headers
 * are written by the allocator at any time, so their pages must never be holes; a chunk
 * that holds a header or any part of an allocated block is never punched.
 *
 * Every function assumes the caller holds the store lock (or owns the map alone).
 */
#ifndef PYGEN_COMMIT_H
#define PYGEN_COMMIT_H

#include <stdint.h>

#define COMMIT_CHUNK (64ull << 10)

/* In the segment header (shared memory). */
typedef struct commit_ctl {
    uint64_t nchunks;
    uint64_t committed;       /* chunks whose bit is set */
} commit_ctl_t;

/* Process-local view. */
typedef struct commit {
    commit_ctl_t *ctl;
    uint64_t *bits;           /* nchunks bits, in 64-bit words */
    uint32_t *stamps;         /* nchunks stamps */
    uint64_t size;            /* arena bytes (the last chunk may be shorter) */
} commit_t;

/* A run of chunks [lo, hi) (chunk numbers). */
typedef struct commit_run {
    uint64_t lo, hi;
} commit_run_t;

/* Bytes of shared memory the map of an arena of `size` bytes needs (bits, then stamps). */
uint64_t commit_map_bytes(uint64_t size);

/* Point `c` at a map laid out at `mem` (commit_map_bytes of it) for an arena of `size`.
 * With `format`, also fill the control block (the map memory is fresh: zero). */
void commit_bind(commit_t *c, commit_ctl_t *ctl, uint8_t *mem, uint64_t size, int format);

static inline uint64_t commit_chunk_of(uint64_t off) { return off / COMMIT_CHUNK; }
/* First chunk at or after `off`, and the chunk that ends at or after `off`. */
static inline uint64_t commit_chunk_up(uint64_t off) { return (off + COMMIT_CHUNK - 1) / COMMIT_CHUNK; }
/* Bytes of the arena from chunk `lo` up to chunk `hi` (the last may be shorter). */
uint64_t commit_run_bytes(const commit_t *c, uint64_t lo, uint64_t hi);

static inline int commit_test(const commit_t *c, uint64_t chunk)
{
    return (int)((c->bits[chunk >> 6] >> (chunk & 63)) & 1u);
}

/* Is every chunk that overlaps [off, off+len) committed? */
int commit_covers(const commit_t *c, uint64_t off, uint64_t len);

/* The first run of chunks in [lo, hi) whose bit is `value`: 1 and *run, or 0 if none.
 * The run stops at `hi` and is at most `max_chunks` long. */
int commit_find(const commit_t *c, uint64_t lo, uint64_t hi, int value, uint64_t max_chunks,
                commit_run_t *run);

/* Set (after reserving) or clear (before punching) the bits of chunks [lo, hi). */
void commit_set(commit_t *c, uint64_t lo, uint64_t hi, uint32_t now);
void commit_clear(commit_t *c, uint64_t lo, uint64_t hi);

/* Stamp every chunk that overlaps [off, off+len) with `now` (a free just happened). */
void commit_stamp(commit_t *c, uint64_t off, uint64_t len, uint32_t now);

/* Has chunk `chunk` been idle for at least `delay_ms` at `now`? (Wrap-around safe: a
 * stamp 49 days old reads as fresh, which only delays a purge.) */
static inline int commit_cold(const commit_t *c, uint64_t chunk, uint32_t now, uint32_t delay_ms)
{
    return (uint32_t)(now - c->stamps[chunk]) >= delay_ms;
}

/* Committed bytes among chunks [lo, hi). */
uint64_t commit_bytes_in(const commit_t *c, uint64_t lo, uint64_t hi);

/* Recount `committed` from the bits (crash recovery). */
void commit_recount(commit_t *c);

/* 0, or STORE_ERR_INVALID if the counter disagrees with the bits or a bit past the last
 * chunk is set. */
int commit_check(const commit_t *c);

/* Milliseconds of CLOCK_MONOTONIC, mod 2^32: the stamps' clock (the same in every
 * process of the machine). */
uint32_t commit_now_ms(void);

#endif
