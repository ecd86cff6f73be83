/* reserve.c -- reservation, holes, population, background threads (concept in reserve.h). */
#include "reserve.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#include "status.h"
#include "wait.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23   /* Linux >= 5.14 */
#endif

int reserve_range(int fd, uint64_t off, uint64_t len)
{
    if (len == 0)
        return STORE_OK;
    for (;;) {
        if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0)
            return STORE_OK;
        if (errno == EINTR)
            continue;
        if (errno == ENOSPC)
            return store_fail(STORE_ERR_NOSPC, "/dev/shm is full: cannot reserve %llu bytes at offset %llu",
                              (unsigned long long)len, (unsigned long long)off);
        if (errno == EOPNOTSUPP)
            return STORE_OK;   /* a file system without holes to fill: nothing to reserve */
        return store_fail_sys(errno, "fallocate(%llu, %llu)", (unsigned long long)off,
                              (unsigned long long)len);
    }
}

int release_range(int fd, uint64_t off, uint64_t len)
{
    if (len == 0)
        return STORE_OK;
    for (;;) {
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
            return STORE_OK;
        if (errno == EINTR)
            continue;
        if (errno == EOPNOTSUPP || errno == ENOSYS)
            return STORE_OK;
        return store_fail_sys(errno, "fallocate(PUNCH_HOLE, %llu, %llu)", (unsigned long long)off,
                              (unsigned long long)len);
    }
}

void reserve_populate(uint8_t *addr, uint64_t len)
{
    madvise(addr, len, MADV_POPULATE_WRITE);
}

typedef struct map_job {
    uint8_t *addr;
    uint64_t len;
    _Atomic uint64_t next;
    _Atomic int err;
} map_job_t;

static void *map_pieces(void *arg)
{
    map_job_t *j = arg;
    for (;;) {
        uint64_t off = atomic_fetch_add(&j->next, RESERVE_MAP_PIECE);
        if (off >= j->len || atomic_load(&j->err))
            return NULL;
        uint64_t n = j->len - off < RESERVE_MAP_PIECE ? j->len - off : RESERVE_MAP_PIECE;
        if (madvise(j->addr + off, n, MADV_POPULATE_WRITE) != 0) {
            int e = errno;
            int none = 0;
            atomic_compare_exchange_strong(&j->err, &none, e ? e : EIO);
            return NULL;
        }
    }
}

int reserve_map(uint8_t *addr, uint64_t len, int threads)
{
    map_job_t j = {.addr = addr, .len = len};
    atomic_store(&j.next, 0);
    atomic_store(&j.err, 0);
    if (threads > 8)
        threads = 8;
    pthread_t tids[8];
    int started[8] = {0};
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&tids[i], NULL, map_pieces, &j) == 0;
    map_pieces(&j);
    for (int i = 1; i < threads; i++)
        if (started[i])
            pthread_join(tids[i], NULL);
    return atomic_load(&j.err);
}

static void *bg_main(void *arg)
{
    bg_thread_t *t = arg;
    if (t->idle_policy) {
        struct sched_param sp;
        memset(&sp, 0, sizeof sp);
        pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    }
    if (t->name)
        pthread_setname_np(pthread_self(), t->name);
    while (!atomic_load(&t->stop)) {
        uint32_t seen = atomic_load(t->kick);
        int64_t ns = t->step(t->ctx);
        if (ns == 0)
            continue;
        if (ns < 0 || ns > BG_MAX_SLEEP_NS)
            ns = BG_MAX_SLEEP_NS;
        atomic_store(&t->sleeping, 1);
        if (!atomic_load(&t->stop))
            wait_sleep(t->kick, seen, ns);
        atomic_store(&t->sleeping, 0);
    }
    return NULL;
}

int bg_start(bg_thread_t *t)
{
    atomic_store(&t->stop, 0);
    atomic_store(&t->sleeping, 0);
    int r = pthread_create(&t->thread, NULL, bg_main, t);
    if (r != 0)
        return store_fail_sys(r, "pthread_create (%s)", t->name ? t->name : "store thread");
    t->running = 1;
    return STORE_OK;
}

void bg_stop(bg_thread_t *t)
{
    if (!t->running)
        return;
    atomic_store(&t->stop, 1);
    atomic_fetch_add(t->kick, 1);
    wait_wake_all(t->kick);
    pthread_join(t->thread, NULL);
    t->running = 0;
}
