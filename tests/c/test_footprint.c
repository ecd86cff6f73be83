/* test_footprint.c -- memory follows use: the commit map, reservation on demand, giving
 * back (trim), the warm window and its threads, and that a committed bit never lies
 * (store_debug_commit_lies: reserving a committed chunk again must not grow the file). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "commit.h"
#include "store.h"

#define MiB (1ull << 20)
#define CHUNK COMMIT_CHUNK
/* The warmer runs SCHED_IDLE: with busy loops on every CPU it gets a fraction of a percent
 * of one, and 60 MiB of page faults then take over 10 s.  A bound for liveness only. */
#define WARM_WAIT_NS 120000000000ll

static void make_id(uint8_t *id, uint64_t k)
{
    memset(id, 0xf0, STORE_ID_SIZE);
    memcpy(id, &k, sizeof k);
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000l};
    nanosleep(&ts, NULL);
}

static store_t *new_store(uint64_t capacity, int threads, uint64_t wmin, uint64_t wmax, uint32_t delay_ms)
{
    store_options_t o = {.capacity = capacity, .prefault = threads, .window_min = wmin,
                         .window_max = wmax, .purge_delay_ms = delay_ms};
    store_t *s = NULL;
    CHECK_EQ(store_create(&o, &s), STORE_OK);
    return s;
}

static void drop_store(store_t *s)
{
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

static store_stats_t stats(store_t *s)
{
    store_stats_t st;
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    return st;
}

static uint8_t fill_byte(uint64_t k, uint64_t i) { return (uint8_t)(k * 131 + i / 4096 + i); }

/* Create object k of `size` bytes, write all of it (a write into a hole over a full
 * /dev/shm would be a SIGBUS here), seal it. */
static int put(store_t *s, uint64_t k, uint64_t size)
{
    uint8_t id[STORE_ID_SIZE];
    make_id(id, k);
    store_obj_t o;
    int rc = store_create_object(s, id, size, 0, &o);
    if (rc != STORE_OK)
        return rc;
    for (uint64_t i = 0; i < size; i++)
        o.data[i] = fill_byte(k, i);
    CHECK_EQ(store_seal(s, id), STORE_OK);
    CHECK_EQ(store_release(s, o.entry, id), STORE_OK);
    return STORE_OK;
}

static int intact(store_t *s, uint64_t k, uint64_t size)
{
    uint8_t id[STORE_ID_SIZE];
    make_id(id, k);
    store_obj_t o;
    if (store_get(s, id, 0, &o) != STORE_OK)
        return 0;
    int ok = o.data_size == size;
    for (uint64_t i = 0; ok && i < size; i++)
        ok = o.data[i] == fill_byte(k, i);
    store_release(s, o.entry, id);
    return ok;
}

static void del(store_t *s, uint64_t k)
{
    uint8_t id[STORE_ID_SIZE];
    make_id(id, k);
    int freed;
    CHECK_EQ(store_delete(s, id, &freed), STORE_OK);
    CHECK_EQ(freed, 1);
}

static uint64_t lies(store_t *s)
{
    uint64_t n = 0;
    CHECK_EQ(store_debug_commit_lies(s, &n), STORE_OK);
    return n;
}

/* Poll `cond` for up to `seconds` (a liveness bound, not a timing claim). */
#define WAIT_UNTIL(cond, seconds)                                                      \
    ({                                                                                \
        int ok_ = 0;                                                                  \
        for (int i_ = 0; i_ < (seconds) * 100 && !(ok_ = (cond)); i_++)               \
            msleep(10);                                                               \
        ok_;                                                                          \
    })

/* ---- the map alone ------------------------------------------------------------------ */

static void test_commit_map(void)
{
    /* 200 chunks and a bit: the last chunk is 4 KiB long */
    uint64_t size = 200 * CHUNK + 4096;
    commit_ctl_t ctl;
    uint8_t *mem = calloc(1, commit_map_bytes(size));
    commit_t c;
    commit_bind(&c, &ctl, mem, size, 1);
    CHECK_EQ(ctl.nchunks, 201);
    CHECK_EQ(commit_run_bytes(&c, 199, 201), CHUNK + 4096);
    commit_run_t r;
    CHECK(commit_find(&c, 0, 201, 0, UINT64_MAX, &r));
    CHECK_EQ(r.lo, 0);
    CHECK_EQ(r.hi, 201);
    CHECK(!commit_find(&c, 0, 201, 1, UINT64_MAX, &r));
    commit_set(&c, 60, 130, 7);   /* across two word boundaries */
    CHECK_EQ(ctl.committed, 70);
    CHECK_EQ(c.stamps[60], 7);
    CHECK_EQ(c.stamps[59], 0);
    CHECK(commit_find(&c, 0, 201, 1, UINT64_MAX, &r));
    CHECK_EQ(r.lo, 60);
    CHECK_EQ(r.hi, 130);
    CHECK(commit_find(&c, 61, 201, 1, 5, &r));   /* at most 5 long */
    CHECK_EQ(r.lo, 61);
    CHECK_EQ(r.hi, 66);
    CHECK(commit_find(&c, 60, 201, 0, UINT64_MAX, &r));
    CHECK_EQ(r.lo, 130);
    CHECK_EQ(r.hi, 201);
    CHECK(commit_find(&c, 64, 128, 1, UINT64_MAX, &r));   /* exactly one word */
    CHECK_EQ(r.lo, 64);
    CHECK_EQ(r.hi, 128);
    CHECK(commit_covers(&c, 60 * CHUNK, 70 * CHUNK));
    CHECK(!commit_covers(&c, 60 * CHUNK, 70 * CHUNK + 1));   /* one byte into chunk 130 */
    CHECK(!commit_covers(&c, 60 * CHUNK - 1, 2));
    CHECK(commit_covers(&c, 100 * CHUNK + 5, 0));
    CHECK_EQ(commit_bytes_in(&c, 0, 201), 70 * CHUNK);
    CHECK_EQ(commit_bytes_in(&c, 100, 110), 10 * CHUNK);
    commit_set(&c, 200, 201, 9);
    CHECK_EQ(commit_bytes_in(&c, 0, 201), 70 * CHUNK + 4096);
    commit_clear(&c, 100, 101);
    CHECK_EQ(ctl.committed, 70);
    CHECK(commit_find(&c, 61, 201, 1, UINT64_MAX, &r));
    CHECK_EQ(r.hi, 100);
    CHECK_EQ(commit_check(&c), STORE_OK);
    ctl.committed = 3;   /* a torn counter: recount mends it */
    CHECK(commit_check(&c) != STORE_OK);
    commit_recount(&c);
    CHECK_EQ(ctl.committed, 70);
    CHECK_EQ(commit_check(&c), STORE_OK);
    commit_stamp(&c, 10 * CHUNK + 1, CHUNK, 42);   /* overlaps chunks 10 and 11 */
    CHECK_EQ(c.stamps[10], 42);
    CHECK_EQ(c.stamps[11], 42);
    CHECK_EQ(c.stamps[12], 0);
    CHECK(commit_cold(&c, 12, 5, 5));
    CHECK(!commit_cold(&c, 10, 45, 5));
    CHECK(commit_cold(&c, 10, 47, 5));
    c.stamps[13] = UINT32_MAX - 1;   /* the clock wrapped since: still 3 ms */
    CHECK(!commit_cold(&c, 13, 1, 5));
    free(mem);
}

/* ---- reservation on demand ------------------------------------------------------------ */

static void test_idle_store_holds_its_tables_only(void)
{
    store_t *s = new_store(1ull << 30, 0, 0, 0, 0);
    store_stats_t st = stats(s);
    CHECK_EQ(st.capacity, 1ull << 30);
    CHECK_EQ(st.reserved, CHUNK);                    /* the first header's chunk */
    CHECK_EQ(st.committed, st.tables + CHUNK);
    CHECK(st.shm_bytes >= st.committed);
    CHECK(st.shm_bytes <= st.committed + 4096);
    CHECK(st.shm_bytes < 8 * MiB);                   /* a 1 GiB ceiling, ~2 MiB held */
    CHECK_EQ(st.window_target, 32 * MiB);
    CHECK_EQ(st.high_water, 0);
    CHECK_EQ(lies(s), 0);
    drop_store(s);
}

static void test_blocks_reserve_what_they_use(void)
{
    store_t *s = new_store(256 * MiB, 0, 0, 0, 0);
    store_stats_t a = stats(s);
    CHECK_EQ(put(s, 1, 20 * MiB), STORE_OK);
    store_stats_t b = stats(s);
    CHECK(b.reserved >= 20 * MiB);
    CHECK(b.reserved <= 20 * MiB + 2 * CHUNK);
    CHECK(b.shm_bytes - a.shm_bytes >= 20 * MiB - CHUNK);
    CHECK(b.shm_bytes - a.shm_bytes <= 20 * MiB + 2 * CHUNK);
    CHECK_EQ(b.high_water, 20 * MiB + 64);           /* the block: payload + its header */
    /* a small object right above reuses the committed tail chunk: nothing more reserved */
    CHECK_EQ(put(s, 2, 1000), STORE_OK);
    CHECK_EQ(stats(s).reserved, b.reserved);
    CHECK(intact(s, 1, 20 * MiB));
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

/* ---- giving back ---------------------------------------------------------------------- */

static void test_trim_gives_free_memory_back(void)
{
    store_t *s = new_store(256 * MiB, 0, 4 * MiB, 0, 0);   /* default delay: 1 s */
    store_stats_t a = stats(s);
    CHECK_EQ(put(s, 1, 40 * MiB), STORE_OK);
    del(s, 1);
    uint64_t released = 1;
    CHECK_EQ(store_trim(s, 0, &released), STORE_OK);
    CHECK_EQ(released, 0);                            /* freed just now: not idle yet */
    CHECK_EQ(store_trim(s, STORE_TRIM_ALL, &released), STORE_OK);
    CHECK(released >= 40 * MiB - CHUNK);
    store_stats_t b = stats(s);
    CHECK_EQ(b.reserved, CHUNK);                      /* the first header's chunk stays */
    CHECK_EQ(b.shm_bytes, a.shm_bytes);
    CHECK_EQ(b.purged, released);
    CHECK_EQ(lies(s), 0);
    /* the punched range is used again: reserved again, written, read back */
    CHECK_EQ(put(s, 2, 40 * MiB), STORE_OK);
    CHECK(intact(s, 2, 40 * MiB));
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_trim_waits_for_the_delay_and_spares_the_window(void)
{
    store_t *s = new_store(256 * MiB, 0, 4 * MiB, 0, 300);
    CHECK_EQ(put(s, 1, 8 * MiB), STORE_OK);   /* [0, 8M): below the high-water mark   */
    CHECK_EQ(put(s, 2, 1 * MiB), STORE_OK);   /* keeps 1 from merging into the wilderness */
    CHECK_EQ(put(s, 3, 3 * MiB), STORE_OK);   /* at the high-water mark: freed, it is window */
    del(s, 1);
    del(s, 3);
    uint64_t released = 1;
    CHECK_EQ(store_trim(s, 0, &released), STORE_OK);
    CHECK_EQ(released, 0);
    msleep(400);
    CHECK_EQ(store_trim(s, 0, &released), STORE_OK);
    /* object 1's interior went back; object 3's range is the warm window: kept */
    CHECK(released >= 8 * MiB - 2 * CHUNK);
    CHECK(released <= 8 * MiB + CHUNK);
    store_stats_t st = stats(s);
    CHECK(st.window >= 3 * MiB);
    CHECK(intact(s, 2, 1 * MiB));
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_trim_keeps_live_data_and_headers(void)
{
    /* Blocks of awkward sizes, so free blocks start and end mid-chunk; free every other
     * one, give everything free back, and the live ones (and the allocator's headers)
     * are untouched; then fill the holes again. */
    store_t *s = new_store(128 * MiB, 0, 1 * MiB, 0, 1);
    enum { N = 40 };
    uint64_t size[N];
    for (int i = 0; i < N; i++) {
        size[i] = 3000 + (uint64_t)i * 97 * 1024 + (uint64_t)(i % 3) * 333;
        CHECK_EQ(put(s, (uint64_t)i, size[i]), STORE_OK);
    }
    for (int i = 0; i < N; i += 2)
        del(s, (uint64_t)i);
    uint64_t released;
    CHECK_EQ(store_trim(s, STORE_TRIM_ALL, &released), STORE_OK);
    CHECK(released > 20 * MiB);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    for (int i = 1; i < N; i += 2)
        CHECK(intact(s, (uint64_t)i, size[i]));
    for (int i = 0; i < N; i += 2)
        CHECK_EQ(put(s, (uint64_t)i, size[i]), STORE_OK);
    for (int i = 0; i < N; i++)
        CHECK(intact(s, (uint64_t)i, size[i]));
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

/* Random puts, deletes, trims and warm-ups against a list of what must be there. */
static void test_random_use_and_trims(void)
{
    store_t *s = new_store(96 * MiB, 0, 2 * MiB, 8 * MiB, 1);
    enum { SLOTS = 64, STEPS = 3000 };
    uint64_t size[SLOTS] = {0};
    unsigned long long rng = 12345;
    uint64_t trimmed = 0;
    for (int step = 0; step < STEPS; step++) {
        int k = (int)(rng_next(&rng) % SLOTS);
        unsigned op = (unsigned)(rng_next(&rng) % 100);
        if (size[k]) {
            if (op < 60) {
                CHECK(intact(s, (uint64_t)k, size[k]));
                del(s, (uint64_t)k);
                size[k] = 0;
            }
        } else if (op < 70) {
            /* log-uniform-ish: 100 B .. 3 MiB */
            uint64_t n = 100ull << (rng_next(&rng) % 15);
            n += rng_next(&rng) % n;
            if (put(s, (uint64_t)k, n) == STORE_OK)
                size[k] = n;
        }
        if (op >= 95) {
            uint64_t r;
            CHECK_EQ(store_trim(s, op >= 98 ? STORE_TRIM_ALL : 0, &r), STORE_OK);
            trimmed += r;
        } else if (op == 94) {
            CHECK_EQ(store_warm(s, NULL), STORE_OK);
        }
        if (step % 500 == 0) {
            CHECK_EQ(store_check(s, NULL), STORE_OK);
            CHECK_EQ(lies(s), 0);
        }
    }
    for (int k = 0; k < SLOTS; k++)
        if (size[k])
            CHECK(intact(s, (uint64_t)k, size[k]));
    CHECK(trimmed > 0);
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    printf("  %llu MiB given back over %d steps\n", (unsigned long long)(trimmed >> 20), STEPS);
    drop_store(s);
}

/* ---- the threads ---------------------------------------------------------------------- */

static void test_window_follows_use(void)
{
    /* warm window 4 MiB at rest, up to 64 MiB; free memory idle 100 ms goes back, a window
     * not grown for 200 ms shrinks */
    store_t *s = new_store(256 * MiB, 1, 4 * MiB, 64 * MiB, 100);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    store_stats_t st = stats(s);
    CHECK_EQ(st.window, 4 * MiB);
    CHECK(st.prefaulted >= 4 * MiB - CHUNK);
    /* a 12 MiB object off the wilderness: the window grows (test_window_tracks_growth) */
    CHECK_EQ(put(s, 1, 12 * MiB), STORE_OK);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    /* at rest again, the window shrinks back and its excess goes back to the system */
    CHECK(WAIT_UNTIL(stats(s).window_target == 4 * MiB && stats(s).reserved <= 16 * MiB + 2 * CHUNK, 10));
    CHECK(intact(s, 1, 12 * MiB));
    /* freed, the object's memory goes back too (but for the window, now at offset 0) */
    del(s, 1);
    CHECK(WAIT_UNTIL(stats(s).reserved <= 4 * MiB + CHUNK, 10));
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    st = stats(s);
    CHECK(st.purged >= 12 * MiB);
    CHECK_EQ(st.high_water, 0);
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_window_tracks_growth(void)
{
    /* a long delay: the window must not decay back while the starved warmer fills it on a
     * loaded machine (5 s was not enough with two busy loops on the two CPUs) */
    store_t *s = new_store(512 * MiB, 1, 2 * MiB, 128 * MiB, 600000);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    /* twice the block (30 MiB + its header), in whole chunks */
    CHECK_EQ(put(s, 1, 30 * MiB), STORE_OK);
    CHECK_EQ(stats(s).window_target, 60 * MiB + CHUNK);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    store_stats_t st = stats(s);
    CHECK_EQ(st.high_water, 30 * MiB + 64);
    CHECK_EQ(st.window, 60 * MiB + 2 * CHUNK);   /* from the high-water mark's chunk up */
    /* the next 30 MiB object lands in the warm window */
    CHECK_EQ(put(s, 2, 30 * MiB), STORE_OK);
    CHECK_EQ(stats(s).window_target, 60 * MiB + CHUNK);
    CHECK(intact(s, 2, 30 * MiB));
    /* a window never exceeds its maximum */
    CHECK_EQ(put(s, 3, 100 * MiB), STORE_OK);
    CHECK_EQ(stats(s).window_target, 128 * MiB);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);   /* quiet: lies() measures */
    CHECK_EQ(lies(s), 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_frees_in_the_window_leave_the_trimmer_asleep(void)
{
    /* put and delete at the high-water mark: the block goes back into the wilderness,
     * inside the warm window, where the trimmer can give nothing back.  Waking it on each
     * delete (a futex wake, a context switch) once cost a 1 MB put 40% of its speed. */
    store_t *s = new_store(256 * MiB, 1, 8 * MiB, 0, 0);
    CHECK_EQ(store_prefault_wait(s, WARM_WAIT_NS), STORE_OK);
    CHECK(WAIT_UNTIL(stats(s).trimmer_wakeups == 0 && stats(s).window == 8 * MiB, 5));
    msleep(100);   /* the trimmer's first look: nothing to give back, it goes idle */
    for (int i = 0; i < 1000; i++) {
        CHECK_EQ(put(s, 1, 1 * MiB), STORE_OK);
        del(s, 1);
    }
    CHECK(stats(s).trimmer_wakeups <= 1);
    /* a free below the window does wake it (once, then it waits out the delay) */
    CHECK_EQ(put(s, 2, 12 * MiB), STORE_OK);
    CHECK_EQ(put(s, 3, 12 * MiB), STORE_OK);
    uint64_t before = stats(s).trimmer_wakeups;
    del(s, 2);
    CHECK_EQ(stats(s).trimmer_wakeups, before + 1);
    drop_store(s);
}

static void test_close_while_the_threads_work(void)
{
    /* the warmer is busy filling its 64 MiB, the trimmer giving a freed 100 MiB back */
    store_t *s = new_store(512 * MiB, 1, 64 * MiB, 128 * MiB, 1);
    CHECK_EQ(put(s, 1, 100 * MiB), STORE_OK);
    del(s, 1);
    store_stats_t st = stats(s);
    CHECK(st.window <= 128 * MiB);
    drop_store(s);
}

static void test_a_big_segment_is_released_by_a_detached_thread(void)
{
    store_t *s = new_store(512 * MiB, 1, 0, 0, 0);
    CHECK_EQ(put(s, 1, 300 * MiB), STORE_OK);    /* > 256 MiB held */
    int fd = store_fd(s);
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);          /* returns before the unmapping */
    CHECK_EQ(store_release_wait(30000000000ll), STORE_OK);
    CHECK(fcntl(fd, F_GETFD) == -1 && errno == EBADF);   /* and then the fd is gone */
    /* a small one closes at once */
    s = new_store(64 * MiB, 0, 0, 0, 0);
    fd = store_fd(s);
    drop_store(s);
    CHECK(fcntl(fd, F_GETFD) == -1 && errno == EBADF);
    CHECK_EQ(store_release_wait(0), STORE_OK);
}

int main(void)
{
    RUN(test_commit_map);
    RUN(test_idle_store_holds_its_tables_only);
    RUN(test_blocks_reserve_what_they_use);
    RUN(test_trim_gives_free_memory_back);
    RUN(test_trim_waits_for_the_delay_and_spares_the_window);
    RUN(test_trim_keeps_live_data_and_headers);
    RUN(test_random_use_and_trims);
    RUN(test_window_follows_use);
    RUN(test_window_tracks_growth);
    RUN(test_frees_in_the_window_leave_the_trimmer_asleep);
    RUN(test_close_while_the_threads_work);
    RUN(test_a_big_segment_is_released_by_a_detached_thread);
    CHECK_MAIN_END();
}
