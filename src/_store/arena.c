/* arena.c -- TLSF allocator over an offset-addressed byte range (concept in arena.h).
 *
 * Size classes, in 64-byte units u = size / 64:
 *     u < 32:          first level 0, second level u           (one exact size per list)
 *     u >= 32, m = floor(log2 u):
 *                      first level m - 4, second level the next 5 bits after the top one
 * so a list of first level f >= 1 holds sizes in [2^m, 2^m + 2^(m-5)) units: ~3% wide.
 */
#include "arena.h"

#include <string.h>

#include "fault.h"
#include "status.h"

/* ---- size classes -------------------------------------------------------------- */

static inline void mapping(uint64_t size, unsigned *fl, unsigned *sl)
{
    uint64_t u = size >> 6;
    if (u < ARENA_SL_COUNT) {
        *fl = 0;
        *sl = (unsigned)u;
    } else {
        unsigned m = 63u - (unsigned)__builtin_clzll(u);
        *fl = m - (ARENA_SL_LOG - 1);
        *sl = (unsigned)(u >> (m - ARENA_SL_LOG)) - ARENA_SL_COUNT;
    }
}

/* Round `size` up to the start of the next class, so every block of the class that
 * `mapping` then names is big enough ("good fit"). */
static inline uint64_t round_to_class(uint64_t size)
{
    uint64_t u = size >> 6;
    if (u >= ARENA_SL_COUNT) {
        unsigned m = 63u - (unsigned)__builtin_clzll(u);
        u += (1ull << (m - ARENA_SL_LOG)) - 1;
    }
    return u << 6;
}

static inline uint64_t bsize(const arena_block_t *b) { return b->size_flags & ARENA_SIZE_MASK; }
static inline int bfree(const arena_block_t *b) { return (int)(b->size_flags & ARENA_FREE_BIT); }

uint64_t arena_block_size_for(uint64_t payload)
{
    if (payload > ARENA_MAX_SIZE)
        return 0;
    uint64_t size = ARENA_HEADER + ((payload + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1));
    return size < ARENA_MIN_BLOCK ? ARENA_MIN_BLOCK : size;
}

/* ---- free lists ---------------------------------------------------------------- */

static void insert_free(arena_t *a, uint64_t off)
{
    arena_ctl_t *c = a->ctl;
    arena_block_t *b = arena_block(a, off);
    unsigned fl, sl;
    mapping(bsize(b), &fl, &sl);
    uint64_t head = c->heads[fl][sl];
    b->prev_free = ARENA_NIL;
    b->next_free = head;                      /* LIFO: newest first, it is the warmest */
    if (head != ARENA_NIL)
        arena_block(a, head)->prev_free = off;
    c->heads[fl][sl] = off;
    c->sl_bitmap[fl] |= 1u << sl;
    c->fl_bitmap |= 1ull << fl;
    c->free_blocks++;
}

static void remove_free(arena_t *a, uint64_t off)
{
    arena_ctl_t *c = a->ctl;
    arena_block_t *b = arena_block(a, off);
    unsigned fl, sl;
    mapping(bsize(b), &fl, &sl);
    if (b->prev_free != ARENA_NIL)
        arena_block(a, b->prev_free)->next_free = b->next_free;
    else
        c->heads[fl][sl] = b->next_free;
    if (b->next_free != ARENA_NIL)
        arena_block(a, b->next_free)->prev_free = b->prev_free;
    if (c->heads[fl][sl] == ARENA_NIL) {
        c->sl_bitmap[fl] &= ~(1u << sl);
        if (c->sl_bitmap[fl] == 0)
            c->fl_bitmap &= ~(1ull << fl);
    }
    b->next_free = b->prev_free = ARENA_NIL;
    c->free_blocks--;
}

/* First block of the first non-empty list at class (fl, sl) or above; ARENA_NIL if none. */
static uint64_t find_from(const arena_ctl_t *c, unsigned fl, unsigned sl)
{
    uint32_t slmap = c->sl_bitmap[fl] & (~0u << sl);
    if (slmap == 0) {
        if (fl + 1 >= ARENA_FL_COUNT)
            return ARENA_NIL;
        uint64_t flmap = c->fl_bitmap & (~0ull << (fl + 1));
        if (flmap == 0)
            return ARENA_NIL;
        fl = (unsigned)__builtin_ctzll(flmap);
        slmap = c->sl_bitmap[fl];
    }
    return c->heads[fl][(unsigned)__builtin_ctz(slmap)];
}

/* ---- public operations --------------------------------------------------------- */

static void write_header(arena_t *a, uint64_t off, uint64_t prev, uint64_t size_flags)
{
    arena_block_t *b = arena_block(a, off);
    b->prev_phys = prev;
    b->size_flags = size_flags;
    b->next_free = b->prev_free = ARENA_NIL;
    b->magic = ARENA_BLOCK_MAGIC;
    b->owner = 0;
}

int arena_init(arena_t *a, uint64_t size)
{
    if (size < ARENA_MIN_BLOCK || size % ARENA_ALIGN || size > ARENA_MAX_SIZE)
        return store_fail(STORE_ERR_INVALID, "arena size %llu is not a multiple of 64 in [%u, 2^47]",
                          (unsigned long long)size, ARENA_MIN_BLOCK);
    memset(a->ctl, 0, sizeof *a->ctl);
    a->ctl->size = size;
    a->ctl->top = 0;
    for (unsigned f = 0; f < ARENA_FL_COUNT; f++)
        for (unsigned s = 0; s < ARENA_SL_COUNT; s++)
            a->ctl->heads[f][s] = ARENA_NIL;
    write_header(a, 0, ARENA_NIL, size | ARENA_FREE_BIT);
    insert_free(a, 0);
    return STORE_OK;
}

int arena_alloc(arena_t *a, uint64_t size, uint64_t *off_out, uint64_t *got)
{
    arena_ctl_t *c = a->ctl;
    if (size < ARENA_MIN_BLOCK)
        size = ARENA_MIN_BLOCK;
    if (size > c->size)
        return STORE_ERR_TOO_LARGE;
    size = (size + ARENA_ALIGN - 1) & ARENA_SIZE_MASK;

    unsigned fl, sl;
    mapping(size, &fl, &sl);
    /* 1. the most recently freed block of the request's own class, if it fits */
    uint64_t off = c->heads[fl][sl];
    if (off == ARENA_NIL || bsize(arena_block(a, off)) < size) {
        /* 2. good fit: any block of the next class up */
        unsigned rfl, rsl;
        mapping(round_to_class(size), &rfl, &rsl);
        off = rfl < ARENA_FL_COUNT ? find_from(c, rfl, rsl) : ARENA_NIL;
        if (off == ARENA_NIL) {
            /* 3. fallback: any block of the request's own class that fits */
            uint64_t cur = c->heads[fl][sl];
            while (cur != ARENA_NIL && bsize(arena_block(a, cur)) < size)
                cur = arena_block(a, cur)->next_free;
            off = cur;
        }
        if (off == ARENA_NIL)
            return STORE_ERR_FULL;
    }

    arena_block_t *b = arena_block(a, off);
    remove_free(a, off);
    FAULT_POINT(FAULT_ALLOC_SPLIT);
    uint64_t have = bsize(b);
    if (have - size >= ARENA_MIN_BLOCK) {
        uint64_t rem = off + size;
        if (a->reserve == NULL || a->reserve(a->reserve_ctx, rem, ARENA_HEADER) == STORE_OK) {
            uint64_t rsize = have - size;
            write_header(a, rem, off, rsize | ARENA_FREE_BIT);
            uint64_t next = rem + rsize;
            if (next < c->size)
                arena_block(a, next)->prev_phys = rem;
            FAULT_POINT(FAULT_ALLOC_SPLIT_HALF);
            insert_free(a, rem);
            have = size;
        }
        /* else: the remainder's header page cannot be reserved; hand the block out whole */
    }
    b->size_flags = have;   /* allocated: FREE bit clear */
    b->owner = 0;
    if (off == c->top)      /* split off the wilderness: the high-water mark rises */
        c->top = off + have;
    c->used += have;
    c->alloc_blocks++;
    *off_out = off;
    *got = have;
    return STORE_OK;
}

int arena_valid_block(const arena_t *a, uint64_t off)
{
    const arena_ctl_t *c = a->ctl;
    if (off >= c->size || off % ARENA_ALIGN)
        return 0;
    const arena_block_t *b = arena_block(a, off);
    uint64_t s = bsize(b);
    return b->magic == ARENA_BLOCK_MAGIC && s >= ARENA_MIN_BLOCK && s <= c->size - off;
}

int arena_free(arena_t *a, uint64_t off, int poison)
{
    arena_ctl_t *c = a->ctl;
    if (!arena_valid_block(a, off))
        return store_fail(STORE_ERR_INVALID, "free of offset %llu: not a block header",
                          (unsigned long long)off);
    arena_block_t *b = arena_block(a, off);
    if (bfree(b))
        return store_fail(STORE_ERR_INVALID, "free of offset %llu: block already free",
                          (unsigned long long)off);
    uint64_t size = bsize(b);
    if (poison)
        memset((uint8_t *)b + ARENA_HEADER, ARENA_POISON, size - ARENA_HEADER);
    c->used -= size;
    c->alloc_blocks--;

    /* Absorbed headers lose their magic, so a stale offset is never taken for a block. */
    uint64_t next = off + size;
    if (next < c->size && bfree(arena_block(a, next))) {
        uint64_t nsize = bsize(arena_block(a, next));
        remove_free(a, next);
        FAULT_POINT(FAULT_FREE_COALESCE);
        arena_block(a, next)->magic = 0;
        size += nsize;
    }
    uint64_t prev = b->prev_phys;
    uint64_t prev_of_merged = prev;
    if (prev != ARENA_NIL && bfree(arena_block(a, prev))) {
        remove_free(a, prev);
        size += bsize(arena_block(a, prev));
        prev_of_merged = arena_block(a, prev)->prev_phys;
        b->magic = 0;
        off = prev;
    }
    write_header(a, off, prev_of_merged, size | ARENA_FREE_BIT);
    FAULT_POINT(FAULT_FREE_MERGED);
    next = off + size;
    if (next < c->size)
        arena_block(a, next)->prev_phys = off;
    else
        c->top = off;       /* the merged block ends the arena: the high-water mark falls */
    insert_free(a, off);
    return STORE_OK;
}

uint64_t arena_largest_free(const arena_t *a)
{
    const arena_ctl_t *c = a->ctl;
    if (c->fl_bitmap == 0)
        return 0;
    unsigned fl = 63u - (unsigned)__builtin_clzll(c->fl_bitmap);
    unsigned sl = 31u - (unsigned)__builtin_clz(c->sl_bitmap[fl]);
    uint64_t best = 0;
    for (uint64_t cur = c->heads[fl][sl]; cur != ARENA_NIL; cur = arena_block(a, cur)->next_free) {
        uint64_t s = bsize(arena_block(a, cur));
        if (s > best)
            best = s;
    }
    return best;
}

int arena_each_free(const arena_t *a, uint64_t min_size, arena_free_fn fn, void *ctx)
{
    const arena_ctl_t *c = a->ctl;
    unsigned fl, sl;
    mapping(min_size < ARENA_MIN_BLOCK ? ARENA_MIN_BLOCK : min_size, &fl, &sl);
    for (unsigned f = fl; f < ARENA_FL_COUNT; f++) {
        if (!((c->fl_bitmap >> f) & 1))
            continue;
        uint32_t slmap = c->sl_bitmap[f] & (f == fl ? ~0u << sl : ~0u);
        while (slmap) {
            unsigned s = (unsigned)__builtin_ctz(slmap);
            slmap &= slmap - 1;
            for (uint64_t cur = c->heads[f][s]; cur != ARENA_NIL;) {
                const arena_block_t *b = arena_block(a, cur);
                uint64_t next = b->next_free;   /* read first: fn may not change the lists, but be safe */
                if (bsize(b) >= min_size) {
                    int r = fn(ctx, cur, bsize(b));
                    if (r)
                        return r;
                }
                cur = next;
            }
        }
    }
    return 0;
}

/* ---- rebuild (crash recovery) --------------------------------------------------- */

void arena_rebuild_begin(arena_t *a)
{
    arena_ctl_t *c = a->ctl;
    /* Every field but the size, which never changes.  A process killed in here leaves
     * the next recovery the size to rebuild with; zeroing the whole block and writing
     * the size back had a window where it read 0, and every allocation after that
     * recovery failed as "too large". */
    c->used = 0;
    c->alloc_blocks = 0;
    c->free_blocks = 0;
    c->fl_bitmap = 0;
    memset(c->sl_bitmap, 0, sizeof c->sl_bitmap);
    FAULT_POINT(FAULT_REBUILD_BEGIN);
    for (unsigned f = 0; f < ARENA_FL_COUNT; f++)
        for (unsigned s = 0; s < ARENA_SL_COUNT; s++)
            c->heads[f][s] = ARENA_NIL;
    a->rb_pos = 0;
    a->rb_prev = ARENA_NIL;
}

/* Close the gap [rb_pos, upto) as one free block. */
static void rebuild_gap(arena_t *a, uint64_t upto)
{
    if (upto > a->rb_pos) {
        write_header(a, a->rb_pos, a->rb_prev, (upto - a->rb_pos) | ARENA_FREE_BIT);
        insert_free(a, a->rb_pos);
        a->rb_prev = a->rb_pos;
        a->rb_pos = upto;
    }
}

int arena_rebuild_add(arena_t *a, uint64_t off, uint64_t size, uint32_t owner)
{
    arena_ctl_t *c = a->ctl;
    if (off % ARENA_ALIGN || size % ARENA_ALIGN || size < ARENA_MIN_BLOCK || off < a->rb_pos ||
        off > c->size || size > c->size - off)
        return STORE_ERR_INVALID;
    /* A gap is a union of whole former blocks, so it is at least one minimum block; a
     * smaller gap means the entry's block lies (it cannot be the true layout). */
    if (off > a->rb_pos && off - a->rb_pos < ARENA_MIN_BLOCK)
        return STORE_ERR_INVALID;
    rebuild_gap(a, off);
    write_header(a, off, a->rb_prev, size);
    arena_block(a, off)->owner = owner;
    c->used += size;
    c->alloc_blocks++;
    a->rb_prev = off;
    a->rb_pos = off + size;
    return STORE_OK;
}

void arena_rebuild_end(arena_t *a)
{
    uint64_t last_gap = a->rb_pos;
    rebuild_gap(a, a->ctl->size);
    a->ctl->top = last_gap < a->ctl->size ? last_gap : a->ctl->size;
}

/* ---- invariant check ------------------------------------------------------------ */

int arena_check(const arena_t *a, arena_report_t *out)
{
    const arena_ctl_t *c = a->ctl;
    arena_report_t r = {0};
    uint64_t off = 0, prev = ARENA_NIL;
    int prev_free = 0;
    while (off < c->size) {
        if (!arena_valid_block(a, off))
            return store_fail(STORE_ERR_INVALID, "arena: no valid block header at offset %llu",
                              (unsigned long long)off);
        const arena_block_t *b = arena_block(a, off);
        if (b->prev_phys != prev)
            return store_fail(STORE_ERR_INVALID,
                              "arena: block %llu has prev_phys %llu, expected %llu",
                              (unsigned long long)off, (unsigned long long)b->prev_phys,
                              (unsigned long long)prev);
        uint64_t s = bsize(b);
        r.blocks++;
        if (bfree(b)) {
            if (prev_free)
                return store_fail(STORE_ERR_INVALID, "arena: adjacent free blocks at %llu and %llu",
                                  (unsigned long long)prev, (unsigned long long)off);
            if (b->owner != 0)
                return store_fail(STORE_ERR_INVALID, "arena: free block %llu has owner %u",
                                  (unsigned long long)off, b->owner);
            r.free_blocks++;
            r.free_bytes += s;
            if (s > r.largest_free)
                r.largest_free = s;
        } else {
            r.alloc_blocks++;
            r.used += s;
        }
        prev_free = bfree(b);
        prev = off;
        off += s;
    }
    uint64_t top = prev != ARENA_NIL && bfree(arena_block(a, prev)) ? prev : c->size;
    if (c->top != top)
        return store_fail(STORE_ERR_INVALID, "arena: high-water mark %llu, the walk says %llu",
                          (unsigned long long)c->top, (unsigned long long)top);
    if (off != c->size)
        return store_fail(STORE_ERR_INVALID, "arena: blocks end at %llu, arena size %llu",
                          (unsigned long long)off, (unsigned long long)c->size);
    if (r.used != c->used || r.alloc_blocks != c->alloc_blocks || r.free_blocks != c->free_blocks)
        return store_fail(STORE_ERR_INVALID,
                          "arena: counters used=%llu alloc=%llu free=%llu, walk found %llu %llu %llu",
                          (unsigned long long)c->used, (unsigned long long)c->alloc_blocks,
                          (unsigned long long)c->free_blocks, (unsigned long long)r.used,
                          (unsigned long long)r.alloc_blocks, (unsigned long long)r.free_blocks);
    /* every list: its blocks are free, of its class, doubly linked; bitmaps match */
    uint64_t listed = 0;
    for (unsigned f = 0; f < ARENA_FL_COUNT; f++) {
        int fl_bit = (int)((c->fl_bitmap >> f) & 1);
        if (fl_bit != (c->sl_bitmap[f] != 0))
            return store_fail(STORE_ERR_INVALID, "arena: first-level bit %u disagrees with its lists", f);
        for (unsigned s = 0; s < ARENA_SL_COUNT; s++) {
            uint64_t head = c->heads[f][s];
            int sl_bit = (int)((c->sl_bitmap[f] >> s) & 1);
            if (sl_bit != (head != ARENA_NIL))
                return store_fail(STORE_ERR_INVALID, "arena: bitmap bit (%u,%u) disagrees with its list", f, s);
            uint64_t back = ARENA_NIL;
            for (uint64_t cur = head; cur != ARENA_NIL; cur = arena_block(a, cur)->next_free) {
                if (++listed > r.free_blocks)
                    return store_fail(STORE_ERR_INVALID, "arena: free lists hold more blocks than exist (cycle?)");
                if (!arena_valid_block(a, cur) || !bfree(arena_block(a, cur)))
                    return store_fail(STORE_ERR_INVALID, "arena: list (%u,%u) holds %llu, not a free block",
                                      f, s, (unsigned long long)cur);
                unsigned ff, ss;
                mapping(bsize(arena_block(a, cur)), &ff, &ss);
                if (ff != f || ss != s)
                    return store_fail(STORE_ERR_INVALID, "arena: block %llu of class (%u,%u) is in list (%u,%u)",
                                      (unsigned long long)cur, ff, ss, f, s);
                if (arena_block(a, cur)->prev_free != back)
                    return store_fail(STORE_ERR_INVALID, "arena: broken back link at %llu",
                                      (unsigned long long)cur);
                back = cur;
            }
        }
    }
    if (listed != r.free_blocks)
        return store_fail(STORE_ERR_INVALID, "arena: %llu free blocks, %llu in lists",
                          (unsigned long long)r.free_blocks, (unsigned long long)listed);
    if (out)
        *out = r;
    return STORE_OK;
}
