/* wait.c -- spin-then-futex wait on a shared word (concept in wait.h). */
#include "wait.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "status.h"

int64_t wait_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int wait_change(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns)
{
    int64_t now = wait_now_ns();
    if (deadline_ns >= 0 && now >= deadline_ns)
        return STORE_ERR_TIMEOUT;
    int64_t spin_end = now + WAIT_SPIN_NS;
    if (deadline_ns >= 0 && spin_end > deadline_ns)
        spin_end = deadline_ns;
    while (atomic_load_explicit(word, memory_order_acquire) == seen) {
        for (int i = 0; i < 64; i++)
            cpu_relax();
        now = wait_now_ns();
        if (now >= spin_end)
            break;
    }
    if (atomic_load_explicit(word, memory_order_acquire) != seen)
        return STORE_OK;
    if (deadline_ns >= 0 && now >= deadline_ns)
        return STORE_ERR_TIMEOUT;
    int64_t sleep = WAIT_RECHECK_NS;
    if (deadline_ns >= 0 && deadline_ns - now < sleep)
        sleep = deadline_ns - now;
    struct timespec ts = {.tv_sec = sleep / 1000000000ll, .tv_nsec = sleep % 1000000000ll};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
    /* EAGAIN (word moved), EINTR, ETIMEDOUT, or woken: the caller re-checks either way. */
    if (deadline_ns >= 0 && wait_now_ns() >= deadline_ns &&
        atomic_load_explicit(word, memory_order_acquire) == seen)
        return STORE_ERR_TIMEOUT;
    return STORE_OK;
}

void wait_sleep(_Atomic uint32_t *word, uint32_t seen, int64_t timeout_ns)
{
    if (atomic_load_explicit(word, memory_order_acquire) != seen || timeout_ns <= 0)
        return;
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000ll, .tv_nsec = timeout_ns % 1000000000ll};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

void wait_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
