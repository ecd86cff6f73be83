/* test_table.c -- the object table alone: insert, delete, collisions, tombstones,
 * rehash, free list, and rebuild from the entry array. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "status.h"
#include "table.h"

typedef struct {
    table_t t;
    table_ctl_t ctl;
    uint8_t *entries;
    uint32_t *index;
} heap_table_t;

static void ht_init(heap_table_t *h, uint32_t cap, uint32_t pin_words)
{
    memset(h, 0, sizeof *h);
    h->entries = calloc(cap, table_stride(pin_words));
    h->index = calloc(table_index_size(cap), sizeof(uint32_t));
    h->t.ctl = &h->ctl;
    h->t.entries = h->entries;
    h->t.index = h->index;
    table_init(&h->t, cap, pin_words);
}

static void ht_free(heap_table_t *h)
{
    free(h->entries);
    free(h->index);
}

static void make_id(uint8_t *id, uint64_t k)
{
    memset(id, 0, TABLE_ID_SIZE);
    memcpy(id + 4, &k, sizeof k);   /* sequential ids: the hash must spread them */
}

/* What store.c does around the table for a create / delete. */
static uint32_t add(heap_table_t *h, uint64_t k)
{
    uint32_t e = table_pop_free(&h->t);
    if (e == TABLE_NIL)
        return e;
    table_maybe_rehash(&h->t);
    table_entry_t *en = table_entry(&h->t, e);
    make_id(en->id, k);
    atomic_store(&en->state, ENTRY_CREATED);
    CHECK_EQ(table_index_insert(&h->t, e), STORE_OK);
    h->ctl.live++;
    return e;
}

static void del(heap_table_t *h, uint32_t e)
{
    atomic_store(&table_entry(&h->t, e)->state, ENTRY_FREE);
    CHECK_EQ(table_index_remove(&h->t, e), STORE_OK);
    h->ctl.live--;
    table_push_free(&h->t, e);
}

static void test_insert_find_delete(void)
{
    heap_table_t h;
    ht_init(&h, 64, 4);
    CHECK_EQ(h.ctl.index_size, 128);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    uint32_t es[64];
    for (int i = 0; i < 64; i++)
        es[i] = add(&h, (uint64_t)i);
    CHECK_EQ(table_pop_free(&h.t), TABLE_NIL);   /* full */
    uint8_t id[TABLE_ID_SIZE];
    for (int i = 0; i < 64; i++) {
        make_id(id, (uint64_t)i);
        CHECK_EQ(table_find(&h.t, id), es[i]);
    }
    make_id(id, 1000);
    CHECK_EQ(table_find(&h.t, id), TABLE_NIL);
    /* duplicate id */
    uint32_t e = es[0];
    CHECK_EQ(table_index_insert(&h.t, e), STORE_ERR_EXISTS);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    for (int i = 0; i < 64; i += 2)
        del(&h, es[i]);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    for (int i = 0; i < 64; i++) {
        make_id(id, (uint64_t)i);
        CHECK_EQ(table_find(&h.t, id), i % 2 ? es[i] : TABLE_NIL);
    }
    ht_free(&h);
}

/* A tiny table: 16 entries in 32 index slots, heavily colliding.  Churn it with random
 * inserts and deletes; tombstones must never make a key unfindable, and their count
 * must stay bounded (removal at a chain end clears them; rehash clears the rest). */
static void test_collisions_and_tombstones(void)
{
    heap_table_t h;
    ht_init(&h, 16, 1);
    unsigned long long rng = 7;
    uint64_t key_of[16];
    int present[16] = {0};
    uint32_t max_tombs = 0;
    uint64_t next_key = 0;
    for (int step = 0; step < 200000; step++) {
        uint32_t e = (uint32_t)(rng_next(&rng) % 16);
        if (present[e]) {
            del(&h, e);
            present[e] = 0;
        } else {
            uint32_t got = add(&h, next_key);
            if (got == TABLE_NIL)
                continue;
            key_of[got] = next_key++;
            present[got] = 1;
        }
        if (h.ctl.index_tombs > max_tombs)
            max_tombs = h.ctl.index_tombs;
        CHECK(h.ctl.index_used + h.ctl.index_tombs <= h.ctl.index_size * 3 / 4 + 1);
        if (step % 1000 == 0) {
            CHECK_EQ(table_check(&h.t), STORE_OK);
            for (uint32_t k = 0; k < 16; k++) {
                if (!present[k])
                    continue;
                uint8_t id[TABLE_ID_SIZE];
                make_id(id, key_of[k]);
                CHECK_EQ(table_find(&h.t, id), k);
            }
        }
    }
    printf("  tombstones: at most %u of %u index slots\n", max_tombs, h.ctl.index_size);
    ht_free(&h);
}

static void test_delete_clears_chain_end(void)
{
    heap_table_t h;
    ht_init(&h, 1024, 1);
    /* create/delete the same id over and over: no tombstones accumulate */
    for (int i = 0; i < 10000; i++) {
        uint32_t e = add(&h, 99);
        del(&h, e);
    }
    CHECK_EQ(h.ctl.index_tombs, 0);
    CHECK_EQ(h.ctl.index_used, 0);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    ht_free(&h);
}

static void test_rebuild_from_entries(void)
{
    heap_table_t h;
    ht_init(&h, 256, 2);
    unsigned long long rng = 99;
    int present[256] = {0};
    for (int step = 0; step < 5000; step++) {
        uint32_t e = (uint32_t)(rng_next(&rng) % 256);
        if (present[e]) {
            del(&h, e);
            present[e] = 0;
        } else {
            uint32_t got = add(&h, (uint64_t)step);
            if (got != TABLE_NIL)
                present[got] = 1;
        }
    }
    /* some pins and states */
    int sealed = 0, pinned = 0;
    for (uint32_t e = 0; e < 256; e++) {
        if (!present[e])
            continue;
        table_entry_t *en = table_entry(&h.t, e);
        if (e % 3 == 0) {
            atomic_store(&en->state, ENTRY_SEALED);
            sealed++;
        }
        if (e % 5 == 0) {
            table_pin_set(en, 70);   /* second word */
            en->npin_slots = 1;
            pinned++;
        }
    }
    h.ctl.sealed = (uint32_t)sealed;
    h.ctl.pinned = (uint32_t)pinned;
    CHECK_EQ(table_check(&h.t), STORE_OK);
    table_ctl_t before = h.ctl;
    uint8_t snapshot[256 * 200];
    memcpy(snapshot, h.entries, 256 * table_stride(2) < sizeof snapshot ? 256 * table_stride(2) : sizeof snapshot);

    /* wreck everything but the entries, as a kill mid-operation might */
    memset(h.index, 0xab, table_index_size(256) * sizeof(uint32_t));
    h.ctl.free_head = 3;
    h.ctl.live = h.ctl.sealed = h.ctl.pinned = 12345;
    h.ctl.index_used = h.ctl.index_tombs = 777;
    table_rebuild(&h.t, 128);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    CHECK_EQ(h.ctl.live, before.live);
    CHECK_EQ(h.ctl.sealed, before.sealed);
    CHECK_EQ(h.ctl.pinned, before.pinned);
    CHECK_EQ(h.ctl.index_tombs, 0);
    for (uint32_t e = 0; e < 256; e++) {
        table_entry_t *en = table_entry(&h.t, e);
        if (present[e])
            CHECK_EQ(table_find(&h.t, en->id), e);
    }
    /* pins of slots beyond max_slots are dropped by a rebuild */
    table_rebuild(&h.t, 64);
    CHECK_EQ(h.ctl.pinned, 0);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    ht_free(&h);
}

static void test_rebuild_orphans_duplicates(void)
{
    heap_table_t h;
    ht_init(&h, 16, 1);
    uint32_t a = add(&h, 5);
    /* a second live entry with the same id (never indexed): the rebuild orphans it */
    uint32_t b = table_pop_free(&h.t);
    table_entry_t *eb = table_entry(&h.t, b);
    make_id(eb->id, 5);
    atomic_store(&eb->state, ENTRY_SEALED);
    table_pin_set(eb, 1);
    eb->npin_slots = 1;
    table_rebuild(&h.t, 64);
    CHECK(table_entry(&h.t, b)->flags & ENTRY_UNINDEXED);
    CHECK(table_entry(&h.t, b)->flags & ENTRY_DELETE_PENDING);
    uint8_t id[TABLE_ID_SIZE];
    make_id(id, 5);
    CHECK_EQ(table_find(&h.t, id), a);
    CHECK_EQ(h.ctl.delete_pending, 1);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    /* a garbage state word (below the touched mark: entries above it are never read)
     * becomes FREE */
    uint32_t g = table_pop_free(&h.t);
    atomic_store(&table_entry(&h.t, g)->state, 77);
    table_rebuild(&h.t, 64);
    CHECK_EQ(atomic_load(&table_entry(&h.t, g)->state), ENTRY_FREE);
    CHECK_EQ(table_check(&h.t), STORE_OK);
    ht_free(&h);
}

int main(void)
{
    RUN(test_insert_find_delete);
    RUN(test_collisions_and_tombstones);
    RUN(test_delete_clears_chain_end);
    RUN(test_rebuild_from_entries);
    RUN(test_rebuild_orphans_duplicates);
    CHECK_MAIN_END();
}
