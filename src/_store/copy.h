/* copy.h -- copying bytes into (or out of) the arena at memory speed.
 *
 * Concept.  A put of a large numpy array is one memcpy into the arena; how fast it runs
 * decides the store's throughput.  Two facts of this platform shape it:
 *
 *  - glibc's memcpy switches to non-temporal stores above x86_non_temporal_threshold
 *    (192 MiB here) and to a 4-pages-at-a-time interleaved loop further up.  Into
 *    4 KiB tmpfs pages (shmem THP is off) inside a VM, that path runs at ~3.5 GB/s,
 *    while the same bytes copied in pieces below the threshold (rep movsb) run at
 *    8-10 GB/s.  So big copies go in COPY_CHUNK pieces.
 *  - One core does not saturate memory bandwidth: two threads copying halves reach
 *    12-16 GB/s on big copies.  So copies of COPY_PARALLEL_MIN bytes or more are split
 *    over up to COPY_MAX_THREADS threads (no more than the CPUs this process may run
 *    on), each part at least COPY_PARALLEL_MIN / 2.  The helper threads live only for
 *    the copy: creating one costs ~30 us, ~5% of an 8 MiB copy (10 MB copies measured
 *    ~15 GB/s split against ~12 GB/s whole).
 *
 *  - 4K aliasing: a load whose address matches an older, still pending store in its low
 *    12 bits waits for that store.  A forward copy whose destination is a little ahead of
 *    its source modulo 4096 hits this on almost every line.  And that is the common case:
 *    a large numpy array comes from a glibc mmap chunk (address = 16 mod 4096) and an
 *    arena block is 64-aligned, often 64 mod 4096.  A 1 MB copy at that distance took
 *    33 us, at a distance of zero or a few hundred bytes behind 21-23 us.  So the writer
 *    leaves COPY_SKEW_ROOM bytes before each large buffer and places it where
 *    store_copy_skew says: 64-aligned, as close to the source's page offset as that
 *    allows, never ahead of it.
 *
 * Still exactly one copy of every byte.  No locks are involved: the caller owns both
 * ranges (a writer's block is pinned and unpublished until sealed).
 */
#ifndef PYGEN_COPY_H
#define PYGEN_COPY_H

#include <stddef.h>

#define COPY_CHUNK (64u << 20)          /* below glibc's non-temporal threshold        */
#define COPY_PARALLEL_MIN (8u << 20)    /* smaller copies: one thread                  */
#define COPY_MAX_THREADS 4
#define COPY_PAGE 4096u
#define COPY_ALIGN 64u
#define COPY_SKEW_ROOM (COPY_PAGE - COPY_ALIGN)   /* the most store_copy_skew returns   */

/* CPUs this process may run on (cpusets and taskset respected), read once. */
int copy_cpus(void);

/* memcpy(dst, src, n) for non-overlapping ranges, chunked and parallel as above. */
void store_copy(void *dst, const void *src, size_t n);

/* Bytes (a multiple of COPY_ALIGN, at most COPY_SKEW_ROOM) to move a 64-aligned dst
 * forward so that a copy from src into it does not suffer 4K aliasing (see above). */
size_t store_copy_skew(const void *dst, const void *src);

#endif
