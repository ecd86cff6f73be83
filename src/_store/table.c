/* table.c -- entry array, hash index and free-entry list (concept in table.h). */
#include "table.h"

#include "status.h"

/* ---- hashing ------------------------------------------------------------------ */

static inline uint64_t mix64(uint64_t x)
{
    /* splitmix64's finaliser: every input bit reaches every output bit */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Ids may be sequential (a task id plus an index), so hash all 20 bytes properly. */
static inline uint64_t hash_id(const uint8_t *id)
{
    uint64_t a, b;
    uint32_t c;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    memcpy(&c, id + 16, 4);
    return mix64(mix64(a ^ 0x9e3779b97f4a7c15ull) ^ b ^ ((uint64_t)c << 32 | c));
}

uint32_t table_index_size(uint32_t capacity)
{
    uint32_t n = 16;
    while (n < 2u * capacity)
        n <<= 1;
    return n;
}

/* ---- index -------------------------------------------------------------------- */

uint32_t table_find(const table_t *t, const uint8_t *id)
{
    uint32_t mask = t->ctl->index_size - 1;
    uint32_t i = (uint32_t)hash_id(id) & mask;
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t v = t->index[i];
        if (v == INDEX_EMPTY)
            return TABLE_NIL;
        if (v == INDEX_TOMB)
            continue;
        const table_entry_t *en = table_entry(t, v - 1);
        if (memcmp(en->id, id, TABLE_ID_SIZE) == 0)
            return v - 1;
    }
    return TABLE_NIL;
}

int table_index_insert(table_t *t, uint32_t e)
{
    table_ctl_t *c = t->ctl;
    const uint8_t *id = table_entry(t, e)->id;
    uint32_t mask = c->index_size - 1;
    uint32_t i = (uint32_t)hash_id(id) & mask;
    uint32_t first_tomb = TABLE_NIL;
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t v = t->index[i];
        if (v == INDEX_EMPTY)
            break;
        if (v == INDEX_TOMB) {
            if (first_tomb == TABLE_NIL)
                first_tomb = i;
            continue;
        }
        if (memcmp(table_entry(t, v - 1)->id, id, TABLE_ID_SIZE) == 0)
            return STORE_ERR_EXISTS;
    }
    if (first_tomb != TABLE_NIL) {
        i = first_tomb;
        c->index_tombs--;
    } else if (t->index[i] != INDEX_EMPTY) {
        return store_fail(STORE_ERR_INVALID, "index: no free slot (cannot happen: 2x capacity)");
    }
    t->index[i] = e + 1;
    c->index_used++;
    return STORE_OK;
}

int table_index_remove(table_t *t, uint32_t e)
{
    table_ctl_t *c = t->ctl;
    uint32_t mask = c->index_size - 1;
    uint32_t i = (uint32_t)hash_id(table_entry(t, e)->id) & mask;
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t v = t->index[i];
        if (v == INDEX_EMPTY)
            break;
        if (v != e + 1)
            continue;
        c->index_used--;
        if (t->index[(i + 1) & mask] == INDEX_EMPTY) {
            /* end of a probe chain: no tombstone needed, and the ones before us go too */
            t->index[i] = INDEX_EMPTY;
            for (uint32_t j = (i - 1) & mask; t->index[j] == INDEX_TOMB; j = (j - 1) & mask) {
                t->index[j] = INDEX_EMPTY;
                c->index_tombs--;
            }
        } else {
            t->index[i] = INDEX_TOMB;
            c->index_tombs++;
        }
        return STORE_OK;
    }
    return store_fail(STORE_ERR_INVALID, "index: entry %u not found under its id", e);
}

static void rebuild_index(table_t *t)
{
    table_ctl_t *c = t->ctl;
    memset(t->index, 0, (size_t)c->index_size * sizeof(uint32_t));
    c->index_used = c->index_tombs = 0;
    for (uint32_t e = 0; e < c->touched; e++) {
        table_entry_t *en = table_entry(t, e);
        uint32_t st = atomic_load_explicit(&en->state, memory_order_acquire);
        if (st == ENTRY_FREE || (en->flags & ENTRY_UNINDEXED))
            continue;
        if (table_index_insert(t, e) == STORE_ERR_EXISTS) {
            /* two live entries under one id: keep the first, orphan the other (its pins,
             * if any, still protect its memory; the last unpin frees it) */
            en->flags |= ENTRY_UNINDEXED | ENTRY_DELETE_PENDING;
        }
    }
}

void table_maybe_rehash(table_t *t)
{
    table_ctl_t *c = t->ctl;
    if ((uint64_t)(c->index_used + c->index_tombs + 1) * 4 > (uint64_t)c->index_size * 3)
        rebuild_index(t);
}

/* ---- free list ---------------------------------------------------------------- */

uint32_t table_pop_free(table_t *t)
{
    table_ctl_t *c = t->ctl;
    uint32_t e = c->free_head;
    if (e != TABLE_NIL) {
        c->free_head = table_entry(t, e)->next_free;
        return e;
    }
    if (c->touched < c->capacity)   /* a crash right after this leaves a FREE entry below
                                     * the mark: rebuild puts it on the free list */
        return c->touched++;
    return TABLE_NIL;
}

void table_push_free(table_t *t, uint32_t e)
{
    table_entry(t, e)->next_free = t->ctl->free_head;
    t->ctl->free_head = e;
}

/* ---- init, rebuild, check ----------------------------------------------------- */

/* ``t->entries`` and ``t->index`` must be zero already (a fresh segment, or calloc): a
 * zero entry is FREE and a zero index slot is empty, so nothing is written here and the
 * pages of a large table are only allocated as entries come into use. */
void table_init(table_t *t, uint32_t capacity, uint32_t pin_words)
{
    table_ctl_t *c = t->ctl;
    memset(c, 0, sizeof *c);
    c->capacity = capacity;
    c->pin_words = pin_words;
    c->stride = table_stride(pin_words);
    c->index_size = table_index_size(capacity);
    c->free_head = TABLE_NIL;
    c->touched = 0;
}

void table_rebuild(table_t *t, uint32_t max_slots)
{
    table_ctl_t *c = t->ctl;
    c->free_head = TABLE_NIL;
    c->live = c->sealed = c->pinned = c->delete_pending = 0;
    for (uint32_t e = c->touched; e-- > 0;) {
        table_entry_t *en = table_entry(t, e);
        uint32_t st = atomic_load_explicit(&en->state, memory_order_acquire);
        if (st != ENTRY_CREATED && st != ENTRY_SEALED) {
            atomic_store_explicit(&en->state, ENTRY_FREE, memory_order_release);
            en->flags = 0;
            en->npin_slots = 0;
            memset(en->pins, 0, 8u * c->pin_words);
            table_push_free(t, e);
            continue;
        }
        uint32_t n = 0;
        for (uint32_t w = 0; w < c->pin_words; w++) {
            if (w * 64 + 64 > max_slots) {   /* drop bits past the slot table */
                uint32_t keep = max_slots > w * 64 ? max_slots - w * 64 : 0;
                en->pins[w] &= keep ? (~0ull >> (64 - keep)) : 0;
            }
            n += (uint32_t)__builtin_popcountll(en->pins[w]);
        }
        en->npin_slots = n;
        if (st == ENTRY_CREATED && (en->flags & ENTRY_DELETE_PENDING))
            en->flags |= ENTRY_UNINDEXED;   /* an abort that was waiting for its writer */
        c->live++;
        c->sealed += st == ENTRY_SEALED;
        c->pinned += n > 0;
    }
    rebuild_index(t);
    for (uint32_t e = 0; e < c->touched; e++) {
        table_entry_t *en = table_entry(t, e);
        if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_FREE &&
            (en->flags & ENTRY_DELETE_PENDING))
            c->delete_pending++;
    }
}

int table_check(const table_t *t)
{
    const table_ctl_t *c = t->ctl;
    uint32_t live = 0, sealed = 0, pinned = 0, pending = 0, indexed = 0;
    for (uint32_t e = 0; e < c->touched; e++) {
        const table_entry_t *en = table_entry(t, e);
        uint32_t st = atomic_load_explicit(&en->state, memory_order_acquire);
        if (st == ENTRY_FREE)
            continue;
        if (st != ENTRY_CREATED && st != ENTRY_SEALED)
            return store_fail(STORE_ERR_INVALID, "table: entry %u has state %u", e, st);
        live++;
        sealed += st == ENTRY_SEALED;
        uint32_t n = 0;
        for (uint32_t w = 0; w < c->pin_words; w++)
            n += (uint32_t)__builtin_popcountll(en->pins[w]);
        if (n != en->npin_slots)
            return store_fail(STORE_ERR_INVALID, "table: entry %u counts %u pinning slots, bits say %u",
                              e, en->npin_slots, n);
        pinned += n > 0;
        pending += (en->flags & ENTRY_DELETE_PENDING) != 0;
        if ((en->flags & ENTRY_DELETE_PENDING) && n == 0)
            return store_fail(STORE_ERR_INVALID, "table: entry %u is delete-pending with no pin", e);
        if (en->flags & ENTRY_UNINDEXED) {
            if (!(en->flags & ENTRY_DELETE_PENDING))
                return store_fail(STORE_ERR_INVALID, "table: orphan entry %u not delete-pending", e);
            continue;
        }
        indexed++;
        if (table_find(t, en->id) != e)
            return store_fail(STORE_ERR_INVALID, "table: index does not find live entry %u", e);
    }
    if (live != c->live || sealed != c->sealed || pinned != c->pinned || pending != c->delete_pending)
        return store_fail(STORE_ERR_INVALID,
                          "table: counters live=%u sealed=%u pinned=%u pending=%u, entries say %u %u %u %u",
                          c->live, c->sealed, c->pinned, c->delete_pending, live, sealed, pinned, pending);
    uint32_t used = 0, tombs = 0;
    for (uint32_t i = 0; i < c->index_size; i++) {
        uint32_t v = t->index[i];
        if (v == INDEX_EMPTY)
            continue;
        if (v == INDEX_TOMB) {
            tombs++;
            continue;
        }
        used++;
        if (v - 1 >= c->capacity)
            return store_fail(STORE_ERR_INVALID, "index: slot %u names entry %u of %u", i, v - 1, c->capacity);
        const table_entry_t *en = table_entry(t, v - 1);
        if (atomic_load_explicit(&en->state, memory_order_acquire) == ENTRY_FREE ||
            (en->flags & ENTRY_UNINDEXED))
            return store_fail(STORE_ERR_INVALID, "index: slot %u names entry %u, which is not indexed-live", i, v - 1);
    }
    if (used != indexed || used != c->index_used || tombs != c->index_tombs)
        return store_fail(STORE_ERR_INVALID, "index: %u keys %u tombstones, counters %u %u, live indexed %u",
                          used, tombs, c->index_used, c->index_tombs, indexed);
    if (c->touched > c->capacity)
        return store_fail(STORE_ERR_INVALID, "table: %u entries touched of %u", c->touched, c->capacity);
    uint32_t nfree = 0;
    for (uint32_t e = c->free_head; e != TABLE_NIL; e = table_entry(t, e)->next_free) {
        if (e >= c->touched)
            return store_fail(STORE_ERR_INVALID, "table: free list names entry %u, only %u touched",
                              e, c->touched);
        if (++nfree > c->touched - live)
            return store_fail(STORE_ERR_INVALID, "table: free list longer than the free entries (cycle?)");
        if (atomic_load_explicit(&table_entry(t, e)->state, memory_order_acquire) != ENTRY_FREE)
            return store_fail(STORE_ERR_INVALID, "table: live entry %u is on the free list", e);
    }
    if (nfree != c->touched - live)
        return store_fail(STORE_ERR_INVALID, "table: %u free entries below the mark, %u on the free list",
                          c->touched - live, nfree);
    return STORE_OK;
}
