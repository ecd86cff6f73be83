/* store.c -- the store's operations under one robust process-shared lock, process
 * slots, pins, waits, and crash recovery (concept in store.h).
 *
 * Write orders that make recovery possible (the entry array is the truth):
 *   create:  alloc block -> fill entry fields -> state = CREATED (release) -> index insert
 *            -> writer pin
 *   delete:  state = FREE (release) -> index tombstone -> free block -> push entry
 *   abort:   DELETE_PENDING -> index remove -> UNINDEXED   (when a writer pin remains)
 *   pin:     shared bit -> npin_slots / counters           (recovery recounts from bits)
 *   slot:    pid, start time -> in_use = 1; release: pins and objects first -> in_use = 0
 * A kill between any two steps leaves an entry array that recovery turns back into a
 * consistent store: half-allocated or half-freed blocks that no live entry owns become
 * free space again; a half-published entry is either FREE (ignored) or CREATED by a dead
 * slot (aborted when that slot is reaped).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "store_impl.h"
#include "wait.h"

#ifdef PYGEN_DEBUG
#define STORE_DEBUG 1
/* Full invariant checks after every mutating operation, on tables up to this size
 * (larger ones would make debug runs crawl; store_check covers them on demand). */
#define DEBUG_VERIFY_MAX_ENTRIES 65536u
#else
#define STORE_DEBUG 0
#endif


/* ---- processes ----------------------------------------------------------------- */

/* Start time and state of `pid` from /proc; 0 if there is no such process. */
static int proc_stat(uint32_t pid, uint64_t *start_time, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');   /* the command name may hold spaces and parentheses */
    if (!p || p[1] != ' ')
        return 0;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22 && p; field++) {   /* state is field 3, start time 22 */
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    *start_time = p ? strtoull(p, NULL, 10) : 0;
    return 1;
}

static int proc_alive(uint32_t pid, uint64_t start_time)
{
    uint64_t t = 0;
    char state = '?';
    if (pid == 0 || !proc_stat(pid, &t, &state))
        return 0;
    if (state == 'Z' || state == 'X')   /* killed, not yet reaped by its parent */
        return 0;
    return start_time == 0 || t == start_time;
}

/* ---- lock ----------------------------------------------------------------------- */

static void recover_locked(store_t *s);

static int lock(store_t *s)
{
    int r = pthread_mutex_lock(&s->hdr->lock);
    if (__builtin_expect(r == 0, 1))
        return STORE_OK;
    if (r == EOWNERDEAD) {
        /* The owner died inside a critical section: rebuild, then mark consistent. If we
         * die during recovery, the next locker gets EOWNERDEAD and starts over. */
        recover_locked(s);
        pthread_mutex_consistent(&s->hdr->lock);
        return STORE_OK;
    }
    if (r == ENOTRECOVERABLE)
        return store_fail(STORE_ERR_INVALID, "the store's lock is not recoverable");
    return store_fail_sys(r, "pthread_mutex_lock");
}

static inline void unlock(store_t *s) { pthread_mutex_unlock(&s->hdr->lock); }

int store_lock_(store_t *s) { return lock(s); }
void store_unlock_(store_t *s) { unlock(s); }

/* ---- pins and frees (lock held) ------------------------------------------------- */

/* Does this handle still own its slot?  Not if someone released it, taking us for dead
 * (store_release_slot); then we must not pin or create any more. */
static inline int own_slot(const store_t *s)
{
    const slot_rec_t *r = &s->slots[s->slot];
    return r->in_use && r->pid == s->pid;
}

#define SLOT_LOST_MSG "this process's slot %u was released (taken for dead): attach again"


static void pin_locked(store_t *s, uint32_t e)
{
    s->local_pin_total++;
    if (s->local_pins[e]++ == 0) {
        table_entry_t *en = ent(s, e);
        table_pin_set(en, s->slot);
        FAULT_POINT(FAULT_PIN);
        if (en->npin_slots++ == 0)
            s->hdr->table.pinned++;
    }
}

static int free_entry_locked(store_t *s, uint32_t e)
{
    table_entry_t *en = ent(s, e);
    uint32_t st = atomic_load_explicit(&en->state, memory_order_relaxed);
    uint32_t flags = en->flags;
    if (arena_block(&s->arena, en->block_off)->owner != e + 1 ||
        !arena_valid_block(&s->arena, en->block_off))
        return store_fail(STORE_ERR_INVALID, "entry %u: block %llu is not owned by it", e,
                          (unsigned long long)en->block_off);
    atomic_store_explicit(&en->state, ENTRY_FREE, memory_order_release);
    FAULT_POINT(FAULT_DELETE_STATE);
    if (!(flags & ENTRY_UNINDEXED))
        table_index_remove(&s->table, e);
    FAULT_POINT(FAULT_DELETE_UNINDEXED);
    arena_free(&s->arena, en->block_off, s->arena.poison && (flags & ENTRY_RESERVED));
    fp_note_free(s, en->block_off, en->block_size);
    FAULT_POINT(FAULT_DELETE_FREED);
    table_ctl_t *tc = &s->hdr->table;
    tc->live--;
    if (st == ENTRY_SEALED)
        tc->sealed--;
    if (flags & ENTRY_DELETE_PENDING)
        tc->delete_pending--;
    en->flags = 0;
    en->npin_slots = 0;
    table_push_free(&s->table, e);
    return STORE_OK;
}

/* Drop an unsealed object: free now, or orphan it until its last pin goes. */
static int abort_locked(store_t *s, uint32_t e)
{
    table_entry_t *en = ent(s, e);
    if (en->npin_slots == 0)
        return free_entry_locked(s, e);
    if (!(en->flags & ENTRY_DELETE_PENDING)) {
        en->flags |= ENTRY_DELETE_PENDING;
        s->hdr->table.delete_pending++;
    }
    if (!(en->flags & ENTRY_UNINDEXED)) {
        table_index_remove(&s->table, e);
        en->flags |= ENTRY_UNINDEXED;
    }
    return STORE_OK;
}

static int unpin_locked(store_t *s, uint32_t e)
{
    if (s->local_pins[e] == 0)
        return store_fail(STORE_ERR_INVALID, "release of entry %u: this process holds no pin on it", e);
    s->local_pin_total--;
    if (--s->local_pins[e] > 0)
        return STORE_OK;
    table_entry_t *en = ent(s, e);
    if (!table_pin_test(en, s->slot))
        return STORE_OK;   /* our slot was released for us: the shared pin is already gone */
    table_pin_clear(en, s->slot);
    FAULT_POINT(FAULT_UNPIN);
    if (--en->npin_slots == 0) {
        s->hdr->table.pinned--;
        if (en->flags & ENTRY_DELETE_PENDING)
            return free_entry_locked(s, e);
    }
    return STORE_OK;
}

static uint64_t release_slot_locked(store_t *s, uint32_t slot)
{
    table_ctl_t *tc = &s->hdr->table;
    uint64_t dropped = 0;
    for (uint32_t e = 0; e < tc->touched; e++) {
        table_entry_t *en = ent(s, e);
        uint32_t st = atomic_load_explicit(&en->state, memory_order_relaxed);
        if (st == ENTRY_FREE)
            continue;
        if (table_pin_test(en, slot)) {
            table_pin_clear(en, slot);
            dropped++;
            FAULT_POINT(FAULT_RELEASE_SLOT);
            if (--en->npin_slots == 0)
                tc->pinned--;
        }
        if (st == ENTRY_CREATED && en->creator_slot == slot)
            abort_locked(s, e);
        else if (en->npin_slots == 0 && (en->flags & ENTRY_DELETE_PENDING))
            free_entry_locked(s, e);
    }
    if (slot == s->slot) {
        memset(s->local_pins, 0, (size_t)tc->capacity * sizeof(uint32_t));
        s->local_pin_total = 0;
    }
    slot_rec_t *r = &s->slots[slot];
    if (r->in_use) {
        r->in_use = 0;
        s->hdr->slots_in_use--;
    }
    r->pid = 0;
    r->start_time = 0;
    return dropped;
}

static uint32_t reap_locked(store_t *s)
{
    uint32_t reaped = 0;
    for (uint32_t i = 0; i < s->hdr->max_slots; i++) {
        slot_rec_t *r = &s->slots[i];
        if (r->in_use && i != s->slot && !proc_alive(r->pid, r->start_time)) {
            release_slot_locked(s, i);
            reaped++;
        }
    }
    return reaped;
}

/* ---- recovery (lock held, its previous owner dead) ------------------------------ */

static int cmp_block_off(const void *a, const void *b, void *ctx)
{
    store_t *s = ctx;
    uint64_t x = ent(s, *(const uint32_t *)a)->block_off;
    uint64_t y = ent(s, *(const uint32_t *)b)->block_off;
    return x < y ? -1 : x > y;
}

static void recover_locked(store_t *s)
{
    store_hdr_t *h = s->hdr;
    table_ctl_t *tc = &h->table;
    uint64_t asize = h->arena.size;

    /* Which slots exist: pin bits of free slots are stale (dropped below). */
    uint64_t in_use[STORE_MAX_SLOTS / 64] = {0};
    for (uint32_t i = 0; i < h->max_slots; i++)
        if (s->slots[i].in_use)
            in_use[i >> 6] |= 1ull << (i & 63);

    /* 1. Keep only live entries whose fields describe a plausible block; list them in
     *    the index's memory (it is rebuilt below anyway: no allocation in recovery). */
    uint32_t *order = s->table.index;
    uint32_t nlive = 0;
    for (uint32_t e = 0; e < tc->touched; e++) {
        table_entry_t *en = ent(s, e);
        uint32_t st = atomic_load_explicit(&en->state, memory_order_acquire);
        if (st != ENTRY_CREATED && st != ENTRY_SEALED)
            continue;
        uint64_t need = ARENA_HEADER + align_up(en->data_size, ARENA_ALIGN) + en->meta_size;
        int ok = en->block_off % ARENA_ALIGN == 0 && en->block_size % ARENA_ALIGN == 0 &&
                 en->block_size >= ARENA_MIN_BLOCK && en->block_off < asize &&
                 en->block_size <= asize - en->block_off && en->creator_slot < h->max_slots &&
                 en->data_size <= asize && en->meta_size <= asize && need <= en->block_size;
        if (!ok) {
            atomic_store_explicit(&en->state, ENTRY_FREE, memory_order_release);
            continue;
        }
        for (uint32_t w = 0; w < tc->pin_words; w++)
            en->pins[w] &= in_use[w];
        order[nlive++] = e;
    }
    qsort_r(order, nlive, sizeof *order, cmp_block_off, s);

    /* 2. The allocator, from the live blocks: gaps become maximal free blocks. */
    arena_rebuild_begin(&s->arena);
    for (uint32_t i = 0; i < nlive; i++) {
        table_entry_t *en = ent(s, order[i]);
        if (i == nlive / 2)
            FAULT_POINT(FAULT_RECOVER);
        if (arena_rebuild_add(&s->arena, en->block_off, en->block_size, order[i] + 1) != STORE_OK)
            atomic_store_explicit(&en->state, ENTRY_FREE, memory_order_release);   /* overlaps */
    }
    arena_rebuild_end(&s->arena);

    /* 3. Index, free-entry list, counters (the commit map's too: its bits never lie). */
    table_rebuild(&s->table, h->max_slots);
    commit_recount(&s->commit);

    /* 4. Deletes that were waiting for a pin that is now gone. */
    for (uint32_t e = 0; e < tc->touched; e++) {
        table_entry_t *en = ent(s, e);
        if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_FREE &&
            (en->flags & ENTRY_DELETE_PENDING) && en->npin_slots == 0)
            free_entry_locked(s, e);
    }

    /* 5. The dead owner's slot (and any other dead one): pins and unsealed objects. */
    uint32_t n = 0;
    for (uint32_t i = 0; i < h->max_slots; i++)
        n += s->slots[i].in_use != 0;
    h->slots_in_use = n;
    reap_locked(s);
    h->recoveries++;

    /* 6. A seal may have happened without its wake-up: wake every waiter to re-check. */
    atomic_fetch_add(&h->seal_seq, 1);
    wait_wake_all(&h->seal_seq);
}

/* ---- debug verification --------------------------------------------------------- */

static int check_locked(store_t *s, store_report_t *out);

#if STORE_DEBUG
static int debug_verify(store_t *s, int rc)
{
    if (rc != STORE_OK || s->hdr->table.capacity > DEBUG_VERIFY_MAX_ENTRIES)
        return rc;
    return check_locked(s, NULL);
}
#else
#define debug_verify(s, rc) (rc)
#endif

/* ---- reservation hook for the allocator ----------------------------------------- */

static int reserve_hook(void *ctx, uint64_t off, uint64_t len)
{
    store_t *s = ctx;
    if (commit_covers(&s->commit, off, len))
        return STORE_OK;
    /* Only the header's page: it stays reserved as long as a header lives there, since a
     * punch never takes the page of a free block's header (commit.h). */
    uint64_t start = off & ~(RESERVE_PAGE - 1), end = align_up(off + len, RESERVE_PAGE);
    return reserve_range(s->seg.fd, s->hdr->arena_off + start, end - start);
}

/* ---- opening and closing -------------------------------------------------------- */

static int claim_slot_locked(store_t *s)
{
    uint64_t start = 0;
    char state;
    proc_stat(s->pid, &start, &state);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < s->hdr->max_slots; i++) {
            slot_rec_t *r = &s->slots[i];
            if (r->in_use)
                continue;
            r->pid = s->pid;
            r->start_time = start;
            r->in_use = 1;
            s->hdr->slots_in_use++;
            s->slot = i;
            return STORE_OK;
        }
        s->slot = UINT32_MAX;
        if (pass == 0 && reap_locked(s) == 0)
            break;
    }
    return store_fail(STORE_ERR_NO_SLOT, "all %u process slots of the store are in use",
                      s->hdr->max_slots);
}

/* Fill the process-local views once the header is valid. */
static int bind_views(store_t *s)
{
    store_hdr_t *h = s->hdr;
    s->slots = (slot_rec_t *)(s->seg.base + h->slots_off);
    s->table.ctl = &h->table;
    s->table.entries = s->seg.base + h->entries_off;
    s->table.index = (uint32_t *)(s->seg.base + h->index_off);
    s->arena.ctl = &h->arena;
    s->arena.base = s->seg.base + h->arena_off;
    s->arena.reserve = reserve_hook;
    s->arena.reserve_ctx = s;
    s->arena.poison = STORE_DEBUG;
    commit_bind(&s->commit, &h->commit, s->seg.base + h->commit_off, h->arena.size, 0);
    s->pid = (uint32_t)getpid();
    return STORE_OK;
}

/* This handle's pin counts, one per entry (calloc: untouched pages cost no memory). */
static int alloc_local_pins(store_t *s)
{
    uint32_t cap = s->hdr->table.capacity;
    s->local_pins = calloc(cap ? cap : 1, sizeof(uint32_t));
    if (!s->local_pins)
        return store_fail_sys(ENOMEM, "pin counts for %u entries", cap);
    return STORE_OK;
}

static void destroy(store_t *s)
{
    fp_stop_threads(s);
    shm_close(&s->seg);
    free(s->local_pins);
    free(s);
}

/* Unmapping a segment and closing the last descriptor of a file holding many pages is
 * kernel work in proportion to the pages (here, with 2 GiB stored: munmap ~180 ms, the
 * last close freeing the pages ~300 ms).  Above DETACH_RELEASE bytes held, store_close
 * leaves that to a detached thread and returns: the memory goes back moments later.
 * Below, a close costs ~50 ms at most and stays synchronous (a caller may count on its
 * descriptor being gone). */
#define DETACH_RELEASE (256ull << 20)

static _Atomic int releases_running;

static void *release_main(void *arg)
{
    destroy(arg);
    atomic_fetch_sub(&releases_running, 1);
    return NULL;
}

static void destroy_soon(store_t *s)
{
    fp_stop_threads(s);
    struct stat st;
    if (fstat(s->seg.fd, &st) == 0 && (uint64_t)st.st_blocks * 512u > DETACH_RELEASE) {
        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&releases_running, 1);
        int r = pthread_create(&t, &attr, release_main, s);
        pthread_attr_destroy(&attr);
        if (r == 0)
            return;
        atomic_fetch_sub(&releases_running, 1);
    }
    destroy(s);
}

int store_release_wait(int64_t timeout_ns)
{
    int64_t deadline = timeout_ns < 0 ? -1 : wait_now_ns() + timeout_ns;
    while (atomic_load(&releases_running) > 0) {
        if (deadline >= 0 && wait_now_ns() >= deadline)
            return STORE_ERR_TIMEOUT;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return STORE_OK;
}

int store_create(const store_options_t *opt, store_t **out)
{
    *out = NULL;
    if (opt->capacity < STORE_MIN_CAPACITY || opt->capacity > ARENA_MAX_SIZE)
        return store_fail(STORE_ERR_INVALID, "capacity %llu out of range [%llu, 2^47]",
                          (unsigned long long)opt->capacity, STORE_MIN_CAPACITY);
    uint32_t max_slots = opt->max_slots ? opt->max_slots : STORE_DEFAULT_MAX_SLOTS;
    if (max_slots > STORE_MAX_SLOTS)
        return store_fail(STORE_ERR_INVALID, "max_slots %u above %u", max_slots, STORE_MAX_SLOTS);
    uint64_t arena_size = align_up(opt->capacity, RESERVE_PAGE);
    uint64_t cap = opt->max_objects;
    if (cap == 0) {
        cap = arena_size / STORE_BYTES_PER_ENTRY;
        if (cap < STORE_MIN_DEFAULT_OBJECTS)
            cap = STORE_MIN_DEFAULT_OBJECTS;
        if (cap > TABLE_MAX_CAPACITY)
            cap = TABLE_MAX_CAPACITY;
    }
    if (cap > TABLE_MAX_CAPACITY)
        return store_fail(STORE_ERR_INVALID, "max_objects %llu above %u", (unsigned long long)cap,
                          TABLE_MAX_CAPACITY);
    uint32_t pin_words = (max_slots + 63) / 64;
    uint64_t stride = table_stride(pin_words);
    uint64_t slots_off = align_up(sizeof(store_hdr_t), RESERVE_PAGE);
    uint64_t entries_off = align_up(slots_off + (uint64_t)max_slots * sizeof(slot_rec_t), 64);
    uint64_t index_off = align_up(entries_off + cap * stride, 64);
    uint64_t commit_off = align_up(index_off + (uint64_t)table_index_size((uint32_t)cap) * 4, 64);
    uint64_t arena_off = align_up(commit_off + commit_map_bytes(arena_size), RESERVE_PAGE);
    uint64_t total = arena_off + arena_size;

    shm_sweep_stale(SHM_DIR, NULL);
    store_t *s = calloc(1, sizeof *s);
    if (!s)
        return store_fail_sys(ENOMEM, "store handle");
    int rc = shm_create(opt->name, total, &s->seg);
    if (rc != STORE_OK) {
        free(s);
        return rc;
    }
    /* The tables and the arena's first chunk (its first header) are written at once:
     * reserve them now.  The rest of the arena waits for use (footprint.c). */
    uint64_t first = arena_size < COMMIT_CHUNK ? arena_size : COMMIT_CHUNK;
    rc = reserve_range(s->seg.fd, 0, arena_off + first);
    if (rc != STORE_OK) {
        shm_unlink_path(s->seg.path);
        destroy(s);
        return rc;
    }
    store_hdr_t *h = s->hdr = (store_hdr_t *)s->seg.base;
    h->magic = STORE_MAGIC;
    h->version = STORE_VERSION;
    h->total_size = total;
    h->slots_off = slots_off;
    h->entries_off = entries_off;
    h->index_off = index_off;
    h->commit_off = commit_off;
    h->arena_off = arena_off;
    h->max_slots = max_slots;
    h->creator_pid = (uint32_t)getpid();

    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    int r = pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    if (r != 0) {
        shm_unlink_path(s->seg.path);
        destroy(s);
        return store_fail_sys(r, "pthread_mutex_init");
    }
    h->arena.size = arena_size;   /* bind_views sizes the commit map by it */
    commit_bind(&s->commit, &h->commit, s->seg.base + commit_off, arena_size, 1);
    bind_views(s);
    table_init(&s->table, (uint32_t)cap, pin_words);
    arena_init(&s->arena, arena_size);
    commit_set(&s->commit, 0, 1, commit_now_ms());
    fp_format(s, opt);
    if ((rc = alloc_local_pins(s)) != STORE_OK) {
        shm_unlink_path(s->seg.path);
        destroy(s);
        return rc;
    }
    s->creator = 1;
    claim_slot_locked(s);   /* nobody else can see the segment yet: no lock needed */
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    if (opt->prefault)
        fp_start_threads(s);
    *out = s;
    return STORE_OK;
}

static int attach_mapped(store_t *s, int prefault, store_t **out)
{
    store_hdr_t *h = s->hdr = (store_hdr_t *)s->seg.base;
    int rc;
    if (s->seg.size < sizeof(store_hdr_t) || h->magic != STORE_MAGIC)
        rc = store_fail(STORE_ERR_INVALID, "%s is not a pygen object store", s->seg.path);
    else if (h->version != STORE_VERSION)
        rc = store_fail(STORE_ERR_INVALID, "store version %u, this build knows %u", h->version,
                        STORE_VERSION);
    else if (!atomic_load_explicit(&h->ready, memory_order_acquire))
        rc = store_fail(STORE_ERR_INVALID, "store %s is not initialised yet", s->seg.path);
    else if (h->total_size != s->seg.size || h->arena_off + h->arena.size != h->total_size ||
             h->commit_off + commit_map_bytes(h->arena.size) > h->arena_off)
        rc = store_fail(STORE_ERR_INVALID, "store %s: size %llu does not match its header",
                        s->seg.path, (unsigned long long)s->seg.size);
    else if ((rc = bind_views(s)) == STORE_OK)
        rc = alloc_local_pins(s);
    if (rc == STORE_OK && (rc = lock(s)) == STORE_OK) {
        rc = claim_slot_locked(s);
        unlock(s);
    }
    if (rc != STORE_OK) {
        destroy(s);
        return rc;
    }
    (void)prefault;   /* only the creator runs threads; a process maps what it touches */
    *out = s;
    return STORE_OK;
}

int store_attach(const char *name, int prefault, store_t **out)
{
    *out = NULL;
    store_t *s = calloc(1, sizeof *s);
    if (!s)
        return store_fail_sys(ENOMEM, "store handle");
    int rc = shm_attach_path(name, &s->seg);
    if (rc != STORE_OK) {
        free(s);
        return rc;
    }
    return attach_mapped(s, prefault, out);
}

int store_attach_fd(int fd, int prefault, store_t **out)
{
    *out = NULL;
    store_t *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return store_fail_sys(ENOMEM, "store handle");
    }
    int rc = shm_attach_fd(fd, &s->seg);
    if (rc != STORE_OK) {
        free(s);
        return rc;
    }
    return attach_mapped(s, prefault, out);
}

int store_close(store_t *s)
{
    if (!s)
        return STORE_OK;
    fp_stop_threads(s);
    int rc = lock(s);
    if (rc == STORE_OK) {
        /* Our slot may have been released for us (someone took us for dead) and reused. */
        slot_rec_t *r = &s->slots[s->slot];
        if (r->in_use && r->pid == s->pid)
            release_slot_locked(s, s->slot);
        unlock(s);
    }
    destroy_soon(s);
    return rc;
}

int store_unlink(store_t *s) { return s->seg.path[0] ? shm_unlink_path(s->seg.path) : STORE_OK; }

int store_unlink_name(const char *name)
{
    if (!name || !name[0] || !strchr(name, '/'))
        return store_fail(STORE_ERR_INVALID, "unlink needs the segment's path");
    return shm_unlink_path(name);
}

int store_debug_build(void) { return STORE_DEBUG; }

const char *store_name(const store_t *s) { return s->seg.path; }
int store_fd(const store_t *s) { return s->seg.fd; }
uint32_t store_slot(const store_t *s) { return s->slot; }
uint64_t store_capacity(const store_t *s) { return s->hdr->arena.size; }
int store_is_creator(const store_t *s) { return s->creator; }
uint32_t store_max_slots(const store_t *s) { return s->hdr->max_slots; }

/* ---- objects -------------------------------------------------------------------- */

static void fill_obj(store_t *s, uint32_t e, store_obj_t *out)
{
    table_entry_t *en = ent(s, e);
    out->entry = e;
    out->data = s->arena.base + en->block_off + ARENA_HEADER;
    out->data_size = en->data_size;
    out->meta = out->data + align_up(en->data_size, ARENA_ALIGN);
    out->meta_size = en->meta_size;
}

int store_create_object(store_t *s, const uint8_t *id, uint64_t data_size, uint64_t meta_size,
                        store_obj_t *out)
{
    uint64_t asize = s->hdr->arena.size;
    if (data_size > asize || meta_size > asize ||
        ARENA_HEADER + align_up(data_size, ARENA_ALIGN) + meta_size > asize)
        return STORE_ERR_TOO_LARGE;   /* decided without the lock: the size never changes */
    uint64_t bsize = arena_block_size_for(align_up(data_size, ARENA_ALIGN) + meta_size);

    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    table_t *t = &s->table;
    if (!own_slot(s)) {
        unlock(s);
        return store_fail(STORE_ERR_INVALID, SLOT_LOST_MSG, s->slot);
    }
    if (table_find(t, id) != TABLE_NIL) {
        unlock(s);
        return STORE_ERR_EXISTS;
    }
    if (table_full(t)) {
        unlock(s);
        return STORE_ERR_TABLE_FULL;
    }
    table_maybe_rehash(t);
    uint64_t off, got, top = s->hdr->arena.top;
    rc = arena_alloc(&s->arena, bsize, &off, &got);
    if (rc != STORE_OK) {
        unlock(s);
        return rc;
    }
    uint32_t e = table_pop_free(t);
    table_entry_t *en = ent(s, e);
    /* Which of the block's chunks still need memory (reserved below, outside the lock),
     * and did the block come off the wilderness (the warm window moves up then)? */
    fp_need_t need;
    fp_block_need(s, off, got, &need);
    int reserved = need.nruns == 0 && !need.whole;
    uint32_t now = commit_now_ms();
    int wake_warmer = off == top && fp_note_growth(s, got, now);
    memcpy(en->id, id, TABLE_ID_SIZE);
    en->data_size = data_size;
    en->meta_size = meta_size;
    en->block_off = off;
    en->block_size = got;
    en->creator_slot = s->slot;
    en->flags = reserved ? ENTRY_RESERVED : 0;
    en->npin_slots = 0;
    memset(en->pins, 0, 8u * t->ctl->pin_words);
    arena_block(&s->arena, off)->owner = e + 1;
    FAULT_POINT(FAULT_CREATE_FILLED);
    atomic_store_explicit(&en->state, ENTRY_CREATED, memory_order_release);
    FAULT_POINT(FAULT_CREATE_PUBLISHED);
    table_index_insert(t, e);
    FAULT_POINT(FAULT_CREATE_INDEXED);
    t->ctl->live++;
    pin_locked(s, e);
    fill_obj(s, e, out);
    rc = debug_verify(s, STORE_OK);
    unlock(s);
    if (wake_warmer)
        fp_wake_warmer(s);
    if (rc != STORE_OK)
        return rc;

    if (!reserved) {
        /* Reserve the block's chunks before anyone writes it (outside the lock:
         * fallocate of a big block takes a while).  While the block is allocated no
         * punch can touch a chunk it overlaps, so the reservation holds. */
        rc = fp_block_reserve(s, &need, off, got);
        FAULT_POINT(FAULT_CREATE_RESERVED);
        int lrc = lock(s);
        if (lrc != STORE_OK)
            return lrc;
        if (rc == STORE_OK) {
            if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_FREE && en->block_off == off)
                fp_block_commit(s, &need, commit_now_ms());
            en->flags |= ENTRY_RESERVED;
        } else {
            unpin_locked(s, e);
            if (atomic_load_explicit(&en->state, memory_order_relaxed) == ENTRY_CREATED && en->npin_slots == 0)
                free_entry_locked(s, e);
            if (rc == STORE_ERR_NOSPC)
                store_fail(STORE_ERR_NOSPC,
                           "/dev/shm is full: cannot reserve %llu bytes for an object (free space "
                           "in /dev/shm ran out after the store was created)", (unsigned long long)got);
        }
        unlock(s);
        if (rc != STORE_OK)
            return rc;
    }
    return STORE_OK;
}

int store_seal(store_t *s, const uint8_t *id)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    uint32_t e = table_find(&s->table, id);
    if (e == TABLE_NIL) {
        unlock(s);
        return STORE_ERR_ABSENT;
    }
    table_entry_t *en = ent(s, e);
    if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_CREATED) {
        unlock(s);
        return store_fail(STORE_ERR_INVALID, "object is already sealed");
    }
    if (en->creator_slot != s->slot) {
        unlock(s);
        return store_fail(STORE_ERR_INVALID, "object was created by slot %u; slot %u cannot seal it",
                          en->creator_slot, s->slot);
    }
    atomic_store_explicit(&en->state, ENTRY_SEALED, memory_order_release);
    FAULT_POINT(FAULT_SEAL);
    s->hdr->table.sealed++;
    atomic_fetch_add_explicit(&s->hdr->seal_seq, 1, memory_order_release);
    rc = debug_verify(s, STORE_OK);
    unlock(s);
    if (atomic_load(&s->hdr->waiters) != 0)
        wait_wake_all(&s->hdr->seal_seq);
    return rc;
}

int store_abort(store_t *s, const uint8_t *id)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    uint32_t e = table_find(&s->table, id);
    if (e == TABLE_NIL) {
        rc = STORE_ERR_ABSENT;
    } else if (atomic_load_explicit(&ent(s, e)->state, memory_order_relaxed) != ENTRY_CREATED) {
        rc = store_fail(STORE_ERR_INVALID, "object is sealed: delete it, it cannot be aborted");
    } else if (ent(s, e)->creator_slot != s->slot) {
        rc = store_fail(STORE_ERR_INVALID, "object was created by slot %u; slot %u cannot abort it",
                        ent(s, e)->creator_slot, s->slot);
    } else {
        rc = debug_verify(s, abort_locked(s, e));
    }
    unlock(s);
    return rc;
}

/* One look at `id` under the lock: OK (pinned and mapped if `out`), ABSENT or NOT_SEALED.
 * *seq: the seal counter as of the look. */
static int look_locked(store_t *s, const uint8_t *id, store_obj_t *out, uint32_t *seq)
{
    *seq = atomic_load_explicit(&s->hdr->seal_seq, memory_order_acquire);
    uint32_t e = table_find(&s->table, id);
    if (e == TABLE_NIL)
        return STORE_ERR_ABSENT;
    table_entry_t *en = ent(s, e);
    if (en->flags & ENTRY_DELETE_PENDING)
        return STORE_ERR_ABSENT;
    if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_SEALED)
        return STORE_ERR_NOT_SEALED;
    if (out) {
        if (!own_slot(s))
            return store_fail(STORE_ERR_INVALID, SLOT_LOST_MSG, s->slot);
        pin_locked(s, e);
        fill_obj(s, e, out);
    }
    return STORE_OK;
}

static int get_or_wait(store_t *s, const uint8_t *id, int64_t timeout_ns, store_obj_t *out)
{
    int64_t deadline = timeout_ns < 0 ? -1 : timeout_ns == 0 ? 0 : wait_now_ns() + timeout_ns;
    int registered = 0, rc;
    for (;;) {
        uint32_t seq;
        if ((rc = lock(s)) != STORE_OK)
            break;
        rc = look_locked(s, id, out, &seq);
        if (rc == STORE_OK && out)
            rc = debug_verify(s, rc);
        unlock(s);
        if (rc == STORE_OK || timeout_ns == 0 || (rc != STORE_ERR_ABSENT && rc != STORE_ERR_NOT_SEALED))
            break;
        if (!registered) {
            /* Count ourselves as a waiter, then look again: a seal between the two looks
             * sees the count and wakes us (see store_seal). */
            atomic_fetch_add(&s->hdr->waiters, 1);
            registered = 1;
            continue;
        }
        if (wait_change(&s->hdr->seal_seq, seq, deadline) == STORE_ERR_TIMEOUT) {
            rc = STORE_ERR_TIMEOUT;
            break;
        }
    }
    if (registered)
        atomic_fetch_sub(&s->hdr->waiters, 1);
    return rc;
}

int store_get(store_t *s, const uint8_t *id, int64_t timeout_ns, store_obj_t *out)
{
    return get_or_wait(s, id, timeout_ns, out);
}

int store_wait_sealed(store_t *s, const uint8_t *id, int64_t timeout_ns)
{
    int rc = get_or_wait(s, id, timeout_ns, NULL);
    return rc == STORE_ERR_ABSENT || rc == STORE_ERR_NOT_SEALED ? STORE_ERR_TIMEOUT : rc;
}

int store_release(store_t *s, uint32_t e, const uint8_t *id)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    if (e >= s->hdr->table.capacity ||
        atomic_load_explicit(&ent(s, e)->state, memory_order_relaxed) == ENTRY_FREE ||
        memcmp(ent(s, e)->id, id, TABLE_ID_SIZE) != 0)
        rc = store_fail(STORE_ERR_INVALID, "release: entry %u does not hold this object", e);
    else
        rc = debug_verify(s, unpin_locked(s, e));
    unlock(s);
    return rc;
}

int store_delete(store_t *s, const uint8_t *id, int *freed_now)
{
    *freed_now = 0;
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    uint32_t e = table_find(&s->table, id);
    table_entry_t *en = e == TABLE_NIL ? NULL : ent(s, e);
    if (!en || (en->flags & ENTRY_DELETE_PENDING)) {
        rc = STORE_ERR_ABSENT;
    } else if (atomic_load_explicit(&en->state, memory_order_relaxed) != ENTRY_SEALED) {
        rc = STORE_ERR_NOT_SEALED;
    } else if (en->npin_slots == 0) {
        rc = debug_verify(s, free_entry_locked(s, e));
        *freed_now = rc == STORE_OK;
    } else {
        en->flags |= ENTRY_DELETE_PENDING;
        s->hdr->table.delete_pending++;
        rc = debug_verify(s, STORE_OK);
    }
    unlock(s);
    return rc;
}

int store_contains(store_t *s, const uint8_t *id, int *present)
{
    *present = 0;
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    uint32_t seq;
    *present = look_locked(s, id, NULL, &seq) == STORE_OK;
    unlock(s);
    return STORE_OK;
}

int store_info(store_t *s, const uint8_t *id, store_info_t *out, uint64_t *pin_bits, size_t pin_words)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    uint32_t e = table_find(&s->table, id);
    if (e == TABLE_NIL) {
        unlock(s);
        return STORE_ERR_ABSENT;
    }
    table_entry_t *en = ent(s, e);
    out->state = atomic_load_explicit(&en->state, memory_order_relaxed);
    out->creator_slot = en->creator_slot;
    out->data_size = en->data_size;
    out->meta_size = en->meta_size;
    out->offset = s->hdr->arena_off + en->block_off + ARENA_HEADER;
    out->npin_slots = en->npin_slots;
    out->pins_here = s->local_pins[e];
    out->delete_pending = (en->flags & ENTRY_DELETE_PENDING) != 0;
    if (pin_bits) {
        for (size_t w = 0; w < pin_words; w++)
            pin_bits[w] = w < s->hdr->table.pin_words ? en->pins[w] : 0;
    }
    unlock(s);
    return STORE_OK;
}

int store_stats(store_t *s, store_stats_t *out)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    store_hdr_t *h = s->hdr;
    memset(out, 0, sizeof *out);
    out->capacity = h->arena.size;
    out->used = h->arena.used;
    out->free = h->arena.size - h->arena.used;
    out->largest_free = arena_largest_free(&s->arena);
    out->objects = h->table.live;
    out->sealed = h->table.sealed;
    out->pinned = h->table.pinned;
    out->delete_pending = h->table.delete_pending;
    out->slots_in_use = h->slots_in_use;
    out->max_slots = h->max_slots;
    out->max_objects = h->table.capacity;
    out->recoveries = h->recoveries;
    out->blocks = h->arena.alloc_blocks + h->arena.free_blocks;
    out->free_blocks = h->arena.free_blocks;
    out->pins_here = s->local_pin_total;
    out->segment_size = h->total_size;
    fp_stats(s, out);
    unlock(s);
    return STORE_OK;
}

int store_list(store_t *s, uint8_t *ids, size_t cap, size_t *n)
{
    *n = 0;
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    size_t k = 0;
    for (uint32_t e = 0; e < s->hdr->table.touched; e++) {
        table_entry_t *en = ent(s, e);
        if (atomic_load_explicit(&en->state, memory_order_relaxed) == ENTRY_FREE ||
            (en->flags & ENTRY_UNINDEXED))
            continue;
        if (k < cap)
            memcpy(ids + k * TABLE_ID_SIZE, en->id, TABLE_ID_SIZE);
        k++;
    }
    *n = k;
    unlock(s);
    return STORE_OK;
}

/* ---- slots ---------------------------------------------------------------------- */

int store_slots(store_t *s, store_slot_info_t *out, size_t cap, size_t *n)
{
    *n = 0;
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    size_t k = 0;
    for (uint32_t i = 0; i < s->hdr->max_slots; i++) {
        if (!s->slots[i].in_use)
            continue;
        if (k < cap) {
            out[k].slot = i;
            out[k].pid = s->slots[i].pid;
        }
        k++;
    }
    *n = k;
    unlock(s);
    return STORE_OK;
}

int store_release_slot(store_t *s, uint32_t slot, uint32_t pid, uint64_t *dropped)
{
    *dropped = 0;
    if (slot >= s->hdr->max_slots)
        return store_fail(STORE_ERR_INVALID, "slot %u out of range (max %u)", slot, s->hdr->max_slots);
    if (slot == s->slot)
        return store_fail(STORE_ERR_INVALID, "slot %u is this process's own: close the store instead", slot);
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    if (s->slots[slot].in_use && (pid == 0 || s->slots[slot].pid == pid))
        *dropped = release_slot_locked(s, slot);
    rc = debug_verify(s, STORE_OK);
    unlock(s);
    return rc;
}

int store_reap(store_t *s, uint32_t *reaped)
{
    *reaped = 0;
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    *reaped = reap_locked(s);
    unlock(s);
    return STORE_OK;
}

/* ---- checks and hooks ----------------------------------------------------------- */

static int check_locked(store_t *s, store_report_t *out)
{
    store_hdr_t *h = s->hdr;
    arena_report_t ar;
    int rc = arena_check(&s->arena, &ar);
    if (rc != STORE_OK)
        return rc;
    if ((rc = table_check(&s->table)) != STORE_OK)
        return rc;
    if ((rc = fp_check(s)) != STORE_OK)
        return rc;
    table_ctl_t *tc = &h->table;
    uint64_t used = 0, local_total = 0;
    uint32_t live = 0;
    uint64_t slot_mask[STORE_MAX_SLOTS / 64] = {0};
    uint32_t nslots = 0;
    for (uint32_t i = 0; i < h->max_slots; i++)
        if (s->slots[i].in_use) {
            slot_mask[i >> 6] |= 1ull << (i & 63);
            nslots++;
        }
    if (nslots != h->slots_in_use)
        return store_fail(STORE_ERR_INVALID, "slots: %u in use, counter says %u", nslots, h->slots_in_use);
    if (!s->slots[s->slot].in_use || s->slots[s->slot].pid != s->pid)
        return store_fail(STORE_ERR_INVALID, "slots: this process's slot %u is not its own", s->slot);
    for (uint32_t e = 0; e < tc->touched; e++) {
        table_entry_t *en = ent(s, e);
        local_total += s->local_pins[e];
        if (atomic_load_explicit(&en->state, memory_order_relaxed) == ENTRY_FREE) {
            if (s->local_pins[e])
                return store_fail(STORE_ERR_INVALID, "pins: this process pins free entry %u", e);
            continue;
        }
        live++;
        if (!arena_valid_block(&s->arena, en->block_off))
            return store_fail(STORE_ERR_INVALID, "entry %u: offset %llu is not a block", e,
                              (unsigned long long)en->block_off);
        arena_block_t *b = arena_block(&s->arena, en->block_off);
        if (b->size_flags & ARENA_FREE_BIT)
            return store_fail(STORE_ERR_INVALID, "entry %u: its block %llu is free", e,
                              (unsigned long long)en->block_off);
        if ((b->size_flags & ARENA_SIZE_MASK) != en->block_size || b->owner != e + 1)
            return store_fail(STORE_ERR_INVALID, "entry %u: block %llu has size %llu owner %u, entry says %llu",
                              e, (unsigned long long)en->block_off,
                              (unsigned long long)(b->size_flags & ARENA_SIZE_MASK), b->owner,
                              (unsigned long long)en->block_size);
        if (ARENA_HEADER + align_up(en->data_size, ARENA_ALIGN) + en->meta_size > en->block_size)
            return store_fail(STORE_ERR_INVALID, "entry %u: sizes do not fit its block", e);
        used += en->block_size;
        for (uint32_t w = 0; w < tc->pin_words; w++)
            if (en->pins[w] & ~slot_mask[w])
                return store_fail(STORE_ERR_INVALID, "entry %u: pinned by a slot not in use", e);
        if ((s->local_pins[e] > 0) != table_pin_test(en, s->slot))
            return store_fail(STORE_ERR_INVALID, "entry %u: this process counts %u pins, its bit says %d",
                              e, s->local_pins[e], table_pin_test(en, s->slot));
    }
    if (used != ar.used || live != ar.alloc_blocks)
        return store_fail(STORE_ERR_INVALID,
                          "arena holds %llu allocated blocks (%llu bytes), live entries own %u (%llu bytes)",
                          (unsigned long long)ar.alloc_blocks, (unsigned long long)ar.used, live,
                          (unsigned long long)used);
    if (local_total != s->local_pin_total)
        return store_fail(STORE_ERR_INVALID, "pins: counts sum to %llu, total says %llu",
                          (unsigned long long)local_total, (unsigned long long)s->local_pin_total);
    if (out) {
        out->blocks = ar.blocks;
        out->alloc_blocks = ar.alloc_blocks;
        out->free_blocks = ar.free_blocks;
        out->used = ar.used;
        out->free_bytes = ar.free_bytes;
        out->largest_free = ar.largest_free;
        out->objects = tc->live;
        out->sealed = tc->sealed;
        out->pinned = tc->pinned;
        out->delete_pending = tc->delete_pending;
        out->slots_in_use = h->slots_in_use;
    }
    return STORE_OK;
}

int store_check(store_t *s, store_report_t *out)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    rc = check_locked(s, out);
    unlock(s);
    return rc;
}

int store_debug_hold_lock(store_t *s, uint32_t ms)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000l};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    unlock(s);
    return STORE_OK;
}

int store_debug_recover(store_t *s)
{
    int rc = lock(s);
    if (rc != STORE_OK)
        return rc;
    recover_locked(s);
    unlock(s);
    return STORE_OK;
}
