/* table.h -- the object table: fixed entry array + open-addressing hash index.
 *
 * Concept.  The entry array is the single source of truth about objects:
 *
 *     entries[e] = { state, id, sizes, block offset/size, creator slot, flags, pin bits }
 *
 * Everything else -- the hash index, the free-entry list, the counters, and even the
 * allocator's free lists and block headers -- can be rebuilt from it (table_rebuild,
 * and store.c's recovery).  The write order of store.c keeps the array truthful at every
 * instant: an entry becomes live by its `state` word, written last with release
 * semantics (after the block is allocated and every other field is filled); it dies by
 * `state = FREE`, written first.
 *
 *     index (uint32, 2x capacity rounded to a power of two, linear probing)
 *       0          empty
 *       UINT32_MAX tombstone (a deleted key; probing goes on past it)
 *       e + 1      entry e
 *
 * The index holds every live entry except "orphans" (ENTRY_UNINDEXED): objects aborted
 * or whose id was superseded while pins still held their memory.  Deleting a key whose
 * successor slot is empty turns it (and the tombstones before it) back to empty, so a
 * create/delete cycle on one id leaves no tombstones; when live + tombstones pass 3/4 of
 * the index it is rebuilt from the entries.
 *
 * Pins: each entry has one bit per process slot ("this slot holds >= 1 pin") and
 * `npin_slots`, the number of bits set.  Per-process pin counts live in the process's
 * own memory (store.c).  All functions assume the caller holds the store lock.
 */
#ifndef PYGEN_TABLE_H
#define PYGEN_TABLE_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define TABLE_ID_SIZE 20             /* object ids are 20 bytes (like Ray's ObjectID)       */
#define TABLE_NIL UINT32_MAX         /* "no entry"                                           */
#define TABLE_MAX_CAPACITY (4u << 20) /* 4M entries: the index (8M x 4 B) stays at 32 MiB    */
#define TABLE_MIN_CAPACITY 16u

#define INDEX_EMPTY 0u
#define INDEX_TOMB UINT32_MAX

enum entry_state { ENTRY_FREE = 0, ENTRY_CREATED = 1, ENTRY_SEALED = 2 };

enum entry_flags {
    ENTRY_DELETE_PENDING = 1u,  /* delete/abort asked while pinned: freed by the last unpin  */
    ENTRY_UNINDEXED = 2u,       /* not in the index (aborted while its writer pinned it)     */
    ENTRY_RESERVED = 4u,        /* the block's pages are known reserved (may be poisoned)    */
};

typedef struct table_entry {
    _Atomic uint32_t state;   /* enum entry_state; written last on create, first on delete */
    uint32_t creator_slot;
    uint32_t next_free;       /* free-list link while FREE                                  */
    uint32_t flags;           /* enum entry_flags                                           */
    uint32_t npin_slots;      /* popcount of pins[]                                         */
    uint32_t reserved_;
    uint8_t id[TABLE_ID_SIZE];
    uint32_t reserved2_;
    uint64_t data_size;
    uint64_t meta_size;
    uint64_t block_off;       /* arena offset of the block header                          */
    uint64_t block_size;      /* total block size (what the allocator handed out)          */
    uint64_t pins[];          /* pin_words x 64 bits: bit s = slot s holds >= 1 pin          */
} table_entry_t;

/* Table control block, in the segment header (shared memory). */
typedef struct table_ctl {
    uint32_t capacity;        /* number of entries                                          */
    uint32_t pin_words;       /* 64-bit words of pin bits per entry                          */
    uint32_t stride;          /* bytes per entry                                             */
    uint32_t index_size;      /* power of two >= 2 x capacity                                */
    uint32_t free_head;       /* first FREE entry given back, TABLE_NIL if none              */
    uint32_t touched;         /* entries [0, touched) were handed out at least once; the rest
                               * are FREE and still zero pages: never read, never written, so
                               * a big table costs nothing until it is used (on tmpfs even a
                               * read allocates a page)                                     */
    uint32_t live;            /* entries not FREE                                            */
    uint32_t index_used;      /* index slots holding an entry                                */
    uint32_t index_tombs;     /* index slots holding a tombstone                             */
    uint32_t sealed;          /* live entries SEALED                                         */
    uint32_t pinned;          /* live entries with npin_slots > 0                            */
    uint32_t delete_pending;  /* live entries with ENTRY_DELETE_PENDING                      */
    uint32_t reserved_;
} table_ctl_t;

/* Process-local view. */
typedef struct table {
    table_ctl_t *ctl;
    uint8_t *entries;
    uint32_t *index;
} table_t;

/* Bytes of one entry with `pin_words` words of pin bits. */
static inline uint32_t table_stride(uint32_t pin_words)
{
    return (uint32_t)(sizeof(table_entry_t) + 8u * pin_words);
}

/* Index slots for `capacity` entries. */
uint32_t table_index_size(uint32_t capacity);

static inline table_entry_t *table_entry(const table_t *t, uint32_t e)
{
    return (table_entry_t *)(t->entries + (uint64_t)e * t->ctl->stride);
}

static inline int table_pin_test(const table_entry_t *en, uint32_t slot)
{
    return (int)((en->pins[slot >> 6] >> (slot & 63)) & 1u);
}
static inline void table_pin_set(table_entry_t *en, uint32_t slot)
{
    en->pins[slot >> 6] |= 1ull << (slot & 63);
}
static inline void table_pin_clear(table_entry_t *en, uint32_t slot)
{
    en->pins[slot >> 6] &= ~(1ull << (slot & 63));
}

/* Format: every entry FREE and on the free list (low entries first), index empty. */
void table_init(table_t *t, uint32_t capacity, uint32_t pin_words);

/* Entry holding `id` in the index, or TABLE_NIL. */
uint32_t table_find(const table_t *t, const uint8_t *id);

/* Put live entry e (its id already written) in the index.  EXISTS if the id is there. */
int table_index_insert(table_t *t, uint32_t e);

/* Take entry e out of the index.  INVALID if it is not there. */
int table_index_remove(table_t *t, uint32_t e);

/* Rebuild the index from the entries if live + tombstones pass 3/4 of it. */
void table_maybe_rehash(table_t *t);

/* Free-entry list. */
/* No FREE entry left: none given back, none untouched. */
static inline int table_full(const table_t *t)
{
    return t->ctl->free_head == TABLE_NIL && t->ctl->touched >= t->ctl->capacity;
}

uint32_t table_pop_free(table_t *t);
void table_push_free(table_t *t, uint32_t e);

/* Rebuild index, free list and every counter from the entry array alone.  Entries whose
 * state is not FREE/CREATED/SEALED become FREE.  A live entry whose id is already indexed
 * becomes an orphan (UNINDEXED | DELETE_PENDING).  Bits of slots >= max_slots are dropped. */
void table_rebuild(table_t *t, uint32_t max_slots);

/* Verify index, free list and counters against the entries (not the allocator: store.c
 * cross-checks blocks).  0 or STORE_ERR_INVALID with store_last_error(). */
int table_check(const table_t *t);

#endif
