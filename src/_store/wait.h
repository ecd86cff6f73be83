/* wait.h -- waiting for a 32-bit word in shared memory to change: spin, then futex.
 *
 * Concept.  "Object sealed" is announced through one counter in the segment header
 * (seal_seq), bumped on every seal.  A waiter reads it under the lock while checking its
 * object, unlocks, then waits for the counter to move and re-checks.  The wait first
 * spins for WAIT_SPIN_NS, then sleeps on a *shared* futex (not FUTEX_PRIVATE: the word
 * is in a MAP_SHARED file mapping, keyed by inode and offset, so every process's mapping
 * meets on it).  Sleeping is bounded by WAIT_RECHECK_NS so that a sealer killed between
 * its seal and its wake-up cannot strand a waiter, and so the waiter's re-check (which
 * takes the lock) performs recovery if that sealer died holding the lock.
 */
#ifndef PYGEN_WAIT_H
#define PYGEN_WAIT_H

#include <stdatomic.h>
#include <stdint.h>

/* Spin before sleeping.  On this VM a halted vCPU woken by another costs 60-300 us
 * (guest_halt_poll_ns=0); spinning ~50 us first brings a cross-process seal -> wake-up
 * round trip to ~11 us.  Longer spins only burn the other core. */
#define WAIT_SPIN_NS 50000ll

/* Longest single futex sleep; see the concept paragraph. */
#define WAIT_RECHECK_NS 100000000ll

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t wait_now_ns(void);

/* Return when *word != seen, or at `deadline_ns` (wait_now_ns() scale; < 0: no deadline),
 * or after WAIT_RECHECK_NS of sleep, or spuriously.  The caller re-checks what it waits
 * for; returns STORE_ERR_TIMEOUT only when the deadline has passed. */
int wait_change(_Atomic uint32_t *word, uint32_t seen, int64_t deadline_ns);

/* Sleep (no spin) until *word != seen, or `timeout_ns` passed, or spuriously.  For
 * background threads, which have no hurry and must not burn a core. */
void wait_sleep(_Atomic uint32_t *word, uint32_t seen, int64_t timeout_ns);

/* Wake every process sleeping on `word`. */
void wait_wake_all(_Atomic uint32_t *word);

#endif
