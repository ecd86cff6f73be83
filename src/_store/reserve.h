/* reserve.h -- reserving the arena's pages (no SIGBUS, ever) and pre-faulting them.
 *
 * Concept.  The segment is a sparse tmpfs file.  Writing into a hole makes the kernel
 * allocate a page at that instant; if /dev/shm is full then, the writer gets SIGBUS.
 * So no byte of the arena is written before its page is *reserved* with fallocate(2),
 * which either allocates the pages or fails with ENOSPC -- an error we can return.
 *
 *   reserved_upto (in the segment header, monotone): every arena byte below it is
 *   reserved.  Two writers move it:
 *     - the pre-fault thread of each process, walking the arena low to high in
 *       PREFAULT_CHUNK steps at SCHED_IDLE priority: fallocate the chunk (if above the
 *       mark), advance the mark, then madvise(MADV_POPULATE_WRITE) the chunk so this
 *       process's page tables are filled (later writes run at memory speed, not at
 *       page-fault speed: ~10 GB/s instead of ~1 GB/s on this machine);
 *     - store_create_object, for a block handed out above the mark: it fallocates the
 *       block's range itself, outside the lock, before returning it (fallocate is
 *       idempotent, so racing the thread is harmless).
 *
 * Measured here (tmpfs, 2 vCPUs): fallocate ~0.4 s/GB -- too slow to do for a big arena
 * at create time, hence the background thread; MADV_POPULATE_WRITE over resident pages
 * ~3.7 GB/s.  fallocate(2) mode 0 is used rather than posix_fallocate(3): glibc's
 * fallback for file systems without fallocate would *write* the range, which is not
 * safe over live objects.
 */
#ifndef PYGEN_RESERVE_H
#define PYGEN_RESERVE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define RESERVE_PAGE 4096ull
/* Chunk of the pre-fault walk: small enough that each fallocate/madvise holds the
 * mm's locks briefly (~1 ms), large enough that the syscalls cost nothing. */
#define PREFAULT_CHUNK (2ull << 20)

/* fallocate [off, off+len) of the file.  STORE_ERR_NOSPC on ENOSPC. */
int reserve_range(int fd, uint64_t off, uint64_t len);

/* The opposite of reserve_range, for any file of ours (the node's spill file): punch a
 * hole over [off, off+len) so its blocks go back to the file system, keeping the size.
 * STORE_OK also where holes are not supported (the space then returns when the file is
 * truncated). */
int release_range(int fd, uint64_t off, uint64_t len);

/* After reserving arena range [from, to): advance *upto to `to` if the range touches the
 * reserved prefix (from <= *upto), keeping the mark's meaning "all below is reserved". */
void reserve_advance(_Atomic uint64_t *upto, uint64_t from, uint64_t to);

/* Fill this process's page tables for [addr, addr+len) (page-aligned addr) without
 * touching the bytes: madvise(MADV_POPULATE_WRITE).  Best effort (no status): an old
 * kernel without it only loses speed.  The pages must be reserved. */
void reserve_populate(uint8_t *addr, uint64_t len);

typedef struct prefaulter {
    pthread_t thread;
    int running;
    int fd;
    uint64_t file_off;          /* arena start in the file                  */
    uint8_t *base;              /* arena start in this process              */
    uint64_t size;              /* arena bytes                              */
    _Atomic uint64_t *upto;     /* the shared reserved_upto mark             */
    _Atomic int stop;
    _Atomic uint64_t progress;  /* bytes of the arena populated in this process */
    _Atomic int done;           /* 1 finished, 2 stopped by a reservation failure */
} prefaulter_t;

/* Start the thread (fields fd..upto filled by the caller).  A failure to start is not an
 * error for the store (it only loses speed): returns the status, caller may ignore it. */
int prefault_start(prefaulter_t *p);

/* Ask the thread to stop and join it (idempotent). */
void prefault_stop(prefaulter_t *p);

#endif
