/* status.c -- names of status codes and the thread-local error detail (see status.h).
 *
 * The detail buffer is thread-local because the binding releases the GIL around waits:
 * two Python threads may fail at the same time, each must read its own line.
 */
#include "status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#define ERRBUF_SIZE 512

static _Thread_local char tl_errbuf[ERRBUF_SIZE];
static _Thread_local int tl_errno;

const char *store_status_name(int status)
{
    switch (status) {
    case STORE_OK: return "OK";
    case STORE_ERR_FULL: return "FULL";
    case STORE_ERR_TOO_LARGE: return "TOO_LARGE";
    case STORE_ERR_ABSENT: return "ABSENT";
    case STORE_ERR_EXISTS: return "EXISTS";
    case STORE_ERR_NOT_SEALED: return "NOT_SEALED";
    case STORE_ERR_TABLE_FULL: return "TABLE_FULL";
    case STORE_ERR_NO_SLOT: return "NO_SLOT";
    case STORE_ERR_TIMEOUT: return "TIMEOUT";
    case STORE_ERR_NOSPC: return "NOSPC";
    case STORE_ERR_INVALID: return "INVALID";
    case STORE_ERR_SYS: return "SYS";
    default: return "UNKNOWN";
    }
}

const char *store_last_error(void) { return tl_errbuf; }

int store_last_errno(void) { return tl_errno; }

int store_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_errbuf, sizeof tl_errbuf, fmt, ap);
    va_end(ap);
    return status;
}

int store_fail_sys(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_errbuf, sizeof tl_errbuf, fmt, ap);
    va_end(ap);
    tl_errno = err;
    errno = err;
    return STORE_ERR_SYS;
}
