/* test_crash.c -- SIGKILL at every crash point, while holding the lock, mid-recovery,
 * and at random instants under concurrent load.  After each kill the parent must find
 * the store consistent (store_check), its own objects intact, and go on allocating. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "fault.h"
#include "store.h"

#define PARENT_OBJECTS 24

static char g_name[256];

static void make_id(uint8_t *id, uint64_t k)
{
    memset(id, 0x5a, STORE_ID_SIZE);
    memcpy(id, &k, sizeof k);
}

static uint64_t parent_size(int i) { return 100 + (uint64_t)i * 997; }

static void put(store_t *s, uint64_t k, uint64_t size)
{
    uint8_t id[STORE_ID_SIZE];
    make_id(id, k);
    store_obj_t o;
    int rc = store_create_object(s, id, size, 8, &o);
    CHECK_EQ(rc, STORE_OK);
    if (rc != STORE_OK)
        return;   /* o is not filled in: report, do not write through it */
    for (uint64_t i = 0; i < size; i++)
        o.data[i] = (uint8_t)(k * 31 + i);
    CHECK_EQ(store_seal(s, id), STORE_OK);
    CHECK_EQ(store_release(s, o.entry, id), STORE_OK);
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
        ok = o.data[i] == (uint8_t)(k * 31 + i);
    store_release(s, o.entry, id);
    return ok;
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000l};
    nanosleep(&ts, NULL);
}

/* What a child does until it is killed: every kind of operation, on its own ids and on
 * the parent's objects (pins), memory given back and taken again included. */
static void workload(store_t *c, unsigned long long seed, long iterations)
{
    uint64_t base = (uint64_t)getpid() << 20;
    for (long i = 0; iterations < 0 || i < iterations; i++) {
        if (i % 16 == 0)
            store_trim(c, STORE_TRIM_ALL, NULL);   /* free chunks punched: reserved again later */
        else if (i % 16 == 8)
            store_warm(c, NULL);                   /* the window above the high-water mark */
        uint8_t id[STORE_ID_SIZE], pid_[STORE_ID_SIZE];
        make_id(id, base + (uint64_t)i);
        store_obj_t w, r;
        uint64_t size = 64 + rng_next(&seed) % 30000;
        if (store_create_object(c, id, size, 8, &w) == STORE_OK) {
            memset(w.data, 0xcc, size);
            if (rng_next(&seed) % 8 == 0) {
                store_abort(c, id);
                store_release(c, w.entry, id);
                continue;
            }
            store_seal(c, id);
            store_release(c, w.entry, id);
        }
        make_id(pid_, 1 + rng_next(&seed) % PARENT_OBJECTS);
        int have = store_get(c, pid_, 0, &r) == STORE_OK;
        if (store_get(c, id, 0, &w) == STORE_OK) {
            int freed;
            store_delete(c, id, &freed);     /* pinned: delete pending ... */
            store_release(c, w.entry, id);   /* ... freed by this unpin */
        }
        if (have)
            store_release(c, r.entry, pid_);
    }
}

/* Fork a child that attaches, arms `point`, and works until the point kills it. */
static pid_t spawn(int point, int countdown, unsigned long long seed, long iterations)
{
    pid_t p = check_fork();
    if (p == 0) {
        store_t *c = NULL;
        if (point == FAULT_RECOVER || point == FAULT_REBUILD_BEGIN)   /* attach recovers */
            store_debug_crash_at(point, countdown);
        if (store_attach(g_name, 0, &c) != STORE_OK)
            _exit(3);
        if (point != FAULT_RECOVER && point != FAULT_REBUILD_BEGIN)
            store_debug_crash_at(point, countdown);
        workload(c, seed, iterations);
        store_close(c);
        _exit(0);
    }
    return p;
}

static int killed_by_sigkill(pid_t p)
{
    int status = 0;
    while (waitpid(p, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

/* After a child died: consistent, parent's data intact, dead slots reaped, orphans of
 * the child deleted, and allocation still works. */
static void verify_after(store_t *s, const char *what)
{
    store_report_t r;
    int rc = store_check(s, &r);   /* takes the lock: recovers if the child held it */
    CHECK_EQ(rc, STORE_OK);
    if (rc != STORE_OK)
        fprintf(stderr, "  after %s: %s\n", what, store_last_error());
    uint32_t reaped;
    CHECK_EQ(store_reap(s, &reaped), STORE_OK);
    for (int i = 1; i <= PARENT_OBJECTS; i++)
        CHECK(intact(s, (uint64_t)i, parent_size(i)));
    /* delete whatever the children left sealed */
    static uint8_t ids[4096 * STORE_ID_SIZE];
    size_t n;
    CHECK_EQ(store_list(s, ids, 4096, &n), STORE_OK);
    for (size_t i = 0; i < n && i < 4096; i++) {
        uint64_t k;
        memcpy(&k, ids + i * STORE_ID_SIZE, sizeof k);
        if (k > PARENT_OBJECTS) {
            int freed;
            int drc = store_delete(s, ids + i * STORE_ID_SIZE, &freed);
            CHECK(drc == STORE_OK || drc == STORE_ERR_NOT_SEALED);
            CHECK(drc != STORE_OK || freed);
        }
    }
    store_stats_t st;
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, PARENT_OBJECTS);   /* unsealed leftovers were aborted by the reap */
    CHECK_EQ(st.pinned, 0);
    CHECK_EQ(st.slots_in_use, 1);
    CHECK_EQ(st.used + st.free, st.capacity);
    uint64_t lies = 1;
    CHECK_EQ(store_debug_commit_lies(s, &lies), STORE_OK);
    CHECK_EQ(lies, 0);                      /* no committed chunk is a hole */
    put(s, 999999, 50000);
    uint8_t id[STORE_ID_SIZE];
    make_id(id, 999999);
    int freed;
    CHECK_EQ(store_delete(s, id, &freed), STORE_OK);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
}

static store_t *setup(void)
{
    store_options_t o = {.capacity = 8 << 20, .max_objects = 2048};
    store_t *s = NULL;
    CHECK_EQ(store_create(&o, &s), STORE_OK);
    snprintf(g_name, sizeof g_name, "%s", store_name(s));
    for (int i = 1; i <= PARENT_OBJECTS; i++)
        put(s, (uint64_t)i, parent_size(i));
    return s;
}

static void test_every_crash_point(void)
{
    store_t *s = setup();
    static const int points[] = {
        FAULT_ALLOC_SPLIT, FAULT_ALLOC_SPLIT_HALF, FAULT_FREE_COALESCE, FAULT_FREE_MERGED,
        FAULT_CREATE_FILLED, FAULT_CREATE_PUBLISHED, FAULT_CREATE_INDEXED, FAULT_SEAL,
        FAULT_PIN, FAULT_UNPIN, FAULT_DELETE_STATE, FAULT_DELETE_UNINDEXED, FAULT_DELETE_FREED,
        FAULT_WARM_RESERVED, FAULT_WARM_COMMIT, FAULT_PURGE_CLEARED, FAULT_PURGE_PUNCHED,
        FAULT_CREATE_RESERVED,
    };
    static const int countdowns[] = {1, 2, 5, 13};
    int kills = 0;
    for (size_t p = 0; p < sizeof points / sizeof *points; p++) {
        for (size_t c = 0; c < sizeof countdowns / sizeof *countdowns; c++) {
            store_stats_t before;
            store_stats(s, &before);
            pid_t child = spawn(points[p], countdowns[c], p * 100 + c + 1, 10000);
            int k = killed_by_sigkill(child);
            CHECK(k);
            if (!k)
                fprintf(stderr, "  point %d countdown %d: child was not killed\n", points[p], countdowns[c]);
            kills += k;
            char what[64];
            snprintf(what, sizeof what, "point %d countdown %d", points[p], countdowns[c]);
            verify_after(s, what);
            store_stats_t after;
            store_stats(s, &after);
            /* every point but two is inside the lock: its owner died holding it */
            int outside = points[p] == FAULT_WARM_RESERVED || points[p] == FAULT_CREATE_RESERVED;
            CHECK_EQ(after.recoveries, before.recoveries + !outside);
        }
    }
    printf("  %d children killed at crash points, store recovered each time\n", kills);
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

static void test_kill_holding_lock(void)
{
    store_t *s = setup();
    for (int round = 0; round < 5; round++) {
        store_stats_t before, after;
        store_stats(s, &before);
        int pfd[2];
        CHECK_EQ(pipe(pfd), 0);
        pid_t child = check_fork();
        if (child == 0) {
            store_t *c = NULL;
            if (store_attach(g_name, 0, &c) != STORE_OK)
                _exit(3);
            /* hold a pin and an unsealed object, then the lock */
            uint8_t id[STORE_ID_SIZE];
            make_id(id, 1);
            store_obj_t r, w;
            store_get(c, id, 0, &r);
            make_id(id, 5000 + (uint64_t)round);
            store_create_object(c, id, 1000, 0, &w);
            if (write(pfd[1], "x", 1) != 1)
                _exit(4);
            store_debug_hold_lock(c, 20000);
            _exit(0);
        }
        char buf;
        CHECK_EQ(read(pfd[0], &buf, 1), 1);
        close(pfd[0]);
        close(pfd[1]);
        msleep(30);
        kill(child, SIGKILL);
        CHECK(killed_by_sigkill(child));
        verify_after(s, "kill holding the lock");
        store_stats(s, &after);
        CHECK_EQ(after.recoveries, before.recoveries + 1);
    }
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

/* Die holding the lock, then the next locker dies while recovering: just after it
 * cleared the allocator's counters (rebuild_begin), or halfway through re-adding blocks
 * (recover).  A rebuild_begin that zeroed the arena's size for an instant once left a
 * store that refused every allocation after such a death. */
static void test_kill_during_recovery(void)
{
    static const int points[] = {FAULT_REBUILD_BEGIN, FAULT_RECOVER};
    for (size_t i = 0; i < sizeof points / sizeof *points; i++) {
        store_t *s = setup();
        pid_t a = spawn(FAULT_CREATE_FILLED, 3, 7, 10000);
        CHECK(killed_by_sigkill(a));
        pid_t b = spawn(points[i], 1, 8, 10000);
        CHECK(killed_by_sigkill(b));
        verify_after(s, "kill during recovery");
        CHECK_EQ(store_unlink(s), STORE_OK);
        CHECK_EQ(store_close(s), STORE_OK);
    }
}

/* A process releasing another's slot dies halfway. */
static void test_kill_during_release_slot(void)
{
    store_t *s = setup();
    int pfd[2];
    CHECK_EQ(pipe(pfd), 0);
    pid_t holder = check_fork();
    if (holder == 0) {
        store_t *c = NULL;
        if (store_attach(g_name, 0, &c) != STORE_OK)
            _exit(3);
        for (int i = 1; i <= PARENT_OBJECTS; i++) {
            uint8_t id[STORE_ID_SIZE];
            make_id(id, (uint64_t)i);
            store_obj_t r;
            store_get(c, id, 0, &r);
        }
        uint32_t slot = store_slot(c);
        if (write(pfd[1], &slot, sizeof slot) != sizeof slot)
            _exit(4);
        pause();
        _exit(0);
    }
    uint32_t slot;
    CHECK_EQ(read(pfd[0], &slot, sizeof slot), (ssize_t)sizeof slot);
    close(pfd[0]);
    close(pfd[1]);
    uint8_t id[STORE_ID_SIZE];
    make_id(id, 3);
    int freed;
    CHECK_EQ(store_delete(s, id, &freed), STORE_OK);   /* pending on the holder's pin */
    CHECK_EQ(freed, 0);
    pid_t releaser = check_fork();
    if (releaser == 0) {
        store_t *c = NULL;
        if (store_attach(g_name, 0, &c) != STORE_OK)
            _exit(3);
        store_debug_crash_at(FAULT_RELEASE_SLOT, 10);
        uint64_t dropped;
        store_release_slot(c, slot, 0, &dropped);
        _exit(0);
    }
    CHECK(killed_by_sigkill(releaser));
    kill(holder, SIGKILL);
    CHECK(killed_by_sigkill(holder));
    /* object 3 is gone with the last pin; put it back so verify_after finds it */
    store_report_t r;
    CHECK_EQ(store_check(s, &r), STORE_OK);
    uint32_t reaped;
    CHECK_EQ(store_reap(s, &reaped), STORE_OK);
    store_info_t info;
    CHECK_EQ(store_info(s, id, &info, NULL, 0), STORE_ERR_ABSENT);
    put(s, 3, parent_size(3));
    verify_after(s, "kill during release_slot");
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

/* Children hammer the store concurrently; the parent kills one at a random instant, 50
 * times, while itself allocating; then everything must add up. */
static void test_random_kills_under_load(void)
{
    store_t *s = setup();
    unsigned long long rng = 77;
    enum { NCHILD = 2 };
    pid_t kids[NCHILD];
    for (int i = 0; i < NCHILD; i++)
        kids[i] = spawn(FAULT_NONE, 0, rng_next(&rng), -1);
    int kills = 0;
    for (int round = 0; round < 50; round++) {
        msleep(1 + (int)(rng_next(&rng) % 10));
        int k = (int)(rng_next(&rng) % NCHILD);
        kill(kids[k], SIGKILL);
        CHECK(killed_by_sigkill(kids[k]));
        kills++;
        /* the parent goes on working, then the dead child's slot is released */
        put(s, 100000 + (uint64_t)round, 3000);
        CHECK(intact(s, 100000 + (uint64_t)round, 3000));
        uint8_t id[STORE_ID_SIZE];
        make_id(id, 100000 + (uint64_t)round);
        int freed;
        CHECK_EQ(store_delete(s, id, &freed), STORE_OK);
        uint32_t reaped;
        CHECK_EQ(store_reap(s, &reaped), STORE_OK);
        kids[k] = spawn(FAULT_NONE, 0, rng_next(&rng), -1);
    }
    for (int i = 0; i < NCHILD; i++) {
        kill(kids[i], SIGKILL);
        killed_by_sigkill(kids[i]);
    }
    store_stats_t st;
    store_stats(s, &st);
    printf("  %d random kills under load; %llu recoveries of a dead lock owner\n", kills,
           (unsigned long long)st.recoveries);
    verify_after(s, "random kills");
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

int main(void)
{
    RUN(test_every_crash_point);
    RUN(test_kill_holding_lock);
    RUN(test_kill_during_recovery);
    RUN(test_kill_during_release_slot);
    RUN(test_random_kills_under_load);
    CHECK_MAIN_END();
}
