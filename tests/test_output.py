"""Worker output (SPEC §1): stdout/stderr of workers reach the driver line by line as
``(function_name pid=N) line``, stderr to stderr, including C-level writes, the last line
before ``os._exit`` and before ``shutdown``; ``log_to_driver=False`` turns it off.

Each test runs its own driver in a child interpreter and reads what it printed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import run_python

PRELUDE = """
import os, sys, time, pygen
pygen.init(num_cpus={cpus}, object_store_memory=64 * 2**20, log_to_driver={log})
"""


def driver(body: str, *, cpus: int = 1, log: bool = True, timeout: float = 60):
    proc = run_python(PRELUDE.format(cpus=cpus, log=log) + body, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def prefixed(text: str, name: str, pid=None) -> list:
    """Lines of ``text`` printed for task ``name`` (and worker ``pid``), prefix removed."""
    pat = re.compile(rf"^\({re.escape(name)} pid=(\d+)\) (.*)$")
    out = []
    for line in text.splitlines():
        m = pat.match(line)
        if m and (pid is None or int(m.group(1)) == pid):
            out.append(m.group(2))
    return out


def test_stdout_and_stderr_lines_are_prefixed_and_kept_apart():
    proc = driver("""
@pygen.remote
def chatty(n):
    for i in range(n):
        print(f"out line {i}")
    print("an error line", file=sys.stderr)
    return os.getpid()

pid = pygen.get(chatty.remote(3))
print("WORKER", pid)
pygen.shutdown()
""")
    pid = int(re.search(r"WORKER (\d+)", proc.stdout).group(1))
    assert prefixed(proc.stdout, "chatty", pid) == ["out line 0", "out line 1", "out line 2"]
    assert prefixed(proc.stderr, "chatty", pid) == ["an error line"]
    assert "an error line" not in proc.stdout
    assert "out line" not in proc.stderr
    # the exact form, as in the spec's example
    assert f"(chatty pid={pid}) out line 0\n" in proc.stdout


def test_partial_lines_are_joined_and_lines_arrive_whole():
    proc = driver("""
@pygen.remote
def pieces():
    print("he", end="", flush=True)
    time.sleep(0.2)
    print("llo", end="", flush=True)
    print(" world")
    sys.stdout.write("a\\nb\\nc")
    sys.stdout.flush()
    print()
    return 1

pygen.get(pieces.remote())
pygen.shutdown()
""")
    assert prefixed(proc.stdout, "pieces") == ["hello world", "a", "b", "c"]


def test_lines_arrive_while_the_task_runs(tmp_path):
    release = tmp_path / "release"
    code = PRELUDE.format(cpus=1, log=True) + f"""
@pygen.remote
def early_then_wait(path):
    print("early line")
    while not os.path.exists(path):
        time.sleep(0.01)
    print("late line")
    return 1

ref = early_then_wait.remote({str(release)!r})
pygen.get(ref, timeout=60)
pygen.shutdown()
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the driver printed a line
        assert re.match(r"^\(early_then_wait pid=\d+\) early line$", line), line
        assert not release.exists()  # the task is still running
        release.touch()
        rest = proc.stdout.read()
        proc.wait(30)
        assert proc.returncode == 0, proc.stderr.read()
        assert prefixed(rest, "early_then_wait") == ["late line"]
    finally:
        proc.kill()
        proc.wait()


def test_line_before_os_exit_arrives():
    proc = driver("""
@pygen.remote(max_retries=0)
def last_words():
    print("goodbye from stdout")
    print("goodbye from stderr", file=sys.stderr)
    os._exit(0)

try:
    pygen.get(last_words.remote(), timeout=30)
except pygen.exceptions.WorkerCrashedError:
    print("CRASHED")
pygen.shutdown()
""")
    assert "CRASHED" in proc.stdout
    assert prefixed(proc.stdout, "last_words") == ["goodbye from stdout"]
    assert prefixed(proc.stderr, "last_words") == ["goodbye from stderr"]


def test_line_before_a_crash_by_signal_arrives():
    proc = driver("""
@pygen.remote(max_retries=0)
def killed():
    print("about to die")
    os.kill(os.getpid(), 9)

try:
    pygen.get(killed.remote(), timeout=30)
except pygen.exceptions.WorkerCrashedError:
    pass
pygen.shutdown()
""")
    assert prefixed(proc.stdout, "killed") == ["about to die"]


def test_line_before_shutdown_arrives():
    proc = driver("""
@pygen.remote
def says(i):
    print(f"said {i}")
    return i

assert pygen.get([says.remote(i) for i in range(5)]) == list(range(5))
pygen.shutdown()
print("AFTER SHUTDOWN")
""", cpus=2)
    before, _, after = proc.stdout.partition("AFTER SHUTDOWN")
    assert sorted(prefixed(before, "says")) == [f"said {i}" for i in range(5)]


def test_output_of_a_task_still_running_at_shutdown_arrives():
    proc = driver("""
@pygen.remote
def prints_then_sleeps():
    print("printed before shutdown")
    time.sleep(60)

ref = prints_then_sleeps.remote()
time.sleep(1.0)
pygen.shutdown()
print("AFTER SHUTDOWN")
""")
    before = proc.stdout.partition("AFTER SHUTDOWN")[0]
    assert prefixed(before, "prints_then_sleeps") == ["printed before shutdown"]


def test_output_at_interpreter_exit_without_shutdown_arrives():
    proc = driver("""
@pygen.remote
def says():
    print("said at exit")
    return 1

pygen.get(says.remote())
""")
    assert prefixed(proc.stdout, "says") == ["said at exit"]


def any_prefix(text: str, pid: int) -> list:
    """Lines printed by worker ``pid`` whatever task name they carry, prefix removed."""
    pat = re.compile(rf"^\([^()]+ pid={pid}\) (.*)$")
    return [m.group(1) for m in map(pat.match, text.splitlines()) if m]


def test_c_level_writes_are_forwarded():
    # (that they carry the right task name: the tests below)
    proc = driver("""
@pygen.remote
def raw():
    os.write(1, b"raw stdout\\n")
    os.write(2, b"raw stderr\\n")
    import ctypes
    libc = ctypes.CDLL(None)
    libc.puts(b"from puts")
    libc.fflush(None)
    return os.getpid()

print("WORKER", pygen.get(raw.remote()))
pygen.shutdown()
""")
    pid = int(re.search(r"WORKER (\d+)", proc.stdout).group(1))
    assert any_prefix(proc.stdout, pid) == ["raw stdout", "from puts"]
    assert any_prefix(proc.stderr, pid) == ["raw stderr"]


def test_output_of_a_subprocess_of_a_task_is_forwarded():
    proc = driver("""
import subprocess
@pygen.remote
def shell():
    subprocess.run(["echo", "from a child process"], check=True)
    subprocess.run([sys.executable, "-c", "import sys; print('child stderr', file=sys.stderr)"],
                   check=True)
    return os.getpid()

print("WORKER", pygen.get(shell.remote()))
pygen.shutdown()
""")
    pid = int(re.search(r"WORKER (\d+)", proc.stdout).group(1))
    assert any_prefix(proc.stdout, pid) == ["from a child process"]
    assert any_prefix(proc.stderr, pid) == ["child stderr"]


def test_undecodable_bytes_do_not_break_forwarding():
    proc = driver("""
@pygen.remote
def binary():
    os.write(1, b"bad \\xff\\xfe bytes\\n")
    print("after")
    return os.getpid()

print("WORKER", pygen.get(binary.remote()))
pygen.shutdown()
""")
    pid = int(re.search(r"WORKER (\d+)", proc.stdout).group(1))
    lines = any_prefix(proc.stdout, pid)
    assert len(lines) == 2 and lines[0].startswith("bad ") and lines[1] == "after", lines


def test_c_level_writes_carry_the_task_name():
    proc = driver('''
@pygen.remote
def raw():
    os.write(1, b"raw stdout\\n")
    os.write(2, b"raw stderr\\n")

pygen.get(raw.remote())
pygen.shutdown()
''')
    assert prefixed(proc.stdout, "raw") == ["raw stdout"], proc.stdout
    assert prefixed(proc.stderr, "raw") == ["raw stderr"], proc.stderr


def test_c_level_write_after_another_task_printed_names_its_own_task():
    proc = driver('''
@pygen.remote
def talks():
    print("python line")

@pygen.remote
def raw_only():
    os.write(1, b"raw line\\n")

pygen.get(talks.remote())
pygen.get(raw_only.remote())
pygen.shutdown()
''')
    assert prefixed(proc.stdout, "raw_only") == ["raw line"], proc.stdout


def test_subprocess_output_carries_the_task_name():
    proc = driver('''
import subprocess
@pygen.remote
def shell():
    subprocess.run(["echo", "from a child process"], check=True)

pygen.get(shell.remote())
pygen.shutdown()
''')
    assert prefixed(proc.stdout, "shell") == ["from a child process"], proc.stdout


def test_each_line_names_the_task_that_printed_it():
    proc = driver("""
@pygen.remote
def alpha(i):
    print(f"alpha {i}")
    return os.getpid()

@pygen.remote
def beta(i):
    print(f"beta {i}")
    return os.getpid()

pids = set()
for i in range(20):
    pids.add(pygen.get(alpha.remote(i)))
    pids.add(pygen.get(beta.remote(i)))
assert len(pids) == 1  # one worker ran both functions, alternating
pygen.shutdown()
""")
    assert prefixed(proc.stdout, "alpha") == [f"alpha {i}" for i in range(20)]
    assert prefixed(proc.stdout, "beta") == [f"beta {i}" for i in range(20)]


def test_name_option_is_the_prefix():
    proc = driver("""
@pygen.remote
def plain():
    print("who am i")

pygen.get(plain.options(name="custom_name").remote())
pygen.shutdown()
""")
    assert prefixed(proc.stdout, "custom_name") == ["who am i"]


def test_many_lines_all_arrive_in_order():
    proc = driver("""
@pygen.remote
def flood(n):
    for i in range(n):
        print(f"line {i:05d} " + "x" * 100)
    return n

pygen.get(flood.remote(20000))
pygen.shutdown()
""")
    lines = prefixed(proc.stdout, "flood")
    assert len(lines) == 20000
    assert lines[0].startswith("line 00000") and lines[-1].startswith("line 19999")
    assert lines == sorted(lines)


def test_log_to_driver_false_suppresses_worker_output():
    proc = driver("""
@pygen.remote
def chatty():
    print("should not appear")
    print("nor this", file=sys.stderr)
    os.write(1, b"nor raw\\n")
    return 7

assert pygen.get(chatty.remote()) == 7
pygen.shutdown()
print("DONE")
""", log=False)
    assert "DONE" in proc.stdout
    assert "should not appear" not in proc.stdout
    assert "nor raw" not in proc.stdout
    assert "nor this" not in proc.stderr
    assert "pid=" not in proc.stdout + proc.stderr


def test_driver_output_is_not_prefixed():
    proc = driver("""
print("driver line")
@pygen.remote
def f():
    print("task line")
pygen.get(f.remote())
pygen.shutdown()
""")
    assert "driver line\n" in proc.stdout
    assert not any(line.startswith("(") and "driver line" in line
                   for line in proc.stdout.splitlines())


@pytest.mark.usefixtures("capfd")
def test_forwarding_inside_this_process(capfd):
    """The same through pytest's capture: the forwarder writes to the driver's sys.stdout."""
    import pygen

    if pygen.is_initialized():
        pygen.shutdown()
    pygen.init(num_cpus=1, object_store_memory=64 * 2**20)
    try:
        @pygen.remote
        def hello_capfd():
            print("hello capfd")
            return os.getpid()

        pid = pygen.get(hello_capfd.remote(), timeout=30)
        deadline = time.monotonic() + 5
        seen = ""
        while time.monotonic() < deadline:
            seen += capfd.readouterr().out
            if "hello capfd" in seen:
                break
            time.sleep(0.02)
        assert f"(hello_capfd pid={pid}) hello capfd" in seen
    finally:
        pygen.shutdown()


def _spawn_driver(body: str, cpus: int = 2) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = PRELUDE.format(cpus=cpus, log=True) + body
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def test_a_slow_reader_of_stdout_stalls_only_the_worker_that_prints():
    """Nobody reads the driver's stdout until the end: the worker that floods it waits,
    while an unrelated task's result arrives (the node's I/O thread never writes to the
    driver's streams itself).  Afterwards every line arrives, in order."""
    proc = _spawn_driver("""
@pygen.remote
def flood(n):
    for i in range(n):
        print(f"flood {i:07d} " + "y" * 200)
    return n

@pygen.remote
def quick(x):
    time.sleep(0.2)   # longer than the getter's spin: the I/O thread delivers the result
    return x + 1

f = flood.remote(100_000)                     # ~21 MB of output: far more than any pipe
time.sleep(0.5)                                # it floods; nobody reads the driver's stdout
assert pygen.get(quick.remote(1), timeout=60) == 2
sys.stderr.write("QUICK OK\\n"); sys.stderr.flush()
assert pygen.get(f, timeout=120) == 100_000
pygen.shutdown()
sys.stderr.write("DONE\\n"); sys.stderr.flush()
""")
    try:
        # read stderr only: stdout stays unread until the quick task has answered
        first = proc.stderr.readline().decode()
        assert first == "QUICK OK\n", first + proc.stderr.read().decode()[-2000:]
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = prefixed(out.decode(), "flood")
    assert len(lines) == 100_000
    assert lines == sorted(lines)


def test_a_huge_line_without_newline_is_forwarded_in_pieces_with_bounded_memory():
    """100 MB without a newline: forwarded in 1 MiB pieces, each prefixed; the driver does
    not hold (nor re-copy) the whole line."""
    proc = _spawn_driver("""
import resource
@pygen.remote
def huge():
    chunk = b"z" * (1 << 20)
    for _ in range(100):
        os.write(1, chunk)
    return os.getpid()

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pid = pygen.get(huge.remote(), timeout=120)
pygen.shutdown()
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
sys.stderr.write(f"PID {pid} GREW_KB {grew}\\n")
""")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-3000:]
    pid, grew = re.search(r"PID (\d+) GREW_KB (\d+)", err.decode()).groups()
    pieces = prefixed(out.decode(), "huge", int(pid))
    assert [len(p) for p in pieces] == [1 << 20] * 100
    assert set("".join(pieces)) == {"z"}
    assert int(grew) < 60 * 1024, f"the driver grew by {grew} kB for a 100 MB line"
