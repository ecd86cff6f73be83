/* test_store.c -- the store API on a real /dev/shm segment: lifecycle, every status
 * code, pins and delayed deletes, slots, recovery equal to the pre-crash state, the
 * stale-segment sweep, fds, and a cross-process wait.  (Taking and giving back memory:
 * test_footprint.c.) */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "copy.h"
#include "store.h"

static void make_id(uint8_t *id, uint64_t k)
{
    memset(id, 0xee, STORE_ID_SIZE);
    memcpy(id, &k, sizeof k);
}

static store_t *new_store(uint64_t capacity, uint32_t max_objects, uint32_t max_slots)
{
    store_options_t o = {.capacity = capacity, .max_objects = max_objects, .max_slots = max_slots};
    store_t *s = NULL;
    int rc = store_create(&o, &s);
    CHECK_EQ(rc, STORE_OK);
    return s;
}

static void drop_store(store_t *s)
{
    CHECK_EQ(store_unlink(s), STORE_OK);
    CHECK_EQ(store_close(s), STORE_OK);
}

/* create + fill with a pattern + seal */
static void put(store_t *s, uint64_t k, uint64_t size)
{
    uint8_t id[STORE_ID_SIZE];
    make_id(id, k);
    store_obj_t o;
    CHECK_EQ(store_create_object(s, id, size, 16, &o), STORE_OK);
    for (uint64_t i = 0; i < size; i++)
        o.data[i] = (uint8_t)(k + i);
    memset(o.meta, (int)k, 16);
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
    int ok = o.data_size == size && o.meta_size == 16;
    for (uint64_t i = 0; ok && i < size; i++)
        ok = o.data[i] == (uint8_t)(k + i);
    ok = ok && o.meta[15] == (uint8_t)k;
    store_release(s, o.entry, id);
    return ok;
}

static void test_lifecycle(void)
{
    store_t *s = new_store(1 << 20, 0, 0);
    CHECK(strncmp(store_name(s), "/dev/shm/pygen-", 15) == 0);
    CHECK(access(store_name(s), F_OK) == 0);
    CHECK_EQ(store_slot(s), 0);
    CHECK_EQ(store_capacity(s), 1 << 20);
    CHECK(store_is_creator(s));
    CHECK(fcntl(store_fd(s), F_GETFD) & FD_CLOEXEC);
    struct stat st;
    CHECK_EQ(fstat(store_fd(s), &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0600);

    uint8_t id[STORE_ID_SIZE];
    make_id(id, 1);
    store_obj_t w, r;
    CHECK_EQ(store_create_object(s, id, 1000, 10, &w), STORE_OK);
    CHECK_EQ((uintptr_t)w.data % 64, 0);
    CHECK_EQ((uintptr_t)w.meta % 64, 0);
    CHECK_EQ(w.meta - w.data, 1024);
    memset(w.data, 7, 1000);
    memcpy(w.meta, "0123456789", 10);
    int present = 1;
    CHECK_EQ(store_contains(s, id, &present), STORE_OK);
    CHECK_EQ(present, 0);
    CHECK_EQ(store_seal(s, id), STORE_OK);
    CHECK_EQ(store_release(s, w.entry, id), STORE_OK);
    CHECK_EQ(store_contains(s, id, &present), STORE_OK);
    CHECK_EQ(present, 1);
    CHECK_EQ(store_get(s, id, 0, &r), STORE_OK);
    CHECK_EQ(r.data_size, 1000);
    CHECK_EQ(r.data[999], 7);
    CHECK(memcmp(r.meta, "0123456789", 10) == 0);
    store_info_t info;
    uint64_t bits[4];
    CHECK_EQ(store_info(s, id, &info, bits, 4), STORE_OK);
    CHECK_EQ(info.state, STORE_STATE_SEALED);
    CHECK_EQ(info.pins_here, 1);
    CHECK_EQ(info.npin_slots, 1);
    CHECK_EQ(bits[0], 1);
    CHECK_EQ(info.offset % 64, 0);
    store_stats_t stt;
    CHECK_EQ(store_stats(s, &stt), STORE_OK);
    CHECK_EQ(stt.objects, 1);
    CHECK_EQ(stt.sealed, 1);
    CHECK_EQ(stt.pinned, 1);
    CHECK_EQ(stt.used + stt.free, stt.capacity);
    CHECK_EQ(store_release(s, r.entry, id), STORE_OK);
    CHECK_EQ(store_release(s, r.entry, id), STORE_ERR_INVALID);   /* no pin left */
    int freed = 0;
    CHECK_EQ(store_delete(s, id, &freed), STORE_OK);
    CHECK_EQ(freed, 1);
    CHECK_EQ(store_stats(s, &stt), STORE_OK);
    CHECK_EQ(stt.objects, 0);
    CHECK_EQ(stt.used, 0);
    CHECK_EQ(stt.largest_free, 1 << 20);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    char path[256];
    snprintf(path, sizeof path, "%s", store_name(s));
    drop_store(s);
    CHECK(access(path, F_OK) != 0);
}

static void test_status_codes(void)
{
    store_t *s = new_store(64 << 10, 4, 1);
    uint8_t id[STORE_ID_SIZE], id2[STORE_ID_SIZE];
    make_id(id, 1);
    make_id(id2, 2);
    store_obj_t o, o2;
    int freed;
    CHECK_EQ(store_create_object(s, id, 100, 0, &o), STORE_OK);
    CHECK_EQ(store_create_object(s, id, 100, 0, &o2), STORE_ERR_EXISTS);
    CHECK_EQ(store_get(s, id, 0, &o2), STORE_ERR_NOT_SEALED);
    CHECK_EQ(store_delete(s, id, &freed), STORE_ERR_NOT_SEALED);
    CHECK_EQ(store_get(s, id2, 0, &o2), STORE_ERR_ABSENT);
    CHECK_EQ(store_seal(s, id2), STORE_ERR_ABSENT);
    CHECK_EQ(store_delete(s, id2, &freed), STORE_ERR_ABSENT);
    CHECK_EQ(store_abort(s, id2), STORE_ERR_ABSENT);
    CHECK_EQ(store_get(s, id2, 20 * 1000000ll, &o2), STORE_ERR_TIMEOUT);
    CHECK_EQ(store_wait_sealed(s, id, 1000000ll), STORE_ERR_TIMEOUT);
    CHECK_EQ(store_seal(s, id), STORE_OK);
    CHECK_EQ(store_wait_sealed(s, id, 0), STORE_OK);
    CHECK_EQ(store_seal(s, id), STORE_ERR_INVALID);
    CHECK(strstr(store_last_error(), "already sealed") != NULL);
    CHECK_EQ(store_abort(s, id), STORE_ERR_INVALID);
    CHECK_EQ(store_create_object(s, id2, 65 << 10, 0, &o2), STORE_ERR_TOO_LARGE);
    CHECK_EQ(store_create_object(s, id2, (64 << 10) - 128, 0, &o2), STORE_ERR_FULL);
    for (uint64_t k = 10; k < 13; k++)
        put(s, k, 10);
    CHECK_EQ(store_create_object(s, id2, 10, 0, &o2), STORE_ERR_TABLE_FULL);
    store_t *other = NULL;
    CHECK_EQ(store_attach(store_name(s), 0, &other), STORE_ERR_NO_SLOT);
    CHECK_EQ(store_attach("/dev/shm/pygen-no-such-segment", 0, &other), STORE_ERR_ABSENT);
    CHECK_EQ(store_release_slot(s, 0, 0, &(uint64_t){0}), STORE_ERR_INVALID);
    CHECK_EQ(store_release_slot(s, 5, 0, &(uint64_t){0}), STORE_ERR_INVALID);
    CHECK_EQ(store_release(s, o.entry, id), STORE_OK);
    CHECK_EQ(store_check(s, NULL), STORE_OK);

    store_options_t bad = {.capacity = 100};
    CHECK_EQ(store_create(&bad, &other), STORE_ERR_INVALID);
    bad.capacity = 1 << 20;
    bad.max_slots = 5000;
    CHECK_EQ(store_create(&bad, &other), STORE_ERR_INVALID);
    /* a segment larger than /dev/shm's free space is refused up front */
    struct statvfs sv;
    CHECK_EQ(statvfs("/dev/shm", &sv), 0);
    store_options_t huge = {.capacity = (uint64_t)sv.f_bavail * sv.f_frsize + (1ull << 30)};
    CHECK_EQ(store_create(&huge, &other), STORE_ERR_NOSPC);
    CHECK(strstr(store_last_error(), "/dev/shm has") != NULL);
    CHECK_EQ(store_debug_crash_at(99, 1), STORE_ERR_INVALID);
    drop_store(s);
}

static void test_delete_pending_and_abort(void)
{
    store_t *s = new_store(1 << 20, 0, 0);
    uint8_t id[STORE_ID_SIZE];
    make_id(id, 5);
    put(s, 5, 5000);
    store_obj_t r1, r2;
    CHECK_EQ(store_get(s, id, 0, &r1), STORE_OK);
    CHECK_EQ(store_get(s, id, 0, &r2), STORE_OK);   /* two pins, one slot bit */
    store_info_t info;
    CHECK_EQ(store_info(s, id, &info, NULL, 0), STORE_OK);
    CHECK_EQ(info.pins_here, 2);
    CHECK_EQ(info.npin_slots, 1);
    int freed = 1;
    CHECK_EQ(store_delete(s, id, &freed), STORE_OK);
    CHECK_EQ(freed, 0);
    CHECK_EQ(store_get(s, id, 0, &r1), STORE_ERR_ABSENT);
    CHECK_EQ(store_delete(s, id, &freed), STORE_ERR_ABSENT);
    CHECK_EQ(store_info(s, id, &info, NULL, 0), STORE_OK);
    CHECK(info.delete_pending);
    store_stats_t st;
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.delete_pending, 1);
    CHECK_EQ(r2.data[10], (uint8_t)(5 + 10));   /* still readable */
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    CHECK_EQ(store_release(s, r2.entry, id), STORE_OK);
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 1);
    CHECK_EQ(store_release(s, r2.entry, id), STORE_OK);
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 0);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.delete_pending, 0);

    /* abort while the writer still pins: the id is free at once, memory when unpinned */
    store_obj_t w, w2;
    CHECK_EQ(store_create_object(s, id, 100, 0, &w), STORE_OK);
    CHECK_EQ(store_abort(s, id), STORE_OK);
    CHECK_EQ(store_info(s, id, &info, NULL, 0), STORE_ERR_ABSENT);
    CHECK_EQ(store_create_object(s, id, 200, 0, &w2), STORE_OK);   /* same id again */
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 2);
    CHECK_EQ(store_release(s, w.entry, id), STORE_OK);   /* the orphan goes */
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 1);
    CHECK_EQ(store_abort(s, id), STORE_OK);
    CHECK_EQ(store_release(s, w2.entry, id), STORE_OK);
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_slots(void)
{
    store_t *s = new_store(1 << 20, 0, 8);
    store_t *b = NULL;
    CHECK_EQ(store_attach(store_name(s), 0, &b), STORE_OK);
    CHECK_EQ(store_slot(b), 1);
    CHECK(!store_is_creator(b));
    store_slot_info_t sl[8];
    size_t n;
    CHECK_EQ(store_slots(s, sl, 8, &n), STORE_OK);
    CHECK_EQ(n, 2);
    CHECK_EQ(sl[1].slot, 1);
    CHECK_EQ(sl[1].pid, getpid());
    put(s, 1, 100);
    put(s, 2, 100);
    uint8_t id1[STORE_ID_SIZE], id2[STORE_ID_SIZE], id3[STORE_ID_SIZE];
    make_id(id1, 1);
    make_id(id2, 2);
    make_id(id3, 3);
    store_obj_t r, w;
    CHECK_EQ(store_get(b, id1, 0, &r), STORE_OK);
    CHECK_EQ(store_get(b, id2, 0, &r), STORE_OK);
    CHECK_EQ(store_get(b, id2, 0, &r), STORE_OK);
    CHECK_EQ(store_create_object(b, id3, 100, 0, &w), STORE_OK);   /* unsealed, by b */
    int freed;
    CHECK_EQ(store_delete(s, id1, &freed), STORE_OK);
    CHECK_EQ(freed, 0);
    CHECK_EQ(store_seal(s, id3), STORE_ERR_INVALID);   /* only its creator seals it */
    uint64_t dropped = 0;
    CHECK_EQ(store_release_slot(s, 1, 12345, &dropped), STORE_OK);   /* wrong pid: no-op */
    CHECK_EQ(dropped, 0);
    CHECK_EQ(store_release_slot(s, 1, (uint32_t)getpid(), &dropped), STORE_OK);
    CHECK_EQ(dropped, 3);   /* id1, id2 and the writer pin of id3 */
    store_stats_t st;
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 1);   /* id1 freed (delete pending), id3 aborted, id2 stays */
    CHECK_EQ(st.pinned, 0);
    CHECK_EQ(st.slots_in_use, 1);
    CHECK_EQ(store_release_slot(s, 1, 0, &dropped), STORE_OK);   /* not in use: nothing */
    CHECK_EQ(dropped, 0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    CHECK_EQ(store_close(b), STORE_OK);   /* its slot was released for it: close is quiet */
    CHECK_EQ(store_check(s, NULL), STORE_OK);

    /* close releases pins and aborts unsealed objects */
    CHECK_EQ(store_attach(store_name(s), 0, &b), STORE_OK);
    CHECK_EQ(store_get(b, id2, 0, &r), STORE_OK);
    CHECK_EQ(store_create_object(b, id3, 100, 0, &w), STORE_OK);
    CHECK_EQ(store_close(b), STORE_OK);
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.objects, 1);
    CHECK_EQ(st.pinned, 0);
    CHECK_EQ(st.slots_in_use, 1);
    CHECK_EQ(store_check(s, NULL), STORE_OK);

    /* attach by fd */
    int fd = dup(store_fd(s));
    CHECK_EQ(store_attach_fd(fd, 0, &b), STORE_OK);
    CHECK(strcmp(store_name(b), store_name(s)) == 0);
    CHECK(fcntl(store_fd(b), F_GETFD) & FD_CLOEXEC);
    CHECK_EQ(intact(b, 2, 100), 1);
    CHECK_EQ(store_close(b), STORE_OK);
    CHECK_EQ(store_attach_fd(-1, 0, &b), STORE_ERR_SYS);
    drop_store(s);
}

/* Random operations, then a rebuild from the entry array: same objects, same pins,
 * same allocator layout (free blocks are maximal both before and after). */
static void test_recovery_equals_precrash(void)
{
    store_t *s = new_store(4 << 20, 512, 0);
    unsigned long long rng = 2024;
    store_obj_t pinned[64];
    uint8_t pinned_id[64][STORE_ID_SIZE];
    int npinned = 0;
    for (int step = 0; step < 3000; step++) {
        uint64_t k = rng_next(&rng) % 400;
        uint8_t id[STORE_ID_SIZE];
        make_id(id, k);
        int op = (int)(rng_next(&rng) % 4);
        store_obj_t o;
        int freed;
        if (op == 0) {
            if (store_create_object(s, id, rng_next(&rng) % 20000, rng_next(&rng) % 100, &o) == STORE_OK) {
                if (rng_next(&rng) % 4)
                    store_seal(s, id);
                store_release(s, o.entry, id);
            }
        } else if (op == 1 && npinned < 64) {
            if (store_get(s, id, 0, &o) == STORE_OK) {
                pinned[npinned] = o;
                memcpy(pinned_id[npinned++], id, STORE_ID_SIZE);
            }
        } else if (op == 2) {
            store_delete(s, id, &freed);
        } else if (npinned > 0) {
            npinned--;
            CHECK_EQ(store_release(s, pinned[npinned].entry, pinned_id[npinned]), STORE_OK);
        }
    }
    store_report_t before, after;
    CHECK_EQ(store_check(s, &before), STORE_OK);
    size_t n_before;
    static uint8_t ids_before[512 * STORE_ID_SIZE], ids_after[512 * STORE_ID_SIZE];
    CHECK_EQ(store_list(s, ids_before, 512, &n_before), STORE_OK);
    store_info_t infos[512];
    for (size_t i = 0; i < n_before; i++)
        CHECK_EQ(store_info(s, ids_before + i * STORE_ID_SIZE, &infos[i], NULL, 0), STORE_OK);

    CHECK_EQ(store_debug_recover(s), STORE_OK);

    CHECK_EQ(store_check(s, &after), STORE_OK);
    CHECK_EQ(after.blocks, before.blocks);
    CHECK_EQ(after.free_blocks, before.free_blocks);
    CHECK_EQ(after.used, before.used);
    CHECK_EQ(after.largest_free, before.largest_free);
    CHECK_EQ(after.objects, before.objects);
    CHECK_EQ(after.sealed, before.sealed);
    CHECK_EQ(after.pinned, before.pinned);
    CHECK_EQ(after.delete_pending, before.delete_pending);
    size_t n_after;
    CHECK_EQ(store_list(s, ids_after, 512, &n_after), STORE_OK);
    CHECK_EQ(n_after, n_before);
    CHECK(memcmp(ids_before, ids_after, n_before * STORE_ID_SIZE) == 0);
    for (size_t i = 0; i < n_after; i++) {
        store_info_t inf;
        CHECK_EQ(store_info(s, ids_after + i * STORE_ID_SIZE, &inf, NULL, 0), STORE_OK);
        CHECK(memcmp(&inf, &infos[i], sizeof inf) == 0);
    }
    store_stats_t st;
    CHECK_EQ(store_stats(s, &st), STORE_OK);
    CHECK_EQ(st.recoveries, 1);
    while (npinned > 0) {
        npinned--;
        CHECK_EQ(store_release(s, pinned[npinned].entry, pinned_id[npinned]), STORE_OK);
    }
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

static void test_stale_sweep(void)
{
    pid_t child = check_fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);   /* now a dead pid */
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/pygen-%d-00000000deadbeef", (int)child);
    int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    close(fd);
    char live[256];   /* a segment of a live process (ours) survives the sweep */
    snprintf(live, sizeof live, "/dev/shm/pygen-%d-00000000cafef00d", (int)getpid());
    fd = open(live, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    close(fd);
    store_t *s = new_store(1 << 20, 0, 0);
    CHECK(access(path, F_OK) != 0);
    CHECK(access(live, F_OK) == 0);
    unlink(live);
    drop_store(s);
}

static void test_wait_cross_process(void)
{
    store_t *s = new_store(1 << 20, 0, 0);
    uint8_t id[STORE_ID_SIZE];
    make_id(id, 77);
    char name[256];
    snprintf(name, sizeof name, "%s", store_name(s));
    pid_t child = check_fork();
    if (child == 0) {
        store_t *c = NULL;
        if (store_attach(name, 0, &c) != STORE_OK)
            _exit(2);
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
        store_obj_t w;
        if (store_create_object(c, id, 64, 0, &w) != STORE_OK)
            _exit(3);
        w.data[0] = 42;
        if (store_seal(c, id) != STORE_OK)
            _exit(4);
        store_release(c, w.entry, id);
        store_close(c);
        _exit(0);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    store_obj_t r;
    CHECK_EQ(store_get(s, id, 5ll * 1000000000ll, &r), STORE_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(waited < 2.0);
    CHECK_EQ(r.data[0], 42);
    CHECK_EQ(store_release(s, r.entry, id), STORE_OK);
    int status;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint8_t other[STORE_ID_SIZE];
    make_id(other, 78);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_EQ(store_wait_sealed(s, other, 150 * 1000000ll), STORE_ERR_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(waited >= 0.149 && waited < 1.0);
    CHECK_EQ(store_check(s, NULL), STORE_OK);
    drop_store(s);
}

/* store_copy: chunked and parallel, every byte exactly once, odd sizes and offsets. */
static void test_copy(void)
{
    size_t sizes[] = {0, 1, 63, 4097, (size_t)COPY_PARALLEL_MIN - 1, (size_t)COPY_PARALLEL_MIN + 12345,
                      (size_t)COPY_CHUNK * 2 + 777};
    size_t maxn = sizes[sizeof sizes / sizeof *sizes - 1] + 16;
    uint8_t *src = malloc(maxn), *dst = malloc(maxn + 2);
    unsigned long long rng = 5;
    for (size_t i = 0; i < maxn; i += 8) {
        unsigned long long v = rng_next(&rng);
        memcpy(src + i, &v, maxn - i < 8 ? maxn - i : 8);
    }
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        memset(dst, 0xab, n + 2);
        store_copy(dst + 1, src + 3, n);   /* unaligned on both sides */
        CHECK(memcmp(dst + 1, src + 3, n) == 0);
        CHECK_EQ(dst[0], 0xab);
        CHECK_EQ(dst[n + 1], 0xab);
    }
    free(src);
    free(dst);
}

/* store_copy_skew: 64-aligned, at most COPY_SKEW_ROOM, lands on the source's page offset
 * rounded down to 64, for every pair of page offsets (addresses only, nothing touched). */
static void test_copy_skew(void)
{
    uintptr_t dst_base = (uintptr_t)1 << 30, src_base = (uintptr_t)3 << 30;
    for (uintptr_t d = 0; d < 2 * COPY_PAGE; d += COPY_ALIGN) {
        for (uintptr_t s = 0; s < 2 * COPY_PAGE; s += 8) {
            size_t skew = store_copy_skew((const void *)(dst_base + d),
                                          (const void *)(src_base + s));
            CHECK(skew <= COPY_SKEW_ROOM);
            CHECK_EQ(skew % COPY_ALIGN, 0);
            CHECK_EQ((dst_base + d + skew) % COPY_PAGE, (src_base + s) % COPY_PAGE / COPY_ALIGN * COPY_ALIGN);
        }
    }
}

int main(void)
{
    RUN(test_copy);
    RUN(test_copy_skew);
    RUN(test_lifecycle);
    RUN(test_status_codes);
    RUN(test_delete_pending_and_abort);
    RUN(test_slots);
    RUN(test_recovery_equals_precrash);
    RUN(test_stale_sweep);
    RUN(test_wait_cross_process);
    CHECK_MAIN_END();
}
