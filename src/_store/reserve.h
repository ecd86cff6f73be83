/* reserve.h -- taking memory for the arena and giving it back; the background threads.
 *
 * Concept.  The segment is a sparse tmpfs file.  Writing into a hole makes the kernel
 * allocate a page at that instant; if /dev/shm is full then, the writer gets SIGBUS.
 * So no byte of the arena is written before its page is *reserved* with fallocate(2),
 * which either allocates the pages or fails with ENOSPC -- an error we can return.  The
 * opposite, release_range, punches a hole: the pages go back to the system and out of
 * every process's mapping at once (a later touch would find a hole again).  Which parts
 * of the arena are reserved is the commit map's business (commit.h); the policy (what to
 * reserve ahead, when to give back) is store.c's.
 *
 * Measured here (tmpfs, 2 vCPUs, 4 KiB pages, THP off for shmem), 200 MB:
 *   fallocate                               ~4 GB/s   (allocates; does not zero)
 *   copy into a fallocated, unmapped page   1.2-3.3 GB/s one thread, ~6.4 GB/s two
 *   copy into a hole (allocate on fault)    1.4-1.6 GB/s one thread, 0.8-3.1 GB/s two
 *   copy into pages another process wrote   3.4 GB/s one thread, 6.6 GB/s two (minor faults)
 *   copy into pages mapped here             15-19 GB/s (memory speed)
 *   MADV_POPULATE_WRITE of fallocated pages ~4.4 GB/s; of pages mapped here 26 GB/s;
 *                       of holes 1.8 GB/s one thread, 2.6-3.5 GB/s two
 *   punch a hole (mapped by 4 processes)    ~5.4 GB/s (0.5 ms per 2 MiB)
 * Hence a *warm window* (reserved and mapped ahead of use, by a thread on idle CPU) and
 * reuse of warm blocks first: a write into a page mapped here runs ten times faster.
 * fallocate(2) mode 0 is used rather than posix_fallocate(3): glibc's fallback for file
 * systems without fallocate would *write* the range, which is not safe over live objects.
 */
#ifndef PYGEN_RESERVE_H
#define PYGEN_RESERVE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define RESERVE_PAGE 4096ull

/* fallocate [off, off+len) of the file.  STORE_ERR_NOSPC on ENOSPC. */
int reserve_range(int fd, uint64_t off, uint64_t len);

/* Punch a hole over [off, off+len) of the file (its pages go back to the system, and out
 * of every mapping), keeping its size.  STORE_OK also where holes are not supported. */
int release_range(int fd, uint64_t off, uint64_t len);

/* Fill this process's page tables for [addr, addr+len) (page-aligned addr) without
 * touching the bytes: madvise(MADV_POPULATE_WRITE).  Best effort (no status): an old
 * kernel without it only loses speed.  The pages must be reserved. */
void reserve_populate(uint8_t *addr, uint64_t len);

/* Reserve by mapping: MADV_POPULATE_WRITE over [addr, addr+len) of a MAP_SHARED mapping
 * of the file, split over `threads` threads in RESERVE_MAP_PIECE pieces.  A populate
 * fault allocates the page like a write would, but where the write would SIGBUS it
 * fails with an error instead; and page faults allocate in parallel, while fallocate
 * holds the file's lock.  0, or an errno (EINVAL: not supported here; EFAULT/ENOMEM: no
 * memory) -- the caller then falls back to reserve_range for the status.  Pages mapped
 * before a failure stay allocated. */
#define RESERVE_MAP_PIECE (2ull << 20)
int reserve_map(uint8_t *addr, uint64_t len, int threads);

/* A background thread running `step(ctx)` until stopped.  `step` returns how long to
 * sleep before the next call: 0 at once, > 0 that many ns, < 0 until woken.  The thread
 * sleeps on the futex word `kick` (it may be in shared memory: another process bumps it
 * and calls wait_wake_all to wake the thread), never longer than BG_MAX_SLEEP_NS. */
#define BG_MAX_SLEEP_NS 5000000000ll

typedef int64_t (*bg_step_fn)(void *ctx);

typedef struct bg_thread {
    pthread_t thread;
    int running;
    int idle_policy;            /* run at SCHED_IDLE: only on otherwise idle CPU     */
    const char *name;           /* thread name (shows in top -H, /proc/<pid>/task)   */
    bg_step_fn step;
    void *ctx;
    _Atomic uint32_t *kick;
    _Atomic int stop;
    _Atomic int sleeping;       /* 1 while it sleeps after a step that returned < 0  */
} bg_thread_t;

/* Start the thread (fields idle_policy..kick filled by the caller).  A failure to start
 * is not an error for the store (it loses speed, or gives memory back later): returns
 * the status, the caller may ignore it. */
int bg_start(bg_thread_t *t);

/* Ask the thread to stop, wake it, join it (idempotent). */
void bg_stop(bg_thread_t *t);

#endif
