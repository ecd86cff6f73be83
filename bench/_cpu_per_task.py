"""Where a trivial task's time goes: CPU time per task of each thread of the driver and of
each worker (user and system, from /proc via psutil), next to the wall time per task.

    python bench/_cpu_per_task.py serial        # get(f.remote(i)) one at a time
    python bench/_cpu_per_task.py bulk          # 5,000 submitted, then one get
    PYGEN_SPIN_US=0 python bench/_cpu_per_task.py serial

Not a benchmark (pytest does not collect it): a diagnostic for the runtime's owner.  The
arena is pre-faulted everywhere first, so no background pre-fault thread is counted.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import psutil

from pygen.bench.envs import NUM_CPUS as PYGEN_NUM_CPUS
from pygen.bench.envs import warm_pygen
from pygen.bench.tasks import noop


def main() -> None:
    import pygen
    mode = sys.argv[1] if len(sys.argv) > 1 else "serial"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
    pygen.init(num_cpus=PYGEN_NUM_CPUS, object_store_memory=1 << 30)
    warm_pygen()
    f = pygen.remote(noop)
    for i in range(2_000):
        pygen.get(f.remote(i))
    me = psutil.Process()
    kids = me.children()
    names = {t.native_id: t.name for t in threading.enumerate()}

    def snap():
        return ({t.id: (t.user_time, t.system_time) for t in me.threads()},
                {k.pid: tuple(k.cpu_times()[:2]) for k in kids})

    before = snap()
    t0 = time.perf_counter()
    if mode == "serial":
        for i in range(n):
            pygen.get(f.remote(i))
    else:
        pygen.get([f.remote(i) for i in range(n)])
    wall = time.perf_counter() - t0
    after = snap()
    print(f"{mode}: {n} tasks, wall {wall / n * 1e6:.0f} us per task "
          f"(PYGEN_SPIN_US={os.environ.get('PYGEN_SPIN_US', 'default')}, "
          f"load {os.getloadavg()[0]:.2f})")
    for tid, (u, s) in after[0].items():
        u0, s0 = before[0].get(tid, (0.0, 0.0))
        if (u - u0) + (s - s0) > 0:
            print(f"  driver thread {names.get(tid, tid)!s:<12} user {(u - u0) / n * 1e6:5.0f} "
                  f"sys {(s - s0) / n * 1e6:5.0f} us per task")
    for pid, (u, s) in after[1].items():
        u0, s0 = before[1][pid]
        print(f"  worker {pid:<19} user {(u - u0) / n * 1e6:5.0f} sys {(s - s0) / n * 1e6:5.0f} "
              f"us per task")
    pygen.shutdown()


if __name__ == "__main__":
    main()
