"""The ``pygen`` command (also ``python -m pygen``).

    pygen --version
    pygen demo [--scale N]     # the scenarios of Ray's generator docs, run on pygen, timed
    pygen info                 # version, machine, /dev/shm, optional libraries
    pygen bench [--quick]      # the benchmark workloads, side by side with Ray and references
    pygen bench --compare A.json B.json
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

import pygen

MB = 2**20


def _say(*parts: object) -> None:
    """``print`` in one write: the node's I/O thread forwards workers' lines to the same
    stream, and a line split into two writes could get one of theirs in between."""
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def _title(text: str) -> None:
    _say(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def demo_zero_copy() -> None:
    _title("zero-copy objects: a 200 MB array between processes")
    arr = np.random.default_rng(0).integers(0, 255, size=200 * MB, dtype=np.uint8)
    pygen.get(pygen.put(arr[:1024]))  # warm the arena
    t = time.perf_counter()
    ref = pygen.put(arr)
    put_s = time.perf_counter() - t
    t = time.perf_counter()
    view = pygen.get(ref)
    get_s = time.perf_counter() - t

    @pygen.remote
    def checksum(a):
        return int(a[::4096].sum()), a.flags.writeable

    t = time.perf_counter()
    remote_sum, writeable = pygen.get(checksum.remote(ref))
    task_s = time.perf_counter() - t
    _say(f"put: {arr.nbytes / MB:.0f} MB in {put_s * 1e3:.1f} ms ({arr.nbytes / put_s / 1e9:.1f} GB/s, "
          f"one copy into shared memory)")
    _say(f"get: {get_s * 1e6:.0f} us (no copy: a read-only view of the arena, "
          f"writeable={view.flags.writeable})")
    _say(f"a task read it zero-copy in another process in {task_s * 1e3:.1f} ms "
          f"(checksum matches: {remote_sum == int(arr[::4096].sum())}, writeable={writeable})")


def demo_memory_pattern(scale: int) -> None:
    _title(f"pattern: generators reduce heap memory ({scale} arrays of 100 MB)")
    limit = 1 << 30
    _say(f"each worker may use {limit // MB} MiB of private memory")

    @pygen.remote(max_retries=0, memory=limit)
    def large_values(num_returns):
        return [np.random.randint(np.iinfo(np.int8).max, size=(100_000_000, 1), dtype=np.int8)
                for _ in range(num_returns)]

    @pygen.remote(max_retries=0, memory=limit)
    def large_values_generator(num_returns):
        for i in range(num_returns):
            yield np.random.randint(np.iinfo(np.int8).max, size=(100_000_000, 1), dtype=np.int8)
            print(f"yielded return value {i}")

    _say("Using normal functions...")
    t = time.perf_counter()
    try:
        pygen.get(large_values.options(num_returns=scale).remote(scale)[0])
        _say("  (the list fit under the limit: use a larger --scale to see it fail)")
    except pygen.exceptions.WorkerCrashedError as exc:
        _say(f"Worker failed with normal function after {time.perf_counter() - t:.1f} s:")
        _say(f"  {type(exc).__name__}: {exc}")
    _say("Using generators...")
    t = time.perf_counter()
    refs = large_values_generator.options(num_returns=scale).remote(scale)
    first_ref, last_ref = refs[0], refs[-1]
    del refs  # the arrays in between are freed as soon as they are stored
    first = pygen.get(first_ref)  # ready at the first yield, long before the task ends
    _say(f"  the first array was readable after {time.perf_counter() - t:.2f} s "
          f"({first.nbytes / MB:.0f} MB, zero-copy)")
    del first
    pygen.get(last_ref)  # the last ref is ready when the generator has finished
    _say(f"Success! ({time.perf_counter() - t:.1f} s for {scale} arrays)")


def demo_streaming() -> None:
    _title("streaming generator: items arrive while the task runs")

    @pygen.remote
    def slow_squares(n, delay):
        for i in range(n):
            time.sleep(delay)
            yield i * i
        return "done"

    t0 = time.perf_counter()
    gen = slow_squares.remote(5, 0.2)
    for ref in gen:
        _say(f"  t={time.perf_counter() - t0:.2f} s  item {pygen.get(ref)}")
    _say(f"  completed() -> {pygen.get(gen.completed())!r}")

    @pygen.remote
    def tiny(n):
        yield from range(n)

    n = 20_000
    t = time.perf_counter()
    total = sum(pygen.get(ref) for ref in tiny.remote(n))
    dt = time.perf_counter() - t
    assert total == n * (n - 1) // 2
    _say(f"  {n} small items streamed and read in {dt:.2f} s ({n / dt:,.0f} items/s)")


def demo_static_and_dynamic() -> None:
    _title("num_returns=k (dependents start early) and num_returns='dynamic'")

    @pygen.remote(num_returns=3)
    def three():
        yield "first"
        time.sleep(1.0)
        yield "second"
        yield "third"

    @pygen.remote
    def stamp(value):
        return value, time.perf_counter()

    t0 = time.perf_counter()
    a, b, c = three.remote()
    first, started = pygen.get(stamp.remote(a))
    _say(f"  a task using return 1 ran {started - t0:.2f} s after submission, "
          f"before the generator finished ({pygen.get(c)!r} came at "
          f"{time.perf_counter() - t0:.2f} s)")

    @pygen.remote(num_returns="dynamic")
    def split(array, chunk_size):
        while len(array) > 0:
            yield array[:chunk_size]
            array = array[chunk_size:]

    array_ref = pygen.put(np.zeros(63_153))
    blocks = pygen.get(split.remote(array_ref, 1000))
    _say(f"  split an array of 63153 into {len(blocks)} blocks of 1000 "
          f"(sizes add up: {sum(len(pygen.get(r)) for r in blocks) == 63_153})")


def demo_errors_and_control() -> None:
    _title("errors, wait, cancel, close, backpressure")

    @pygen.remote
    def fails_at_two():
        for i in range(5):
            if i == 2:
                raise ValueError("bad item")
            yield i

    out = []
    for ref in fails_at_two.remote():
        try:
            out.append(pygen.get(ref))
        except ValueError as exc:
            out.append(f"ValueError({exc.cause})")
    _say(f"  an exception comes at its position: {out}")

    @pygen.remote
    def ticker(n, delay):
        for i in range(n):
            time.sleep(delay)
            yield i

    gens = [ticker.remote(3, 0.05 * (k + 1)) for k in range(3)]
    seen = 0
    pending = list(gens)
    while pending:
        ready, pending = pygen.wait(pending)
        for g in ready:
            try:
                next(g)
                seen += 1
                pending.append(g)
            except StopIteration:
                pass
    _say(f"  pygen.wait over 3 generators: {seen} items taken as they came")

    gen = ticker.remote(1000, 0.01)
    next(gen)
    pygen.cancel(gen)
    try:
        for ref in gen:
            pygen.get(ref)
    except pygen.exceptions.TaskCancelledError:
        _say("  pygen.cancel(gen): the next item raises TaskCancelledError")

    @pygen.remote(generator_backpressure=2)
    def producer():
        for i in range(100):
            yield i

    gen = producer.remote()
    next(gen)
    time.sleep(0.2)
    produced = [t for t in pygen.state.list_tasks() if t["name"] == "producer"]
    gen.close()
    _say(f"  generator_backpressure=2: the producer paused at its yield; close() stopped it "
          f"({produced[0]['state'] if produced else '?'} -> closed)")


def run_demo(scale: int) -> None:
    t0 = time.perf_counter()
    pygen.init(num_cpus=2)
    _say(f"pygen {pygen.__version__}: init took {time.perf_counter() - t0:.2f} s; "
          f"object store {pygen.state.store_stats()['capacity'] / 2**30:.1f} GiB")
    try:
        demo_zero_copy()
        demo_streaming()
        demo_static_and_dynamic()
        demo_errors_and_control()
        demo_memory_pattern(scale)
        gc.collect()  # refs caught in cycles (an exception's traceback holds its frame)
        stats = pygen.state.store_stats()
        _say(f"\nstore at the end: {stats['objects']} objects, {stats['used']} bytes used")
    finally:
        pygen.shutdown()
    _say(f"demo finished in {time.perf_counter() - t0:.1f} s")


def info_lines() -> "list[str]":
    """What ``pygen info`` prints: versions, the machine, /dev/shm, the optional extras."""
    from .bench.measure import describe_machine, machine
    m = machine()
    opt = ", ".join(f"{name} {m[name] or 'not installed'}" for name in ("ray", "joblib", "matplotlib"))
    return [f"pygen {pygen.__version__}, numpy {m['numpy']}",
            f"machine: {describe_machine(m)}",
            f"/dev/shm: {m['dev_shm_free_gib']} GiB free (the object store's ceiling)",
            f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"optional: {opt}"]


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pygen", description="pygen: remote functions and remote generators on one machine")
    parser.add_argument("--version", action="version", version=f"pygen {pygen.__version__}")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the demo of the generator scenarios")
    demo.add_argument("--scale", type=int, default=20,
                      help="number of 100 MB arrays in the memory pattern (default 20)")
    sub.add_parser("info", help="print version and machine facts")
    bench = sub.add_parser("bench", help="run the benchmarks: pygen beside Ray and references")
    from .bench import cli as bench_cli
    bench_cli.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args.scale)
        return 0
    if args.command == "info":
        for line in info_lines():
            _say(line)
        return 0
    if args.command == "bench":
        return bench_cli.main(args, argv)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
