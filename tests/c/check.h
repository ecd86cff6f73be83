/* check.h -- the smallest test harness that does the job: CHECK(cond) reports file:line
 * and counts a failure, RUN(test) runs one test function, and main returns nonzero if
 * anything failed (ctest reads the exit status). */
#ifndef PYGEN_CHECK_H
#define PYGEN_CHECK_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

static int check_failures = 0;
static int check_count = 0;

/* fork() for tests: the child dies with the test process.  Some children loop until
 * killed; if ctest's timeout kills the test, they must not run on as orphans. */
static inline pid_t check_fork(void)
{
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)   /* the parent died before prctl */
            _exit(1);
    }
    return p;
}

#define CHECK(cond)                                                                   \
    do {                                                                              \
        check_count++;                                                                \
        if (!(cond)) {                                                                \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECK_EQ(a, b)                                                                \
    do {                                                                              \
        long long va_ = (long long)(a), vb_ = (long long)(b);                         \
        check_count++;                                                                \
        if (va_ != vb_) {                                                             \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld (%s)\n",  \
                    __FILE__, __LINE__, #a, va_, #b, vb_, store_last_error());        \
        }                                                                             \
    } while (0)

#define RUN(fn)                                                                       \
    do {                                                                              \
        int before_ = check_failures;                                                 \
        fn();                                                                         \
        printf("%-40s %s\n", #fn, check_failures == before_ ? "ok" : "FAILED");       \
        fflush(stdout);                                                               \
    } while (0)

#define CHECK_MAIN_END()                                                              \
    do {                                                                              \
        printf("%d checks, %d failed\n", check_count, check_failures);                \
        return check_failures ? 1 : 0;                                                \
    } while (0)

/* xorshift64*: deterministic pseudo-random numbers for the randomized tests. */
static inline unsigned long long rng_next(unsigned long long *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

#endif
