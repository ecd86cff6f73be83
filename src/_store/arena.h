/* arena.h -- the allocator: TLSF (two-level segregated fit) over one byte range.
 *
 * Concept.  The arena is a contiguous range of bytes addressed by *offsets* from its
 * base (each process maps the segment at its own address).  It is cut into blocks that
 * tile it exactly; every block starts with a 64-byte header:
 *
 *     +-----------+------------------+---------------------------------------+
 *     | prev_phys | size | FREE flag | free-list links | magic | owner | pad  |  64 B
 *     +-----------+------------------+---------------------------------------+
 *     | payload (size - 64 bytes, 64-byte aligned)                           |
 *
 * `prev_phys` and `size` are the boundary tags: from any block the physical neighbours
 * are found in O(1), so a freed block merges with free neighbours at once (immediate
 * coalescing: two free blocks are never adjacent).  Free blocks sit in doubly linked
 * lists, one per size class.  Classes are two-level: the first level is the power of two
 * of the size (in 64-byte units), the second splits each power of two into 32 equal
 * sub-ranges (~3% apart).  Two bitmaps say which lists are non-empty, so finding a list
 * is a couple of bit scans: alloc and free are O(1).
 *
 * Allocation policy, in order:
 *   1. the head of the request's own class list, if that block is big enough -- lists are
 *      LIFO, so this is the most recently freed block: warm (already faulted in) memory;
 *   2. good fit: the first non-empty class strictly above the request's (rounded up to
 *      the next class boundary), whose every block is big enough -- O(1);
 *   3. fallback: scan the request's own class list for any block that fits.
 * So FULL means "no free block can hold it", never "the class lookup was unlucky".
 * The chosen block is split at the front; the remainder (if it can be a block) goes
 * back to its list.
 *
 * Fragmentation bound.  Internal: per object at most 64 bytes of header, 63 bytes of
 * rounding, and a tail of < ARENA_MIN_BLOCK bytes when a remainder is too small to split
 * off.  External: bounded by coalescing (no two adjacent free blocks) and by the
 * fallback scan (a request fails only if every free block is smaller).  No allocator
 * has a tight worst case here (Robson: an adversary can force ~M*log2(max/min)/2 bytes
 * of arena for M bytes live); the C fragmentation test measures the practical figure.
 *
 * Reservation.  Headers written at new positions (the remainder of a split) may lie in
 * pages of the segment that are not reserved yet (a hole in the tmpfs file: writing it
 * could SIGBUS if /dev/shm is full).  The owner of the arena passes a `reserve` hook that
 * makes such a page safe first; if it fails, the block is handed out unsplit.
 *
 * High-water mark.  A fresh arena is one free block; blocks are split off its front, so
 * allocation grows upward from 0 and the free block at the end of the arena (the
 * "wilderness") starts at the high-water mark of what is in use: `ctl->top`.  Freed blocks
 * below it are reused first (by the class policy above); the wilderness is split only when
 * no smaller free block fits.  The store keeps a warm window of memory just above `top`.
 *
 * Crash safety is *not* this file's job: the allocator's state may be torn by a kill in
 * the middle of an operation; store.c rebuilds it from the object table
 * (`arena_rebuild_*`).  All functions here assume the caller holds the store lock.
 */
#ifndef PYGEN_ARENA_H
#define PYGEN_ARENA_H

#include <stdint.h>
#include <stddef.h>

#define ARENA_ALIGN 64u                 /* payload alignment: a cache line, and SIMD-friendly */
#define ARENA_HEADER 64u                /* one cache line of boundary tags and links          */
#define ARENA_MIN_BLOCK 128u            /* header + 64 bytes: smaller remainders are not split */
#define ARENA_SL_LOG 5                  /* 32 second-level classes per power of two: ~3% steps */
#define ARENA_SL_COUNT (1u << ARENA_SL_LOG)
#define ARENA_FL_COUNT 44               /* first-level classes: blocks up to 2^48 bytes        */
#define ARENA_NIL UINT64_MAX            /* "no block" in offsets and links                     */
#define ARENA_BLOCK_MAGIC 0x7079676eu   /* "pygn": catches offsets that are not block headers  */

/* Block header, in the arena (shared memory).  64 bytes. */
typedef struct arena_block {
    uint64_t prev_phys;   /* offset of the physically previous block, ARENA_NIL for the first */
    uint64_t size_flags;  /* total block size (multiple of 64) | ARENA_FREE_BIT                */
    uint64_t next_free;   /* free-list links, meaningful only while free                       */
    uint64_t prev_free;
    uint32_t magic;       /* ARENA_BLOCK_MAGIC                                                */
    uint32_t owner;       /* object-table entry index + 1 while allocated for an object; 0     */
    uint64_t reserved_[3];
} arena_block_t;

#define ARENA_FREE_BIT 1ull
#define ARENA_SIZE_MASK (~(uint64_t)(ARENA_ALIGN - 1))

/* Allocator control block, in the segment header (shared memory). */
typedef struct arena_ctl {
    uint64_t size;                    /* arena bytes, multiple of 64              */
    uint64_t top;                     /* start of the free block that ends the arena (the
                                       * "wilderness"), `size` if the last block is in use:
                                       * the allocator's high-water mark              */
    uint64_t used;                    /* bytes in allocated blocks (with headers) */
    uint64_t alloc_blocks;            /* number of allocated blocks               */
    uint64_t free_blocks;             /* number of free blocks                    */
    uint64_t fl_bitmap;               /* bit f: some list of first level f is non-empty */
    uint32_t sl_bitmap[ARENA_FL_COUNT];
    uint64_t heads[ARENA_FL_COUNT][ARENA_SL_COUNT];
} arena_ctl_t;

/* Makes [off, off+len) of the arena safe to write (see "Reservation").  0 or a status. */
typedef int (*arena_reserve_fn)(void *ctx, uint64_t off, uint64_t len);

/* Process-local view of an arena: where its control block and bytes are mapped here. */
typedef struct arena {
    arena_ctl_t *ctl;
    uint8_t *base;
    arena_reserve_fn reserve;   /* may be NULL: everything is writable (heap arenas in tests) */
    void *reserve_ctx;
    int poison;                 /* debug builds: the store asks arena_free to poison payloads */
    uint64_t rb_pos, rb_prev;   /* cursor of arena_rebuild_* (process-local, transient)       */
} arena_t;

#define ARENA_POISON 0xdb           /* freed payload bytes in debug builds (PYGEN_DEBUG) */
#define ARENA_MAX_SIZE (1ull << 47) /* 128 TiB: far above any /dev/shm, and fits the classes */

/* Total block size for a payload of `payload` bytes (0 if it would overflow). */
uint64_t arena_block_size_for(uint64_t payload);

/* Format `size` bytes (multiple of 64, >= ARENA_MIN_BLOCK) as one free block.
 * The header page at offset 0 must be writable. */
int arena_init(arena_t *a, uint64_t size);

/* Allocate a block of exactly `size` bytes or a little more (multiple of 64).
 * Out: `*off` its offset, `*got` its true size.  STORE_ERR_TOO_LARGE if size exceeds the
 * arena, STORE_ERR_FULL if no free block can hold it. */
int arena_alloc(arena_t *a, uint64_t size, uint64_t *off, uint64_t *got);

/* Free the allocated block at `off`, merging it with free neighbours.
 * `poison`: overwrite its payload (only if its pages are known to be reserved). */
int arena_free(arena_t *a, uint64_t off, int poison);

/* Header of the block at `off` (no validation). */
static inline arena_block_t *arena_block(const arena_t *a, uint64_t off)
{
    return (arena_block_t *)(a->base + off);
}

/* Is `off` plausibly a block header: in range, aligned, magic right? */
int arena_valid_block(const arena_t *a, uint64_t off);

/* Size of the largest free block (0 if none).  O(length of the top non-empty list). */
uint64_t arena_largest_free(const arena_t *a);

/* Call fn(ctx, off, size) for every free block of at least `min_size` bytes (in no
 * particular order) until it returns nonzero; returns that value, or 0. */
typedef int (*arena_free_fn)(void *ctx, uint64_t off, uint64_t size);
int arena_each_free(const arena_t *a, uint64_t min_size, arena_free_fn fn, void *ctx);

/* Rebuild from scratch, given the allocated blocks in increasing offset order:
 *   arena_rebuild_begin(a);  arena_rebuild_add(a, off, size, owner) ...;  arena_rebuild_end(a);
 * Gaps between the added blocks become (maximal) free blocks.  Returns INVALID if a block
 * is out of order or overlaps; the caller drops that block and goes on. */
void arena_rebuild_begin(arena_t *a);
int arena_rebuild_add(arena_t *a, uint64_t off, uint64_t size, uint32_t owner);
void arena_rebuild_end(arena_t *a);

/* Walk every block and list and verify every invariant.  Out: counts.
 * 0, or STORE_ERR_INVALID with store_last_error() naming the first violation. */
typedef struct arena_report {
    uint64_t blocks, alloc_blocks, free_blocks, used, free_bytes, largest_free;
} arena_report_t;
int arena_check(const arena_t *a, arena_report_t *out);

#endif
