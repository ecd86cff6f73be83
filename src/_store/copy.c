/* copy.c -- chunked, parallel memcpy for big copies into the arena (concept in copy.h). */
#include "copy.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

typedef struct part {
    uint8_t *dst;
    const uint8_t *src;
    size_t n;
} part_t;

static void copy_chunked(uint8_t *dst, const uint8_t *src, size_t n)
{
    while (n > 0) {
        size_t k = n < COPY_CHUNK ? n : COPY_CHUNK;
        memcpy(dst, src, k);
        dst += k;
        src += k;
        n -= k;
    }
}

static void *copy_part(void *arg)
{
    part_t *p = arg;
    copy_chunked(p->dst, p->src, p->n);
    return NULL;
}

int copy_cpus(void)
{
    static _Atomic int cached = 0;
    int n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n == 0) {
        cpu_set_t set;
        n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        if (n < 1)
            n = 1;
        atomic_store_explicit(&cached, n, memory_order_relaxed);
    }
    return n;
}

void store_copy(void *dst, const void *src, size_t n)
{
    int threads = copy_cpus();
    if (threads > COPY_MAX_THREADS)
        threads = COPY_MAX_THREADS;
    if ((size_t)threads > n / (COPY_PARALLEL_MIN / 2))
        threads = (int)(n / (COPY_PARALLEL_MIN / 2));   /* each part >= 16 MiB */
    if (n < COPY_PARALLEL_MIN || threads < 2) {
        copy_chunked(dst, src, n);
        return;
    }
    part_t parts[COPY_MAX_THREADS];
    pthread_t tids[COPY_MAX_THREADS];
    int started[COPY_MAX_THREADS] = {0};
    size_t per = (n / (size_t)threads + 4095) & ~(size_t)4095;   /* page-aligned parts */
    size_t off = 0;
    for (int i = 0; i < threads; i++) {
        size_t k = i == threads - 1 ? n - off : per;
        parts[i] = (part_t){(uint8_t *)dst + off, (const uint8_t *)src + off, k};
        off += k;
    }
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&tids[i], NULL, copy_part, &parts[i]) == 0;
    copy_part(&parts[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else
            copy_part(&parts[i]);   /* no thread to be had: do it here */
    }
}

size_t store_copy_skew(const void *dst, const void *src)
{
    uintptr_t want = (uintptr_t)src & ~(uintptr_t)(COPY_ALIGN - 1);
    return (size_t)((want - (uintptr_t)dst) & (COPY_PAGE - 1) & ~(uintptr_t)(COPY_ALIGN - 1));
}
