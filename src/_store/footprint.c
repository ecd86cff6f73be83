/* footprint.c -- memory follows use: the arena takes shared memory as objects need it
 * and gives it back when it stays free.
 *
 *            high-water mark (arena.top)
 *                 |<-- warm window -->|
 *   +-------------+-------------------+----------------------------------------------+
 *   | blocks in   | reserved + mapped | holes: nothing reserved (the wilderness)       |
 *   | use, holes  | by the warmer     |                                                |
 *   +-------------+-------------------+----------------------------------------------+
 *
 * Taking.  An object's block reserves the chunks it overlaps that are not committed yet
 * (store_create_object, outside the lock).  Ahead of that, the creator's *warmer* thread
 * (SCHED_IDLE: it only ever runs on idle CPU) keeps the window above the high-water mark
 * reserved and mapped in its process, so the next blocks split off the wilderness are
 * warm.  The window is window_min for a store at rest and grows with use: an allocation
 * of n bytes from the wilderness raises it to 2n (at most window_max); twice the purge
 * delay without such an allocation brings it back to window_min.
 *
 * Giving back.  Freed blocks stamp their chunks.  The creator's *trimmer* thread (normal
 * priority: giving memory back is not optional, and it costs ~0.2 ms per MiB) looks for
 * committed chunks lying wholly inside free blocks (past the header page, see commit.h),
 * outside the window, idle for purge_delay_ms; it clears their bits and punches them
 * under the lock, at most TRIM_STEP bytes per hold so that others' operations wait ~1 ms
 * at worst, then lets go of the lock and goes on.  Freed blocks are reused LIFO by the
 * allocator, so memory that is busy stays warm and never reaches the delay.
 *
 * Crash safety.  Bits are set after reserving and cleared before punching (commit.h), so
 * a process killed anywhere in here leaves a map that is at worst pessimistic; the steps
 * inside the lock are recovered like any other (recovery recounts the map).  A reservation
 * made outside the lock is trusted only if no punch happened meanwhile (purge_seq).
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "copy.h"
#include "fault.h"
#include "status.h"
#include "store_impl.h"
#include "wait.h"

/* Window chunks the warmer reserves and maps per step (2 MiB: each fallocate/madvise
 * holds the mm's locks ~1 ms at most). */
#define WARM_STEP_CHUNKS ((2ull << 20) / COMMIT_CHUNK)
/* Bytes the trimmer punches per hold of the lock: ~0.2 ms per MiB here, so ~1 ms. */
#define TRIM_STEP (4ull << 20)
/* Runs collected per trim step (a run is one punch). */
#define TRIM_RUNS 32
/* Cold parts of a block at least this big are reserved by mapping them with every CPU. */
#define FP_MAP_MIN (8ull << 20)
/* The warmer's pause after /dev/shm refused a reservation. */
#define WARM_BACKOFF_NS 1000000000ll

static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static inline uint64_t file_off(const store_t *s, uint64_t chunk)
{
    return s->hdr->arena_off + chunk * COMMIT_CHUNK;
}

/* ---- policy ------------------------------------------------------------------------ */

void fp_format(store_t *s, const store_options_t *opt)
{
    store_hdr_t *h = s->hdr;
    uint64_t quarter = (h->arena.size / 4) & ~(COMMIT_CHUNK - 1);
    uint64_t wmin = opt->window_min ? opt->window_min : STORE_WINDOW_MIN;
    uint64_t wmax = opt->window_max ? opt->window_max : STORE_WINDOW_MAX;
    wmin = min_u64(align_up(wmin, COMMIT_CHUNK), quarter);
    wmax = max_u64(wmin, min_u64(align_up(wmax, COMMIT_CHUNK), quarter));
    h->window_min = wmin;
    h->window_max = wmax;
    h->purge_delay_ms = opt->purge_delay_ms ? opt->purge_delay_ms : STORE_PURGE_DELAY_MS;
    h->window_decay_ms = h->purge_delay_ms <= STORE_WINDOW_DECAY_MS / 2 ? 2 * h->purge_delay_ms
                                                                        : h->purge_delay_ms;
    h->window_target = wmin;
    h->warm_top = 0;
    h->last_grow_ms = commit_now_ms();
}

int fp_note_growth(store_t *s, uint64_t got, uint32_t now)
{
    store_hdr_t *h = s->hdr;
    uint64_t want = min_u64(h->window_max, max_u64(h->window_min, align_up(2 * got, COMMIT_CHUNK)));
    int wake = 0;
    if (want > h->window_target) {
        h->window_target = want;
        wake = 1;
    }
    h->last_grow_ms = now;
    if (h->arena.top >= h->warm_top + h->window_target / 4)
        wake = 1;
    return wake;
}

void fp_wake_warmer(store_t *s)
{
    atomic_fetch_add(&s->hdr->warm_kick, 1);
    wait_wake_all(&s->hdr->warm_kick);
}

static void window_chunks(const store_t *s, uint64_t target, uint64_t *lo, uint64_t *hi);

void fp_note_free(store_t *s, uint64_t off, uint64_t len)
{
    commit_stamp(&s->commit, off, len, commit_now_ms());
    store_hdr_t *h = s->hdr;
    if (len < COMMIT_CHUNK || !atomic_load_explicit(&h->trimmer_idle, memory_order_relaxed))
        return;
    /* Wake the trimmer only for memory it may give back: not for a block inside the warm
     * window (a put-and-delete loop at the high-water mark would wake it on every delete:
     * that cost a 1 MB put 40% of its speed).  Memory the window leaves later is found by
     * the trimmer's own tick (BG_MAX_SLEEP_NS). */
    uint64_t wlo, whi;
    window_chunks(s, h->window_target, &wlo, &whi);
    if (commit_chunk_of(off) >= wlo && commit_chunk_up(off + len) <= whi)
        return;
    atomic_store(&h->trimmer_idle, 0);
    h->trimmer_wakeups++;
    atomic_fetch_add(&h->trim_kick, 1);
    wait_wake_all(&h->trim_kick);
}

/* The window as chunks [*lo, *hi): from the high-water mark's chunk up. */
static void window_chunks(const store_t *s, uint64_t target, uint64_t *lo, uint64_t *hi)
{
    const store_hdr_t *h = s->hdr;
    uint64_t top = h->arena.top;
    *lo = commit_chunk_of(top);
    *hi = commit_chunk_up(min_u64(top + target, h->arena.size));
    if (top >= h->arena.size)
        *lo = *hi;
}

/* ---- object blocks ----------------------------------------------------------------- */

void fp_block_need(store_t *s, uint64_t off, uint64_t len, fp_need_t *need)
{
    need->nruns = 0;
    need->whole = 0;
    need->lo = commit_chunk_of(off);
    need->hi = commit_chunk_up(off + len);
    uint64_t k = need->lo;
    commit_run_t r;
    while (commit_find(&s->commit, k, need->hi, 0, UINT64_MAX, &r)) {
        if (need->nruns == FP_RUNS) {
            need->whole = 1;
            return;
        }
        need->runs[need->nruns++] = r;
        k = r.hi;
    }
}

static int trim_locked(store_t *s, int flags, uint64_t budget, uint64_t *released, uint32_t *wait_ms);

static int reserve_need(store_t *s, const fp_need_t *need)
{
    if (need->whole)
        return reserve_range(s->seg.fd, file_off(s, need->lo), commit_run_bytes(&s->commit, need->lo, need->hi));
    for (int i = 0; i < need->nruns; i++) {
        int rc = reserve_range(s->seg.fd, file_off(s, need->runs[i].lo),
                               commit_run_bytes(&s->commit, need->runs[i].lo, need->runs[i].hi));
        if (rc != STORE_OK)
            return rc;
    }
    return STORE_OK;
}

/* Reserve the runs by mapping them here with every CPU (see reserve_map); 0 or errno. */
static int map_need(store_t *s, const fp_need_t *need, int threads)
{
    if (need->whole)
        return reserve_map(s->arena.base + need->lo * COMMIT_CHUNK,
                           commit_run_bytes(&s->commit, need->lo, need->hi), threads);
    for (int i = 0; i < need->nruns; i++) {
        int e = reserve_map(s->arena.base + need->runs[i].lo * COMMIT_CHUNK,
                            commit_run_bytes(&s->commit, need->runs[i].lo, need->runs[i].hi), threads);
        if (e)
            return e;
    }
    return 0;
}

static uint64_t need_bytes(store_t *s, const fp_need_t *need)
{
    if (need->whole)
        return commit_run_bytes(&s->commit, need->lo, need->hi);
    uint64_t n = 0;
    for (int i = 0; i < need->nruns; i++)
        n += commit_run_bytes(&s->commit, need->runs[i].lo, need->runs[i].hi);
    return n;
}

/* After a failed reservation: give back what a partial mapping may hold -- the chunks
 * only this block overlaps (past its header's chunk, before the next header; the edge
 * chunks are shared with neighbours) that are not committed (committed ones hold what
 * they promise; they are the trimmer's).  Under the lock, with purge_seq bumped, so the
 * warmer does not mark as committed a chunk it reserved before this punch. */
static void unreserve_interior(store_t *s, uint64_t off, uint64_t len)
{
    uint64_t lo = commit_chunk_up(off + ARENA_HEADER), hi = commit_chunk_of(off + len);
    if (lo >= hi || store_lock_(s) != STORE_OK)
        return;
    s->hdr->purge_seq++;
    commit_run_t r;
    while (commit_find(&s->commit, lo, hi, 0, UINT64_MAX, &r)) {
        release_range(s->seg.fd, file_off(s, r.lo), commit_run_bytes(&s->commit, r.lo, r.hi));
        lo = r.hi;
    }
    store_unlock_(s);
}

int fp_block_reserve(store_t *s, const fp_need_t *need, uint64_t off, uint64_t len)
{
    /* Big cold blocks: map them with both CPUs (the copy then runs into mapped pages);
     * the rest, or if that fails, fallocate (it says ENOSPC, and undoes itself). */
    int threads = copy_cpus();
    int mapped = 0;
    if (threads > 1 && need_bytes(s, need) >= FP_MAP_MIN) {
        mapped = 1;
        if (map_need(s, need, threads) == 0)
            return STORE_OK;
    }
    int rc = reserve_need(s, need);
    if (rc == STORE_ERR_NOSPC && store_lock_(s) == STORE_OK) {
        /* /dev/shm is full, but free memory of ours may hold reserved pages: give them
         * all back and try again (the space then goes to whoever asks first). */
        uint64_t released = 0;
        uint32_t wait_ms;
        trim_locked(s, STORE_TRIM_ALL, UINT64_MAX, &released, &wait_ms);
        store_unlock_(s);
        if (released)
            rc = reserve_need(s, need);
    }
    if (rc != STORE_OK && mapped)
        unreserve_interior(s, off, len);
    return rc;
}

void fp_block_commit(store_t *s, const fp_need_t *need, uint32_t now)
{
    if (need->whole) {
        commit_set(&s->commit, need->lo, need->hi, now);
        return;
    }
    for (int i = 0; i < need->nruns; i++)
        commit_set(&s->commit, need->runs[i].lo, need->runs[i].hi, now);
}

/* ---- the warm window --------------------------------------------------------------- */

/* One step: reserve and map (in this process) the first uncommitted run of the window,
 * at most max_chunks long.  *added: bytes newly committed (0: the window is full). */
static int warm_once(store_t *s, uint64_t max_chunks, uint64_t *added)
{
    *added = 0;
    int rc = store_lock_(s);
    if (rc != STORE_OK)
        return rc;
    store_hdr_t *h = s->hdr;
    uint64_t lo, hi;
    window_chunks(s, h->window_target, &lo, &hi);
    commit_run_t run;
    if (!commit_find(&s->commit, lo, hi, 0, max_chunks, &run)) {
        h->warm_top = h->arena.top;
        store_unlock_(s);
        return STORE_OK;
    }
    uint64_t seq = h->purge_seq;
    store_unlock_(s);

    uint64_t off = run.lo * COMMIT_CHUNK, len = commit_run_bytes(&s->commit, run.lo, run.hi);
    rc = reserve_range(s->seg.fd, h->arena_off + off, len);
    if (rc != STORE_OK)
        return rc;
    reserve_populate(s->arena.base + off, len);
    FAULT_POINT(FAULT_WARM_RESERVED);
    if ((rc = store_lock_(s)) != STORE_OK)
        return rc;
    if (h->purge_seq == seq) {   /* else a punch may have raced us: leave the bits clear */
        uint32_t now = commit_now_ms();
        uint64_t mid = run.lo + (run.hi - run.lo) / 2;
        commit_set(&s->commit, run.lo, mid, now);
        FAULT_POINT(FAULT_WARM_COMMIT);
        commit_set(&s->commit, mid, run.hi, now);
    }
    store_unlock_(s);
    atomic_fetch_add(&s->warmed, len);
    *added = len;
    return STORE_OK;
}

static int64_t warm_step(void *ctx)
{
    store_t *s = ctx;
    uint64_t added;
    int rc = warm_once(s, WARM_STEP_CHUNKS, &added);
    if (rc == STORE_ERR_NOSPC) {
        atomic_store(&s->warm_blocked, 1);
        return WARM_BACKOFF_NS;
    }
    atomic_store(&s->warm_blocked, 0);
    if (rc != STORE_OK)
        return WARM_BACKOFF_NS;
    return added ? 0 : -1;   /* more to do, or the window is full: sleep until kicked */
}

int store_warm(store_t *s, uint64_t *added)
{
    uint64_t total = 0, step;
    int rc;
    do {
        rc = warm_once(s, WARM_STEP_CHUNKS, &step);
        total += step;
    } while (rc == STORE_OK && step);
    if (added)
        *added = total;
    return rc;
}

int store_prefault_wait(store_t *s, int64_t timeout_ns)
{
    if (!s->warmer.running)
        return STORE_OK;
    int64_t deadline = timeout_ns < 0 ? -1 : wait_now_ns() + timeout_ns;
    for (;;) {
        int rc = store_lock_(s);
        if (rc != STORE_OK)
            return rc;
        uint64_t lo, hi;
        window_chunks(s, s->hdr->window_target, &lo, &hi);
        commit_run_t run;
        int full = !commit_find(&s->commit, lo, hi, 0, 1, &run);
        store_unlock_(s);
        if (full || atomic_load(&s->warm_blocked))
            return STORE_OK;
        if (deadline >= 0 && wait_now_ns() >= deadline)
            return STORE_ERR_TIMEOUT;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* ---- giving back ------------------------------------------------------------------- */

typedef struct trim_scan {
    store_t *s;
    uint64_t wlo, whi;          /* the window's chunks: kept                              */
    uint32_t now, delay;
    uint64_t budget, bytes;     /* bytes collected so far, up to budget                   */
    commit_run_t runs[TRIM_RUNS];
    int nruns;
    uint32_t wait_ms;           /* until the next committed free chunk becomes idle enough */
} trim_scan_t;

/* Add chunk k to the runs; 1 when the step is full. */
static int trim_take(trim_scan_t *t, uint64_t k)
{
    uint64_t bytes = commit_run_bytes(&t->s->commit, k, k + 1);
    if (t->nruns && t->runs[t->nruns - 1].hi == k) {
        t->runs[t->nruns - 1].hi = k + 1;
    } else {
        if (t->nruns == TRIM_RUNS)
            return 1;
        t->runs[t->nruns].lo = k;
        t->runs[t->nruns].hi = k + 1;
        t->nruns++;
    }
    t->bytes += bytes;
    return t->bytes >= t->budget;
}

/* Collect the committed, idle chunks of chunks [lo, hi); 1 when the step is full. */
static int trim_piece(trim_scan_t *t, uint64_t lo, uint64_t hi)
{
    const commit_t *c = &t->s->commit;
    commit_run_t r;
    while (lo < hi && commit_find(c, lo, hi, 1, UINT64_MAX, &r)) {
        for (uint64_t k = r.lo; k < r.hi; k++) {
            uint32_t idle = t->now - c->stamps[k];
            if (idle >= t->delay) {
                if (trim_take(t, k))
                    return 1;
            } else if (t->delay - idle < t->wait_ms) {
                t->wait_ms = t->delay - idle;
            }
        }
        lo = r.hi;
    }
    return 0;
}

/* arena_each_free callback: the chunks wholly inside the block's interior (past its
 * header's page, up to the next block's header), minus the window. */
static int trim_block(void *ctx, uint64_t off, uint64_t size)
{
    trim_scan_t *t = ctx;
    uint64_t lo = commit_chunk_up(off + ARENA_HEADER);
    uint64_t end = off + size;
    uint64_t hi = end >= t->s->hdr->arena.size ? commit_chunk_up(end) : commit_chunk_of(end);
    if (lo >= hi)
        return 0;
    if (trim_piece(t, lo, min_u64(hi, t->wlo)))
        return 1;
    return trim_piece(t, max_u64(lo, t->whi), hi);
}

/* Give back up to `budget` bytes (lock held).  See store_trim. */
static int trim_locked(store_t *s, int flags, uint64_t budget, uint64_t *released, uint32_t *wait_ms)
{
    store_hdr_t *h = s->hdr;
    trim_scan_t t;
    memset(&t, 0, sizeof t);
    t.s = s;
    t.now = commit_now_ms();
    t.budget = budget;
    t.wait_ms = UINT32_MAX;
    if (flags & STORE_TRIM_ALL) {
        h->window_target = h->window_min;
        t.delay = 0;
        t.wlo = t.whi = 0;   /* no window */
    } else {
        if (h->window_target > h->window_min) {
            uint32_t quiet = t.now - h->last_grow_ms;
            if (quiet >= h->window_decay_ms)
                h->window_target = h->window_min;
            else if (h->window_decay_ms - quiet < t.wait_ms)
                t.wait_ms = h->window_decay_ms - quiet;
        }
        t.delay = h->purge_delay_ms;
        window_chunks(s, h->window_target, &t.wlo, &t.whi);
    }
    arena_each_free(&s->arena, COMMIT_CHUNK, trim_block, &t);

    int rc = STORE_OK;
    uint64_t done = 0;
    for (int i = 0; i < t.nruns; i++) {
        uint64_t lo = t.runs[i].lo, hi = t.runs[i].hi;
        uint64_t bytes = commit_run_bytes(&s->commit, lo, hi);
        h->purge_seq++;
        commit_clear(&s->commit, lo, hi);     /* before the punch: a bit never lies */
        FAULT_POINT(FAULT_PURGE_CLEARED);
        rc = release_range(s->seg.fd, file_off(s, lo), bytes);
        if (rc != STORE_OK)
            break;   /* the bits stay clear: the pages may still be held, never promised */
        FAULT_POINT(FAULT_PURGE_PUNCHED);
        done += bytes;
    }
    h->purged += done;
    if (done == 0 && t.wait_ms == UINT32_MAX && rc == STORE_OK)
        atomic_store(&h->trimmer_idle, 1);   /* a free will wake the trimmer */
    *released = done;
    *wait_ms = t.wait_ms;
    return rc;
}

/* One step of the trimmer (takes the lock). */
static int trim_once(store_t *s, int flags, uint64_t budget, uint64_t *released, uint32_t *wait_ms)
{
    int rc = store_lock_(s);
    if (rc != STORE_OK)
        return rc;
    rc = trim_locked(s, flags, budget, released, wait_ms);
    store_unlock_(s);
    return rc;
}

static int64_t trim_step(void *ctx)
{
    store_t *s = ctx;
    uint64_t released = 0;
    uint32_t wait_ms = UINT32_MAX;
    if (trim_once(s, 0, TRIM_STEP, &released, &wait_ms) != STORE_OK)
        return 1000000000ll;
    if (released) {
        sched_yield();   /* let whoever waited for the lock have it */
        return 0;
    }
    if (wait_ms == UINT32_MAX)
        return -1;       /* nothing pending: sleep until a free wakes us */
    return (int64_t)wait_ms * 1000000ll + 1000000ll;
}

int store_trim(store_t *s, int flags, uint64_t *released)
{
    uint64_t total = 0, step;
    uint32_t wait_ms;
    int rc;
    do {
        step = 0;
        rc = trim_once(s, flags, TRIM_STEP, &step, &wait_ms);
        total += step;
    } while (rc == STORE_OK && step);
    if (released)
        *released = total;
    return rc;
}

/* ---- threads ----------------------------------------------------------------------- */

void fp_start_threads(store_t *s)
{
    s->warmer.idle_policy = 1;
    s->warmer.name = "pygen-warm";
    s->warmer.step = warm_step;
    s->warmer.ctx = s;
    s->warmer.kick = &s->hdr->warm_kick;
    bg_start(&s->warmer);            /* failing to start only costs speed */
    s->trimmer.idle_policy = 0;
    s->trimmer.name = "pygen-trim";
    s->trimmer.step = trim_step;
    s->trimmer.ctx = s;
    s->trimmer.kick = &s->hdr->trim_kick;
    bg_start(&s->trimmer);           /* ... or memory, until store_trim is called */
}

void fp_stop_threads(store_t *s)
{
    bg_stop(&s->warmer);
    bg_stop(&s->trimmer);
}

/* ---- figures and checks ------------------------------------------------------------ */

static uint64_t shm_bytes(const store_t *s)
{
    struct stat st;
    return fstat(s->seg.fd, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

void fp_stats(store_t *s, store_stats_t *out)
{
    store_hdr_t *h = s->hdr;
    uint64_t arena_committed = commit_bytes_in(&s->commit, 0, s->commit.ctl->nchunks);
    uint64_t lo, hi;
    window_chunks(s, h->window_target, &lo, &hi);
    out->reserved = arena_committed;
    out->tables = h->arena_off;
    out->committed = h->arena_off + arena_committed;
    out->window = commit_bytes_in(&s->commit, lo, hi);
    out->window_target = h->window_target;
    out->high_water = h->arena.top;
    out->purged = h->purged;
    out->trimmer_wakeups = h->trimmer_wakeups;
    out->purge_delay_ms = h->purge_delay_ms;
    out->prefaulted = atomic_load(&s->warmed);
    out->shm_bytes = shm_bytes(s);
}

int fp_check(store_t *s)
{
    store_hdr_t *h = s->hdr;
    int rc = commit_check(&s->commit);
    if (rc != STORE_OK)
        return rc;
    if (h->window_target < h->window_min || h->window_target > h->window_max)
        return store_fail(STORE_ERR_INVALID, "window of %llu bytes outside [%llu, %llu]",
                          (unsigned long long)h->window_target, (unsigned long long)h->window_min,
                          (unsigned long long)h->window_max);
    /* Every committed chunk is reserved, and so are the tables: the file holds at least
     * that much (it may hold more: header pages, reservations not yet marked). */
    uint64_t promised = h->arena_off + commit_bytes_in(&s->commit, 0, s->commit.ctl->nchunks);
    uint64_t held = shm_bytes(s);
    if (held && held < promised)
        return store_fail(STORE_ERR_INVALID, "the segment holds %llu bytes, the commit map promises %llu",
                          (unsigned long long)held, (unsigned long long)promised);
    return STORE_OK;
}

int store_debug_commit_lies(store_t *s, uint64_t *lies)
{
    *lies = 0;
    int rc = store_lock_(s);
    if (rc != STORE_OK)
        return rc;
    /* A committed chunk is reserved: reserving it again must not grow the file.  (Only
     * meaningful while no other process reserves anything: tests call it when alone.) */
    commit_run_t r;
    uint64_t k = 0;
    while (rc == STORE_OK && commit_find(&s->commit, k, s->commit.ctl->nchunks, 1, UINT64_MAX, &r)) {
        for (uint64_t c = r.lo; c < r.hi && rc == STORE_OK; c++) {
            uint64_t before = shm_bytes(s);
            rc = reserve_range(s->seg.fd, file_off(s, c), commit_run_bytes(&s->commit, c, c + 1));
            if (shm_bytes(s) != before)
                (*lies)++;
        }
        k = r.hi;
    }
    store_unlock_(s);
    return rc;
}
