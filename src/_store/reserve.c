/* reserve.c -- fallocate-based reservation and the pre-fault thread (concept in reserve.h). */
#include "reserve.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#include "status.h"

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

void reserve_advance(_Atomic uint64_t *upto, uint64_t from, uint64_t to)
{
    uint64_t cur = atomic_load(upto);
    while (from <= cur && to > cur) {
        if (atomic_compare_exchange_weak(upto, &cur, to))
            break;
    }
}

void reserve_populate(uint8_t *addr, uint64_t len)
{
    madvise(addr, len, MADV_POPULATE_WRITE);
}

static void *prefault_main(void *arg)
{
    prefaulter_t *p = arg;
    /* Only idle CPU: the pre-fault must never slow down the work it prepares for. */
    struct sched_param sp;
    memset(&sp, 0, sizeof sp);
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);

    int populate = 1;
    uint64_t off = 0;
    while (off < p->size && !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
        uint64_t end = off + PREFAULT_CHUNK < p->size ? off + PREFAULT_CHUNK : p->size;
        if (end > atomic_load(p->upto)) {
            if (reserve_range(p->fd, p->file_off + off, end - off) != STORE_OK) {
                atomic_store(&p->done, 2);   /* /dev/shm full: blocks reserve themselves */
                return NULL;
            }
            reserve_advance(p->upto, off, end);
        }
        if (populate && madvise(p->base + off, end - off, MADV_POPULATE_WRITE) != 0) {
            if (errno == EINVAL)
                populate = 0;   /* kernel older than 5.14: reservation alone still helps */
        }
        off = end;
        atomic_store_explicit(&p->progress, off, memory_order_relaxed);
    }
    atomic_store(&p->done, 1);
    return NULL;
}

int prefault_start(prefaulter_t *p)
{
    atomic_store(&p->stop, 0);
    atomic_store(&p->progress, 0);
    atomic_store(&p->done, 0);
    int r = pthread_create(&p->thread, NULL, prefault_main, p);
    if (r != 0)
        return store_fail_sys(r, "pthread_create (prefault)");
    p->running = 1;
    return STORE_OK;
}

void prefault_stop(prefaulter_t *p)
{
    if (!p->running)
        return;
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    p->running = 0;
}
