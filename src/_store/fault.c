/* fault.c -- the crash points' state and the kill itself (see fault.h). */
#include "fault.h"

#include <signal.h>
#include <unistd.h>

#include "status.h"

volatile int fault_armed_point = FAULT_NONE;
volatile int64_t fault_countdown = 0;

int store_debug_crash_at(int point, int64_t countdown)
{
    if (point < 0 || point >= FAULT_COUNT)
        return store_fail(STORE_ERR_INVALID, "unknown crash point %d", point);
    if (point != FAULT_NONE && countdown < 1)
        return store_fail(STORE_ERR_INVALID, "crash countdown must be >= 1");
    fault_countdown = countdown;
    fault_armed_point = point;
    return STORE_OK;
}

void fault_fire(void)
{
    /* SIGKILL cannot be caught: the process stops here, mid-operation, like a real kill. */
    for (;;) {
        raise(SIGKILL);
        pause();
    }
}
