/* commit.c -- the map of committed chunks and their idle stamps (concept in commit.h). */
#include "commit.h"

#include <time.h>

#include "status.h"

static inline uint64_t nwords(uint64_t nchunks) { return (nchunks + 63) / 64; }

uint64_t commit_map_bytes(uint64_t size)
{
    uint64_t n = commit_chunk_up(size);
    uint64_t bits = nwords(n) * 8;
    return bits + ((n * 4 + 63) & ~63ull);
}

void commit_bind(commit_t *c, commit_ctl_t *ctl, uint8_t *mem, uint64_t size, int format)
{
    c->ctl = ctl;
    c->size = size;
    if (format) {
        ctl->nchunks = commit_chunk_up(size);
        ctl->committed = 0;
    }
    c->bits = (uint64_t *)mem;
    c->stamps = (uint32_t *)(mem + nwords(ctl->nchunks) * 8);
}

uint64_t commit_run_bytes(const commit_t *c, uint64_t lo, uint64_t hi)
{
    if (hi <= lo)
        return 0;
    uint64_t end = hi * COMMIT_CHUNK < c->size ? hi * COMMIT_CHUNK : c->size;
    return end - lo * COMMIT_CHUNK;
}

/* Bits of word w that lie in [lo, hi). */
static inline uint64_t word_mask(uint64_t w, uint64_t lo, uint64_t hi)
{
    uint64_t first = w * 64, m = ~0ull;
    if (lo > first)
        m &= ~0ull << (lo - first);
    if (hi < first + 64)
        m &= (1ull << (hi - first)) - 1;   /* hi - first < 64 here */
    return m;
}

int commit_find(const commit_t *c, uint64_t lo, uint64_t hi, int value, uint64_t max_chunks,
                commit_run_t *run)
{
    if (hi > c->ctl->nchunks)
        hi = c->ctl->nchunks;
    if (lo >= hi || max_chunks == 0)
        return 0;
    uint64_t flip = value ? 0 : ~0ull;   /* look for set bits in (bits ^ flip) */
    uint64_t start = UINT64_MAX;
    for (uint64_t w = lo >> 6; w <= (hi - 1) >> 6; w++) {
        uint64_t m = (c->bits[w] ^ flip) & word_mask(w, lo, hi);
        if (m) {
            start = w * 64 + (uint64_t)__builtin_ctzll(m);
            break;
        }
    }
    if (start == UINT64_MAX)
        return 0;
    uint64_t end = start;
    uint64_t cap = hi - start < max_chunks ? hi : start + max_chunks;
    while (end < cap) {
        uint64_t w = end >> 6;
        uint64_t m = ~(c->bits[w] ^ flip) & word_mask(w, end, cap);   /* first mismatch */
        if (m) {
            end = w * 64 + (uint64_t)__builtin_ctzll(m);
            break;
        }
        end = (w + 1) * 64 < cap ? (w + 1) * 64 : cap;
    }
    run->lo = start;
    run->hi = end;
    return 1;
}

int commit_covers(const commit_t *c, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 1;
    commit_run_t r;
    return !commit_find(c, commit_chunk_of(off), commit_chunk_up(off + len), 0, UINT64_MAX, &r);
}

void commit_set(commit_t *c, uint64_t lo, uint64_t hi, uint32_t now)
{
    for (uint64_t k = lo; k < hi && k < c->ctl->nchunks; k++) {
        uint64_t bit = 1ull << (k & 63);
        c->stamps[k] = now;
        if (!(c->bits[k >> 6] & bit)) {
            c->bits[k >> 6] |= bit;
            c->ctl->committed++;
        }
    }
}

void commit_clear(commit_t *c, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = lo; k < hi && k < c->ctl->nchunks; k++) {
        uint64_t bit = 1ull << (k & 63);
        if (c->bits[k >> 6] & bit) {
            c->bits[k >> 6] &= ~bit;
            c->ctl->committed--;
        }
    }
}

void commit_stamp(commit_t *c, uint64_t off, uint64_t len, uint32_t now)
{
    uint64_t hi = commit_chunk_up(off + len);
    for (uint64_t k = commit_chunk_of(off); k < hi && k < c->ctl->nchunks; k++)
        c->stamps[k] = now;
}

uint64_t commit_bytes_in(const commit_t *c, uint64_t lo, uint64_t hi)
{
    uint64_t total = 0;
    commit_run_t r;
    while (commit_find(c, lo, hi, 1, UINT64_MAX, &r)) {
        total += commit_run_bytes(c, r.lo, r.hi);
        lo = r.hi;
    }
    return total;
}

void commit_recount(commit_t *c)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w < nwords(c->ctl->nchunks); w++)
        n += (uint64_t)__builtin_popcountll(c->bits[w]);
    c->ctl->committed = n;
}

int commit_check(const commit_t *c)
{
    uint64_t n = 0, words = nwords(c->ctl->nchunks);
    for (uint64_t w = 0; w < words; w++)
        n += (uint64_t)__builtin_popcountll(c->bits[w]);
    if (n != c->ctl->committed)
        return store_fail(STORE_ERR_INVALID, "commit map: %llu bits set, counter says %llu",
                          (unsigned long long)n, (unsigned long long)c->ctl->committed);
    if (words && (c->bits[words - 1] & ~word_mask(words - 1, 0, c->ctl->nchunks)))
        return store_fail(STORE_ERR_INVALID, "commit map: a bit past the last chunk is set");
    return STORE_OK;
}

uint32_t commit_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}
