"""Every program under ``examples/`` (the seed documents' code, ported) runs as a user runs it:
a fresh interpreter, ``python examples/<file>.py``.  Each must exit with 0, print the lines
the seed shows, and leave nothing behind: no segment in /dev/shm, no worker process.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import shm_entries, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "examples", "*.py")))

# per example: extra environment, arguments, time limit
ENV = {"pattern_generators.py": {"PYGEN_WORKER_MEMORY_LIMIT": str(1 << 30)}}
ARGS = {"store_demo.py": ["100"]}  # 100 MB instead of 400: same code paths, less time
LIMIT = {"pattern_generators.py": 400, "streaming_intro.py": 90}
SLOW = {"pattern_generators.py"}
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def environment(name: str) -> dict:
    env = dict(os.environ)
    # the installed pygen, as a user's script would import it (src/ has no compiled store)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for key in ("PYGEN_NUM_CPUS", "PYGEN_OBJECT_STORE_MEMORY", "PYGEN_WORKER_MEMORY_LIMIT"):
        env.pop(key, None)
    env.update(ENV.get(name, {}))
    return env


def orphans_of(pid: int) -> list:
    """Live processes started by pygen for the driver ``pid`` (its workers)."""
    mark = f"PYGEN_PARENT_PID={pid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mark in env and state != "Z":
            found.append(int(entry))
    return found


class Run:
    def __init__(self, name: str, returncode: int, stdout: str, stderr: str, pid: int,
                 line_times: list) -> None:
        self.name = name
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.pid = pid
        self.line_times = line_times  # (seconds since start, stdout line)
        self.on_ray = False

    def lines(self) -> list:
        return self.stdout.splitlines()


def run_example(name: str) -> Run:
    """Run one example, reading its stdout line by line (with arrival times)."""
    cmd = [sys.executable, os.path.join(ROOT, "examples", name)] + ARGS.get(name, [])
    return run_command(name, cmd, LIMIT.get(name, 60))


def run_command(name: str, cmd: list, limit: float, env: "dict | None" = None) -> Run:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or environment(name), cwd=ROOT)
    import threading

    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))
    reader.start()
    line_times = []
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            # Ray colours the prefix of forwarded lines even when stdout is a pipe
            line = ANSI_COLOUR.sub("", line)
            line_times.append((time.monotonic() - t0, line.rstrip("\n")))
        proc.wait()
    finally:
        timer.cancel()
        reader.join(30)
    assert not reader.is_alive(), f"{name}: its stderr was not closed"
    stdout = "\n".join(text for _, text in line_times)
    stderr = "".join(err_chunks)
    assert time.monotonic() - t0 < limit, f"{name} ran over {limit} s (killed)\n{stderr[-3000:]}"
    return Run(name, proc.returncode, stdout, stderr, proc.pid, line_times)


def check_common(run: Run) -> None:
    assert run.returncode == 0, (f"{run.name} exited with {run.returncode}\n"
                                 f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}")
    assert "internal error" not in run.stderr, run.stderr[-3000:]
    # nothing left behind: segments of that driver, its workers
    assert shm_entries(run.pid) == [], shm_entries(run.pid)
    assert wait_until(lambda: not orphans_of(run.pid)), orphans_of(run.pid)


def check_dynamic_generators(run: Run) -> None:
    m = re.search(r"Split array of size (\d+) into (\d+) blocks of size 1000 each\.", run.stdout)
    assert m, run.stdout
    size, blocks = int(m.group(1)), int(m.group(2))
    assert blocks == -(-size // 1000) or (size == 0 and blocks == 0)
    # pygen's ids are 20 bytes, Ray's 28
    assert re.search(r"^ObjectRef\([0-9a-f]{40}(?:[0-9a-f]{16})?\)$", run.stdout, re.M), \
        run.stdout
    assert re.search(r"^DynamicObjectRefGenerator", run.stdout, re.M), run.stdout
    forwarded = re.findall(r"^\(get_size pid=\d+\) DynamicObjectRefGenerator", run.stdout, re.M)
    if run.on_ray:
        # Ray forwards workers' output asynchronously and drops what has not arrived when
        # the driver exits: worker lines printed just before the end may all be lost
        # (docs/cluster.md); none may be garbled or duplicated
        assert len(forwarded) <= 2, run.stdout
    else:
        assert len(forwarded) == 2, run.stdout


def check_generator_errors(run: Run) -> None:
    # the three printed errors: static refs 3-4, the dynamic generator's final ref, and
    # (the seed's "known limitation", never silent here) ref 2 of num_returns=2
    assert run.stdout.count("Exception: error") == 3, run.stdout
    assert run.stdout.count("Exception in task generator (pid=") == 3, run.stdout


def check_streaming_generators(run: Run) -> None:
    lines = run.lines()
    assert lines[:3] == ["2", "3", "4"], lines
    assert "Exception is raised when i == 2 as expected" in run.stdout
    assert "ValueError" in run.stdout
    assert "first item, still readable after the generator is gone: 0" in lines
    start = lines.index("first item, still readable after the generator is gone: 0")
    assert lines[start - 5:start] == ["0", "1", "2", "3", "4"]  # async for
    two = lines[start + 1:start + 11]  # two async consumers interleaved
    assert sorted(two) == sorted([str(i) for i in range(5)] * 2), two
    final = eval(lines[-1])  # noqa: S307 - the printed result list
    assert sorted(x for x in final if x is not None) == [0, 1, 2, 3, 4] and None in final


def check_streaming_intro(run: Run) -> None:
    lines = [(t, text) for t, text in run.line_times if text.strip()]
    assert [text for _, text in lines] == ["0", "1", "2", "3", "4"], run.stdout
    times = [t for t, _ in lines]
    # printed as the items come (the task sleeps 5 s before each yield), not all at the end
    # after 25 seconds: the first line comes at least 10 s before the last (a lower bound
    # set by the task's own sleeps; load can only delay lines, and it would have to delay
    # the first one alone by 10 s to break it).  Streaming is tested without clocks in
    # test_generators_streaming.py (test_items_arrive_while_the_task_runs).
    assert times[0] < times[-1] - 10, times


def check_pattern_generators(run: Run) -> None:
    lines = run.lines()
    order = ["Using normal functions...", "Worker failed with normal function",
             "Using generators...", "Success!"]
    positions = [lines.index(x) for x in order]
    assert positions == sorted(positions), lines
    # The seed shows "(large_values_generator pid=N) yielded return value i" for i = 0..99
    # before "Success!": in Ray, ref 1 is ready only when the whole task is done.  Under
    # SPEC 4.1 ref 1 is ready right after the first yield, so the program prints "Success!"
    # and exits (shutdown stops the generator) after none, one or a few of those lines:
    # how many is a race, so here only their form and order are checked.  That every line
    # is forwarded is checked by test_pattern_example_waiting_for_the_whole_task below.
    assert_yielded_lines(lines, None)


def assert_yielded_lines(lines: list, count: "int | None") -> None:
    """The forwarded "yielded return value i" lines: well formed, i = 0, 1, ... in order,
    and ``count`` of them when that is known."""
    yielded = [line for line in lines if "yielded return value" in line]
    if count is not None:
        assert len(yielded) == count, lines
    for i, line in enumerate(yielded):
        assert re.match(rf"^\(large_values_generator pid=\d+\) yielded return value {i}$",
                        line), yielded


def check_actor_generators(run: Run) -> None:
    lines = run.lines()
    # the three execution models stream the same five items, in order
    assert lines[:15] == [str(i) for i in range(5)] * 3, lines
    assert "items seen while it consumes: True" in lines, lines
    assert lines[-1] == "sum of the stream: 10", lines


def check_store_demo(run: Run) -> None:
    assert re.search(r"^\[parent pid=\d+\] store of \d+ MB", run.stdout, re.M), run.stdout
    assert re.search(r"^\[child  pid=\d+\] put 100 MB", run.stdout, re.M), run.stdout
    assert re.search(r"^\[child  pid=\d+\] got 100 MB .*zero-copy, writeable=False", run.stdout,
                     re.M), run.stdout
    assert re.search(r"^\[parent pid=\d+\] got 100 MB .*zero-copy", run.stdout, re.M)


def check_pipeline(run: Run) -> None:
    lines = run.lines()
    assert re.match(r"^128 MiB of float32 samples on disk, chunks of 4 MiB", lines[0]), lines
    for name in ("numpy, one process", "pygen pipeline"):
        assert any(re.match(rf"^{name} +[\d,]+ MiB/s .*peak private memory [\d,]+ MiB", line)
                   for line in lines), (name, lines)
    # the store held a few chunks at a time (backpressure), not the whole array
    m = re.search(r"object store peak ([\d,]+) MiB", run.stdout)
    assert m and int(m.group(1).replace(",", "")) < 128, run.stdout
    assert any(line.startswith("joblib") for line in lines), lines
    assert lines[-1].startswith("results agree: True"), lines


def check_typed_usage(run: Run) -> None:
    assert run.lines() == ["doubled: [0.0, 2.0, 4.0, 6.0]", "chunk sums: [0.0, 1000.0, 2000.0]",
                           "async sums: [0, 2, 4] pending: 0",
                           "the task's error reached the caller: ValueError bad input",
                           "actor total: 5.0 partial sums: [5.0, 6.0, 7.0] found by name: True",
                           "async actor ticks: [0, 1, 2]"], run.stdout


CHECKS = {
    "actor_generators.py": check_actor_generators,
    "dynamic_generators.py": check_dynamic_generators,
    "generator_errors.py": check_generator_errors,
    "streaming_generators.py": check_streaming_generators,
    "streaming_intro.py": check_streaming_intro,
    "pattern_generators.py": check_pattern_generators,
    "store_demo.py": check_store_demo,
    "pipeline.py": check_pipeline,
    "typed_usage.py": check_typed_usage,
}


def params():
    out = []
    for name in EXAMPLES:
        marks = [pytest.mark.timeout(LIMIT.get(name, 60) + 60)]
        if name in SLOW:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


SEED_EXAMPLES = ["actor_generators.py", "dynamic_generators.py", "generator_errors.py", "pattern_generators.py",
                 "streaming_generators.py", "streaming_intro.py"]


def test_the_seed_examples_are_there():
    assert set(SEED_EXAMPLES) <= set(EXAMPLES), EXAMPLES


@pytest.mark.parametrize("name", params())
def test_example(name):
    run = run_example(name)
    check_common(run)
    check = CHECKS.get(name)
    if check is not None:  # an example added later runs with the common checks only
        check(run)


@pytest.mark.timeout(200)
def test_pattern_example_waiting_for_the_whole_task(tmp_path):
    """The pattern example at a fifth of its size, getting the LAST ref (ready when the
    generator has finished): every one of its lines is printed, deterministically.  With
    a 300 MB limit the list of five 100 MB arrays is killed, the generator is not."""
    source = open(os.path.join(ROOT, "examples", "pattern_generators.py")).read()
    scaled = source.replace("num_returns = 100", "num_returns = 5")
    scaled = scaled.replace("remote(num_returns)[0]\n)", "remote(num_returns)[-1]\n)")
    assert scaled.count("num_returns = 5") == 1 and scaled.count("[-1]\n)") == 1, \
        "the example changed: update this test"
    script = tmp_path / "pattern_whole_task.py"
    script.write_text(scaled)
    env_name = "pattern_whole_task"
    ENV[env_name] = {"PYGEN_WORKER_MEMORY_LIMIT": str(300 << 20)}
    try:
        run = run_command(env_name, [sys.executable, str(script)], 150)
    finally:
        del ENV[env_name]
    check_common(run)
    lines = run.lines()
    order = ["Using normal functions...", "Worker failed with normal function",
             "Using generators...", "Success!"]
    positions = [lines.index(x) for x in order]
    assert positions == sorted(positions), lines
    assert_yielded_lines(lines, 5)


@pytest.mark.timeout(300)
def test_main_command_runs_the_demo_and_leaves_nothing():
    """The README's main command, ``python -m pygen demo``, at a scale where the list
    version goes over the demo's 1 GiB limit and fails, and the generator succeeds."""
    run = run_command("python -m pygen demo",
                      [sys.executable, "-m", "pygen", "demo", "--scale", "12"], 240)
    check_common(run)
    for title in ["zero-copy objects", "streaming generator: items arrive",
                  "num_returns=k (dependents start early)", "errors, wait, cancel, close",
                  "pattern: generators reduce heap memory (12 arrays"]:
        assert f"== {title}" in run.stdout, run.stdout
    assert re.search(r"^  OutOfMemoryError: task large_values was killed", run.stdout, re.M)
    assert re.search(r"^Success! \(", run.stdout, re.M), run.stdout
    assert "store at the end: 0 objects, 0 bytes used" in run.stdout, run.stdout
    # every driver line is whole: no forwarded worker line spliced into one of ours
    assert not re.search(r"\S\(large_values_generator pid=", run.stdout), run.stdout


def test_main_command_without_a_subcommand_prints_help():
    out = subprocess.run([sys.executable, "-m", "pygen"], capture_output=True, text=True,
                         env=environment(""), cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "demo" in out.stdout, out
    info = subprocess.run([sys.executable, "-m", "pygen", "info"], capture_output=True,
                          text=True, env=environment(""), cwd=ROOT, timeout=60)
    assert info.returncode == 0 and info.stdout.startswith("pygen "), info


# == the same programs on a Ray cluster ========================================================
# Unchanged: PYGEN_ADDRESS makes their pygen.init() connect to the cluster (the local
# runtime's num_cpus= and object_store_memory=, which two of them pass, are ignored there
# with a warning).  store_demo.py is left out: it shows pygen's own C store (pygen._store)
# between two processes, with no runtime at all, so there is nothing of it to run on Ray.
ON_RAY = [name for name in EXAMPLES if name != "store_demo.py"]


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.timeout(LIMIT.get(name, 60) + 60)]
                 + ([pytest.mark.slow] if name in SLOW else []), id=name)
    for name in ON_RAY])
def test_example_on_a_ray_cluster(name, ray_cluster):
    env = environment(name)
    env["PYGEN_ADDRESS"] = ray_cluster.address
    run = run_command(name, [sys.executable, os.path.join(ROOT, "examples", name)]
                      + ARGS.get(name, []), LIMIT.get(name, 60), env)
    run.on_ray = True
    check_common(run)
    check = CHECKS.get(name)
    if check is not None:
        check(run)
    if name in ("pipeline.py", "typed_usage.py"):  # they pass the local runtime's sizes
        assert "apply to the local runtime only and are ignored" in run.stderr, run.stderr


def test_every_example_runs_on_both_runtimes():
    assert set(EXAMPLES) - set(ON_RAY) == {"store_demo.py"}
