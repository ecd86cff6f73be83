/* test_arena.c -- the TLSF allocator alone, over heap memory: alloc/free/coalesce, a
 * full arena, fragmentation, random sequences against a reference model, rebuild. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "check.h"
#include "status.h"

typedef struct {
    arena_t a;
    arena_ctl_t ctl;
    uint8_t *mem;
} heap_arena_t;

static void ha_init(heap_arena_t *h, uint64_t size)
{
    memset(h, 0, sizeof *h);
    h->mem = aligned_alloc(64, size);
    h->a.ctl = &h->ctl;
    h->a.base = h->mem;
    CHECK_EQ(arena_init(&h->a, size), STORE_OK);
}

static void ha_free(heap_arena_t *h) { free(h->mem); }

static uint64_t must_alloc(heap_arena_t *h, uint64_t payload)
{
    uint64_t off = ARENA_NIL, got = 0;
    CHECK_EQ(arena_alloc(&h->a, arena_block_size_for(payload), &off, &got), STORE_OK);
    return off;
}

static void test_block_sizes(void)
{
    CHECK_EQ(arena_block_size_for(0), ARENA_MIN_BLOCK);
    CHECK_EQ(arena_block_size_for(1), 128);
    CHECK_EQ(arena_block_size_for(64), 128);
    CHECK_EQ(arena_block_size_for(65), 192);
    CHECK_EQ(arena_block_size_for(1000), 64 + 1024);
}

static void test_alloc_free_coalesce(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    uint64_t a = must_alloc(&h, 1000), b = must_alloc(&h, 1000), c = must_alloc(&h, 1000);
    CHECK_EQ(a, 0);
    CHECK_EQ(b, 1088);
    CHECK_EQ(c, 2176);
    CHECK_EQ((uint64_t)(uintptr_t)(h.mem + a + ARENA_HEADER) % 64, 0);
    CHECK_EQ(h.ctl.alloc_blocks, 3);
    CHECK_EQ(h.ctl.free_blocks, 1);
    CHECK_EQ(h.ctl.used, 3 * 1088);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);

    CHECK_EQ(arena_free(&h.a, a, 1), STORE_OK);   /* a, tail free: 2 */
    CHECK_EQ(h.ctl.free_blocks, 2);
    CHECK_EQ(arena_free(&h.a, c, 1), STORE_OK);   /* c merges with the tail: still 2 */
    CHECK_EQ(h.ctl.free_blocks, 2);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    CHECK_EQ(arena_free(&h.a, b, 1), STORE_OK);   /* b merges both sides: 1 */
    CHECK_EQ(h.ctl.free_blocks, 1);
    CHECK_EQ(h.ctl.used, 0);
    arena_report_t r;
    CHECK_EQ(arena_check(&h.a, &r), STORE_OK);
    CHECK_EQ(r.largest_free, 1 << 20);
    CHECK_EQ(arena_largest_free(&h.a), 1 << 20);

    /* double free and garbage offsets are refused, not followed */
    uint64_t d = must_alloc(&h, 10);
    CHECK_EQ(arena_free(&h.a, d, 0), STORE_OK);
    CHECK_EQ(arena_free(&h.a, d, 0), STORE_ERR_INVALID);
    CHECK_EQ(arena_free(&h.a, 4096 + 64, 0), STORE_ERR_INVALID);
    CHECK_EQ(arena_free(&h.a, 7, 0), STORE_ERR_INVALID);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    ha_free(&h);
}

static void test_lifo_reuse(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    uint64_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = must_alloc(&h, 5000);
    /* free two same-size blocks that cannot merge; the latest freed comes back first */
    CHECK_EQ(arena_free(&h.a, x[2], 0), STORE_OK);
    CHECK_EQ(arena_free(&h.a, x[5], 0), STORE_OK);
    CHECK_EQ(must_alloc(&h, 5000), x[5]);
    CHECK_EQ(must_alloc(&h, 5000), x[2]);
    /* a smaller request of the same class also takes the warm block */
    CHECK_EQ(arena_free(&h.a, x[3], 0), STORE_OK);
    CHECK_EQ(must_alloc(&h, 4990), x[3]);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    ha_free(&h);
}

static void test_full_and_too_large(void)
{
    heap_arena_t h;
    ha_init(&h, 64 << 10);
    uint64_t off, got;
    CHECK_EQ(arena_alloc(&h.a, (64 << 10) + 64, &off, &got), STORE_ERR_TOO_LARGE);
    int n = 0;
    uint64_t offs[1024];
    while (arena_alloc(&h.a, arena_block_size_for(1000), &off, &got) == STORE_OK)
        offs[n++] = off;
    CHECK_EQ(n, (64 << 10) / 1088);
    CHECK_EQ(arena_alloc(&h.a, arena_block_size_for(1000), &off, &got), STORE_ERR_FULL);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    /* the whole arena in one block */
    for (int i = 0; i < n; i++)
        CHECK_EQ(arena_free(&h.a, offs[i], 1), STORE_OK);
    CHECK_EQ(arena_alloc(&h.a, 64 << 10, &off, &got), STORE_OK);
    CHECK_EQ(off, 0);
    CHECK_EQ(got, 64 << 10);
    CHECK_EQ(arena_alloc(&h.a, 128, &off, &got), STORE_ERR_FULL);
    CHECK_EQ(arena_free(&h.a, 0, 1), STORE_OK);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    ha_free(&h);
}

static int reserve_refuses(void *ctx, uint64_t off, uint64_t len)
{
    (void)ctx; (void)off; (void)len;
    return STORE_ERR_NOSPC;
}

static void test_unreservable_remainder(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    h.a.reserve = reserve_refuses;
    uint64_t off, got;
    CHECK_EQ(arena_alloc(&h.a, 4096, &off, &got), STORE_OK);
    CHECK_EQ(got, 1 << 20);   /* handed out whole: no header written in an unreserved page */
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    CHECK_EQ(arena_free(&h.a, off, 0), STORE_OK);
    ha_free(&h);
}

/* "FULL" only when no free block can hold the request, even when class lookups miss. */
static void test_fallback_scan(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    /* class (fl,sl) of 100 KiB holds sizes [96, 99) Ki units... make a free block slightly
     * larger than a request in the same class, with no larger class available */
    uint64_t big = must_alloc(&h, 100 * 1024);
    uint64_t sep = must_alloc(&h, 64);
    uint64_t rest;
    uint64_t got;
    CHECK_EQ(arena_alloc(&h.a, h.ctl.size - h.ctl.used, &rest, &got), STORE_OK);   /* fill the tail */
    CHECK_EQ(arena_free(&h.a, big, 0), STORE_OK);
    uint64_t off;
    uint64_t want = arena_block_size_for(100 * 1024 - 640);   /* same class, smaller */
    CHECK_EQ(arena_alloc(&h.a, want, &off, &got), STORE_OK);
    CHECK_EQ(off, big);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    (void)sep;
    ha_free(&h);
}

static void test_fragmentation(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    uint64_t offs[256];
    int n = 0;
    uint64_t off, got;
    while (arena_alloc(&h.a, 4096, &off, &got) == STORE_OK)
        offs[n++] = off;
    CHECK_EQ(n, 256);
    for (int i = 0; i < n; i += 2)
        CHECK_EQ(arena_free(&h.a, offs[i], 0), STORE_OK);
    /* half the arena is free, but in 4 KiB holes: 8 KiB cannot fit, 4 KiB can */
    CHECK_EQ(h.ctl.used, 512 << 10);
    CHECK_EQ(arena_alloc(&h.a, 8192, &off, &got), STORE_ERR_FULL);
    CHECK_EQ(arena_largest_free(&h.a), 4096);
    CHECK_EQ(arena_alloc(&h.a, 4096, &off, &got), STORE_OK);
    CHECK_EQ(arena_free(&h.a, off, 0), STORE_OK);
    /* freeing the odd ones coalesces everything back into one block */
    for (int i = 1; i < n; i += 2)
        CHECK_EQ(arena_free(&h.a, offs[i], 0), STORE_OK);
    CHECK_EQ(h.ctl.free_blocks, 1);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    ha_free(&h);
}

/* Random workload at a target occupancy: every failure must be a true "no block fits",
 * and we report how full the arena was at the first failure (the practical
 * fragmentation figure documented in docs/store.md). */
static void test_fragmentation_random(void)
{
    heap_arena_t h;
    const uint64_t size = 64ull << 20;
    ha_init(&h, size);
    unsigned long long rng = 0x1234567;
    enum { MAXLIVE = 20000 };
    static uint64_t live[MAXLIVE];
    int n = 0;
    uint64_t fails = 0, attempts = 0;
    double min_util_at_fail = 1.0;
    for (int step = 0; step < 200000; step++) {
        int do_alloc = n == 0 || (n < MAXLIVE && rng_next(&rng) % 100 < 52);
        if (do_alloc) {
            /* log-uniform payloads, 64 B .. 1 MiB */
            uint64_t payload = 64ull << (rng_next(&rng) % 15);
            payload += rng_next(&rng) % payload;
            uint64_t off, got, want = arena_block_size_for(payload);
            attempts++;
            int rc = arena_alloc(&h.a, want, &off, &got);
            if (rc == STORE_OK) {
                live[n++] = off;
            } else {
                CHECK_EQ(rc, STORE_ERR_FULL);
                CHECK(arena_largest_free(&h.a) < want);
                fails++;
                double util = (double)h.ctl.used / (double)size;
                if (util < min_util_at_fail)
                    min_util_at_fail = util;
                /* make room like a store would: free a random object */
                int k = (int)(rng_next(&rng) % (uint64_t)n);
                CHECK_EQ(arena_free(&h.a, live[k], 0), STORE_OK);
                live[k] = live[--n];
            }
        } else {
            int k = (int)(rng_next(&rng) % (uint64_t)n);
            CHECK_EQ(arena_free(&h.a, live[k], 0), STORE_OK);
            live[k] = live[--n];
        }
        if (step % 20000 == 0)
            CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    }
    printf("  fragmentation: %llu of %llu allocations failed; lowest occupancy at a failure %.1f%%\n",
           (unsigned long long)fails, (unsigned long long)attempts, 100.0 * min_util_at_fail);
    for (int i = 0; i < n; i++)
        CHECK_EQ(arena_free(&h.a, live[i], 0), STORE_OK);
    CHECK_EQ(h.ctl.free_blocks, 1);
    CHECK_EQ(h.ctl.used, 0);
    ha_free(&h);
}

/* Random alloc/free against a reference model: a shadow map of 64-byte units, each
 * owned by at most one block; payloads filled with their owner's pattern and checked at
 * free (an overlap would corrupt them). */
static void test_random_against_model(void)
{
    heap_arena_t h;
    const uint64_t size = 8ull << 20;
    ha_init(&h, size);
    uint32_t *shadow = calloc(size / 64, sizeof *shadow);
    enum { MAXLIVE = 4096 };
    static uint64_t off_of[MAXLIVE], size_of[MAXLIVE];
    static uint32_t tag_of[MAXLIVE];
    int n = 0;
    uint32_t next_tag = 1;
    unsigned long long rng = 42;
    for (int step = 0; step < 100000; step++) {
        if (n == 0 || (n < MAXLIVE && rng_next(&rng) % 2)) {
            uint64_t payload = rng_next(&rng) % (rng_next(&rng) % 4 == 0 ? 200000 : 3000);
            uint64_t off, got, want = arena_block_size_for(payload);
            int rc = arena_alloc(&h.a, want, &off, &got);
            if (rc != STORE_OK) {
                CHECK_EQ(rc, STORE_ERR_FULL);
                CHECK(arena_largest_free(&h.a) < want);
                continue;
            }
            CHECK(got >= want && got - want < ARENA_MIN_BLOCK + 64);
            CHECK(off % 64 == 0 && off + got <= size);
            uint32_t tag = next_tag++;
            for (uint64_t u = off / 64; u < (off + got) / 64; u++) {
                if (shadow[u] != 0) {
                    CHECK(!"overlapping blocks");
                    break;
                }
                shadow[u] = tag;
            }
            memset(h.mem + off + ARENA_HEADER, (int)(tag & 0xff), got - ARENA_HEADER);
            off_of[n] = off;
            size_of[n] = got;
            tag_of[n] = tag;
            n++;
        } else {
            int k = (int)(rng_next(&rng) % (uint64_t)n);
            uint64_t off = off_of[k], got = size_of[k];
            uint8_t *p = h.mem + off + ARENA_HEADER;
            int intact = 1;
            for (uint64_t i = 0; i < got - ARENA_HEADER; i++)
                if (p[i] != (uint8_t)(tag_of[k] & 0xff)) {
                    intact = 0;
                    break;
                }
            CHECK(intact);
            for (uint64_t u = off / 64; u < (off + got) / 64; u++)
                shadow[u] = 0;
            CHECK_EQ(arena_free(&h.a, off, 1), STORE_OK);
            off_of[k] = off_of[n - 1];
            size_of[k] = size_of[n - 1];
            tag_of[k] = tag_of[n - 1];
            n--;
        }
        if (step % 5000 == 0) {
            arena_report_t r;
            CHECK_EQ(arena_check(&h.a, &r), STORE_OK);
            CHECK_EQ(r.alloc_blocks, n);
        }
    }

    /* Rebuild from the model's blocks (what recovery does) gives the same layout. */
    arena_report_t before, after;
    CHECK_EQ(arena_check(&h.a, &before), STORE_OK);
    for (int i = 1; i < n; i++)   /* insertion sort by offset */
        for (int j = i; j > 0 && off_of[j - 1] > off_of[j]; j--) {
            uint64_t t = off_of[j]; off_of[j] = off_of[j - 1]; off_of[j - 1] = t;
            t = size_of[j]; size_of[j] = size_of[j - 1]; size_of[j - 1] = t;
        }
    arena_rebuild_begin(&h.a);
    for (int i = 0; i < n; i++)
        CHECK_EQ(arena_rebuild_add(&h.a, off_of[i], size_of[i], (uint32_t)i + 1), STORE_OK);
    arena_rebuild_end(&h.a);
    CHECK_EQ(arena_check(&h.a, &after), STORE_OK);
    CHECK_EQ(after.blocks, before.blocks);
    CHECK_EQ(after.free_blocks, before.free_blocks);
    CHECK_EQ(after.used, before.used);
    CHECK_EQ(after.largest_free, before.largest_free);
    /* an overlapping block is refused by the rebuild */
    arena_rebuild_begin(&h.a);
    CHECK_EQ(arena_rebuild_add(&h.a, 0, 4096, 1), STORE_OK);
    CHECK_EQ(arena_rebuild_add(&h.a, 2048, 4096, 2), STORE_ERR_INVALID);
    CHECK_EQ(arena_rebuild_add(&h.a, 4096 + 64, 4096, 2), STORE_ERR_INVALID);   /* gap < min block */
    arena_rebuild_end(&h.a);
    CHECK_EQ(arena_check(&h.a, NULL), STORE_OK);
    CHECK_EQ(arena_free(&h.a, 0, 0), STORE_OK);

    /* rebuild the model's layout again, then free everything: all memory comes back */
    arena_rebuild_begin(&h.a);
    for (int i = 0; i < n; i++)
        CHECK_EQ(arena_rebuild_add(&h.a, off_of[i], size_of[i], (uint32_t)i + 1), STORE_OK);
    arena_rebuild_end(&h.a);
    for (int i = 0; i < n; i++)
        CHECK_EQ(arena_free(&h.a, off_of[i], 1), STORE_OK);
    arena_report_t r;
    CHECK_EQ(arena_check(&h.a, &r), STORE_OK);
    CHECK_EQ(r.blocks, 1);
    CHECK_EQ(r.free_bytes, size);
    CHECK_EQ(h.ctl.used, 0);
    free(shadow);
    ha_free(&h);
}

static void test_poison(void)
{
    heap_arena_t h;
    ha_init(&h, 1 << 20);
    uint64_t a = must_alloc(&h, 1000);
    must_alloc(&h, 1000);   /* keeps `a` from merging into the tail */
    memset(h.mem + a + ARENA_HEADER, 0x11, 1000);
    CHECK_EQ(arena_free(&h.a, a, 1), STORE_OK);
    CHECK_EQ(h.mem[a + ARENA_HEADER + 500], ARENA_POISON);
    ha_free(&h);
}

int main(void)
{
    RUN(test_block_sizes);
    RUN(test_alloc_free_coalesce);
    RUN(test_lifo_reuse);
    RUN(test_full_and_too_large);
    RUN(test_unreservable_remainder);
    RUN(test_fallback_scan);
    RUN(test_fragmentation);
    RUN(test_fragmentation_random);
    RUN(test_random_against_model);
    RUN(test_poison);
    CHECK_MAIN_END();
}
