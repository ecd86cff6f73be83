/* status.h -- the store's status codes and its per-thread error detail.
 *
 * Concept: every function of the C core returns an int, 0 for success or one of the
 * negative codes below; results travel through out-parameters.  Nothing in the core
 * aborts, exits or prints.  A code names *what* went wrong; when there is more to say
 * (which invariant broke, which system call failed, how many bytes /dev/shm has free)
 * the core writes one line into a thread-local buffer that `store_last_error()` reads,
 * and keeps errno for STORE_ERR_SYS in `store_last_errno()`.  The binding maps each code
 * to exactly one Python exception in one helper (see _store.pyx: `_raise_status`).
 */
#ifndef PYGEN_STATUS_H
#define PYGEN_STATUS_H

#include <stddef.h>

enum {
    STORE_OK = 0,
    STORE_ERR_FULL = -1,        /* no free block can hold the request right now        */
    STORE_ERR_TOO_LARGE = -2,   /* the request is larger than the whole arena          */
    STORE_ERR_ABSENT = -3,      /* no object with this id (or it is being deleted)     */
    STORE_ERR_EXISTS = -4,      /* an object with this id already exists               */
    STORE_ERR_NOT_SEALED = -5,  /* the object exists but is not sealed                 */
    STORE_ERR_TABLE_FULL = -6,  /* every entry of the object table is in use           */
    STORE_ERR_NO_SLOT = -7,     /* every process slot is in use                        */
    STORE_ERR_TIMEOUT = -8,     /* a wait ran out of time                              */
    STORE_ERR_NOSPC = -9,       /* /dev/shm cannot hold the segment or a block of it   */
    STORE_ERR_INVALID = -10,    /* bad argument, wrong state, broken invariant         */
    STORE_ERR_SYS = -11,        /* a system call failed; store_last_errno() has errno  */
};

/* A short constant name for a code ("FULL", "ABSENT", ...); "UNKNOWN" otherwise. */
const char *store_status_name(int status);

/* The detail line written by the last failing call on this thread ("" if none). */
const char *store_last_error(void);

/* errno saved by the last STORE_ERR_SYS on this thread. */
int store_last_errno(void);

/* Internal: record a detail line (printf-style) and return `status`, so that a failing
 * path reads `return store_fail(STORE_ERR_INVALID, "slot %u not in use", slot);`. */
int store_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Internal: record errno (as saved in `err`) for STORE_ERR_SYS with a detail line. */
int store_fail_sys(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
