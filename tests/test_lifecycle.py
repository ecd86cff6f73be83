"""Lifecycle (SPEC §1): init/shutdown/is_initialized, auto-init, init inside a worker, the
/dev/shm check, argument checks, close-on-exec descriptors, and clean exits: after
``shutdown``, at interpreter exit and after the driver is killed by a signal, no worker,
segment, descriptor or file of pygen is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import pygen
from pygen.exceptions import PygenError

from conftest import (MiB, assert_clean_after_shutdown, child_pids, run_python, shm_entries,
                      wait_until)

STORE = 64 * MiB


@pytest.fixture(autouse=True)
def no_session():
    """Every test here starts and ends without pygen."""
    if pygen.is_initialized():
        pygen.shutdown()
    yield
    if pygen.is_initialized():
        pygen.shutdown()
    assert_clean_after_shutdown()


def fds() -> dict:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the descriptor of the listing itself
    return out


def cloexec(fd: int, pid: str = "self") -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & 0o2000000)
    raise RuntimeError(f"no flags for fd {fd}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pygen.remote
def getpid():
    return os.getpid()


@pygen.remote
def add(a, b):
    return a + b


# -- init, is_initialized, auto-init --------------------------------------------------------------

def test_is_initialized_follows_init_and_shutdown():
    assert not pygen.is_initialized()
    pygen.init(num_cpus=1, object_store_memory=STORE)
    assert pygen.is_initialized()
    assert pygen.get(add.remote(1, 2), timeout=30) == 3
    pygen.shutdown()
    assert not pygen.is_initialized()
    assert_clean_after_shutdown()


def test_public_names_at_top_level():
    for name in ("init", "shutdown", "is_initialized", "remote", "put", "get", "wait", "cancel",
                 "ObjectRef", "ObjectRefGenerator", "DynamicObjectRefGenerator", "exceptions",
                 "state"):
        assert hasattr(pygen, name), name
    assert pygen.exceptions.TaskError.__module__.startswith("pygen")
    for name in ("list_objects", "list_tasks", "list_actors", "store_stats"):
        assert callable(getattr(pygen.state, name)), name


AUTO_INIT = """
import os, json, pygen
assert not pygen.is_initialized()
{action}
assert pygen.is_initialized()
stats = pygen.state.store_stats()
workers = []
for tid in os.listdir(f"/proc/{{os.getpid()}}/task"):
    try:
        with open(f"/proc/{{os.getpid()}}/task/{{tid}}/children") as f:
            workers += f.read().split()
    except FileNotFoundError:  # a short-lived thread (a copy helper) ended meanwhile
        pass
print(json.dumps({{"capacity": stats["capacity"], "workers": len(workers)}}))
"""


@pytest.mark.parametrize("action", [
    "r = pygen.put(1); assert pygen.get(r) == 1",
    "f = pygen.remote(lambda: 5); assert pygen.get(f.remote()) == 5",
    "import pytest\nwith pytest.raises(pygen.exceptions.ObjectLostError):\n"
    "    pygen.get(pygen.ObjectRef(bytes(20)), timeout=30)",
    "assert pygen.wait([pygen.put(2)])[0]",
], ids=["put", "remote", "get", "wait"])
def test_auto_init_on_first_use(action):
    proc = run_python(AUTO_INIT.format(action=action),
                      env={"PYGEN_OBJECT_STORE_MEMORY": str(STORE)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["capacity"] == STORE


def test_auto_init_uses_the_defaults():
    code = ("import os\nfor k in ('PYGEN_NUM_CPUS', 'PYGEN_OBJECT_STORE_MEMORY'):\n"
            "    os.environ.pop(k, None)\n" + AUTO_INIT.format(
                action="pygen.put(1); pygen.get(pygen.remote(lambda: 1).remote())"))
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    st = os.statvfs("/dev/shm")
    expected = min(int(ram * 0.30), st.f_bavail * st.f_frsize)
    assert 0.8 * expected <= out["capacity"] <= 1.01 * expected
    assert 1 <= out["workers"] <= os.cpu_count()


def test_env_defaults_for_auto_init():
    proc = run_python(AUTO_INIT.format(action="import time; pygen.put(1); time.sleep(1)"),
                      env={"PYGEN_NUM_CPUS": "1", "PYGEN_OBJECT_STORE_MEMORY": str(32 * MiB)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"capacity": 32 * MiB, "workers": 1}


def test_init_twice_raises_unless_ignored():
    pygen.init(num_cpus=1, object_store_memory=STORE)
    ref = pygen.put("kept")
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        pygen.init(num_cpus=1, object_store_memory=STORE)
    pygen.init(num_cpus=2, object_store_memory=STORE, ignore_reinit_error=True)
    assert pygen.is_initialized()
    assert pygen.get(ref) == "kept"  # the same session goes on
    assert pygen.state.store_stats()["capacity"] == STORE


def test_auto_init_then_explicit_init_raises():
    os.environ["PYGEN_OBJECT_STORE_MEMORY"] = str(STORE)
    os.environ["PYGEN_NUM_CPUS"] = "1"
    try:
        pygen.put(1)  # auto-init
    finally:
        del os.environ["PYGEN_OBJECT_STORE_MEMORY"], os.environ["PYGEN_NUM_CPUS"]
    assert pygen.is_initialized()
    with pytest.raises(RuntimeError):
        pygen.init()


def test_num_cpus_sets_the_pool_and_concurrency(tmp_path):
    @pygen.remote
    def nap():
        start = time.monotonic()  # CLOCK_MONOTONIC is system-wide
        time.sleep(0.2)
        return os.getpid(), start, time.monotonic()

    @pygen.remote
    def meet(mine, other):
        """Waits (up to 60 s) for the other task to have started: true only side by side."""
        open(mine, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(other) and time.monotonic() < deadline:
            time.sleep(0.002)
        return os.getpid(), os.path.exists(other)

    pygen.init(num_cpus=1, object_store_memory=STORE)
    assert wait_until(lambda: len(child_pids()) == 1)
    runs = sorted(pygen.get([nap.remote(), nap.remote()], timeout=30), key=lambda r: r[1])
    assert runs[1][1] >= runs[0][2], runs  # one after the other
    assert len({pid for pid, _, _ in runs}) == 1
    pygen.shutdown()
    pygen.init(num_cpus=2, object_store_memory=STORE)
    assert wait_until(lambda: len(child_pids()) == 2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    met = pygen.get([meet.remote(a, b), meet.remote(b, a)], timeout=120)
    assert [seen for _, seen in met] == [True, True], met  # side by side
    assert len({pid for pid, _ in met}) == 2


def test_num_cpus_zero_stores_objects_but_cannot_run_tasks():
    pygen.init(num_cpus=0, object_store_memory=STORE)
    assert pygen.get(pygen.put([1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="num_cpus"):
        pygen.get(add.remote(1, 2), timeout=30)
    assert pygen.get(add.options(num_cpus=0).remote(1, 2), timeout=30) == 3


# -- init arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(num_cpus="2"), TypeError, "num_cpus"),
    (dict(num_cpus=True), TypeError, "num_cpus"),
    (dict(num_cpus=-1), ValueError, "num_cpus"),
    (dict(num_cpus=float("nan")), ValueError, "num_cpus"),
    (dict(num_cpus=float("inf")), ValueError, "num_cpus"),
    (dict(object_store_memory="1GB"), TypeError, "object_store_memory"),
    (dict(object_store_memory=float("inf")), TypeError, "object_store_memory"),
    (dict(object_store_memory=1.5e8), TypeError, "object_store_memory"),
    (dict(object_store_memory=1000), ValueError, "object_store_memory"),
    (dict(object_store_memory=-STORE), ValueError, "object_store_memory"),
    (dict(worker_memory_limit=0), ValueError, "worker_memory_limit"),
    (dict(worker_memory_limit="1G"), TypeError, "worker_memory_limit"),
    (dict(worker_memory_limit=float("nan")), TypeError, "worker_memory_limit"),
    (dict(spill_dir="/nonexistent/pygen/spill"), ValueError, "spill_dir"),
])
def test_bad_init_arguments(kwargs, exc, word):
    kwargs.setdefault("object_store_memory", STORE)
    before = fds()
    with pytest.raises(exc, match=word):
        pygen.init(**kwargs)
    assert not pygen.is_initialized()
    assert child_pids() == []
    assert shm_entries(os.getpid()) == []
    assert set(fds()) <= set(before) | {max(before) + 1}


def test_init_rejects_unknown_arguments():
    with pytest.raises(TypeError):
        pygen.init(num_gpus=1)
    with pytest.raises(TypeError):
        pygen.init(2, STORE, None)  # worker_memory_limit is keyword-only
    assert not pygen.is_initialized()


def test_init_refuses_an_arena_larger_than_dev_shm():
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    with pytest.raises(ValueError) as info:
        pygen.init(num_cpus=1, object_store_memory=free + 1024 * MiB)
    text = str(info.value)
    assert "object_store_memory" in text
    assert "/dev/shm" in text
    assert "smaller" in text.lower() or "larger" in text.lower()  # says what to do
    assert not pygen.is_initialized()
    assert child_pids() == []


# -- init inside a worker -------------------------------------------------------------------------

def test_init_inside_a_worker_is_a_no_op():
    @pygen.remote
    def calls_init():
        pygen.init()
        pygen.init(num_cpus=64, object_store_memory=2**40)  # would fail in a driver
        pygen.init(ignore_reinit_error=True)
        pygen.shutdown()  # a no-op too
        return pygen.get(pygen.put("still works"))

    pygen.init(num_cpus=2, object_store_memory=STORE)
    assert wait_until(lambda: len(child_pids()) == 2)
    before = set(child_pids())
    assert pygen.get(calls_init.remote(), timeout=30) == "still works"
    assert pygen.get([add.remote(i, i) for i in range(10)], timeout=30) == [2 * i
                                                                            for i in range(10)]
    assert set(child_pids()) == before  # nothing was started or stopped


def test_module_that_inits_at_import_time_can_be_used_in_a_task(tmp_path):
    (tmp_path / "inits_on_import.py").write_text(
        "import pygen\npygen.init()\nVALUE = 41\n")

    @pygen.remote
    def use_module(path):
        import sys
        sys.path.insert(0, path)
        import inits_on_import
        return inits_on_import.VALUE + 1

    pygen.init(num_cpus=1, object_store_memory=STORE)
    assert pygen.get(use_module.remote(str(tmp_path)), timeout=30) == 42


# -- shutdown ------------------------------------------------------------------------------------

def test_shutdown_leaves_no_worker_segment_descriptor_or_thread():
    before_fds = fds()
    before_threads = threading.active_count()
    pygen.init(num_cpus=2, object_store_memory=STORE)
    workers = set()
    assert wait_until(lambda: len(child_pids()) == 2)
    workers |= set(child_pids())
    refs = [pygen.put(os.urandom(1 << 20)) for _ in range(3)]
    assert len(pygen.get(refs)) == 3
    assert pygen.get(add.remote(1, 2), timeout=30) == 3
    pygen.shutdown()
    assert_clean_after_shutdown()
    for pid in workers:
        assert not alive(pid)
    after = fds()
    assert set(after) == set(before_fds), {fd: after[fd] for fd in set(after) - set(before_fds)}
    assert wait_until(lambda: threading.active_count() <= before_threads, 30), \
        [t.name for t in threading.enumerate()]


def test_shutdown_is_idempotent_and_fine_without_init():
    pygen.shutdown()
    pygen.init(num_cpus=1, object_store_memory=STORE)
    pygen.shutdown()
    pygen.shutdown()
    assert_clean_after_shutdown()


def test_shutdown_stops_busy_workers_promptly():
    @pygen.remote
    def long_sleep():
        time.sleep(60)

    pygen.init(num_cpus=2, object_store_memory=STORE)
    refs = [long_sleep.remote(), long_sleep.remote()]
    assert wait_until(lambda: any(t["state"] == "running" for t in pygen.state.list_tasks()))
    time.sleep(0.2)
    t0 = time.monotonic()
    pygen.shutdown()
    # a liveness bound far below the tasks' 60 s: shutdown kills them, it does not wait
    assert time.monotonic() - t0 < 30
    assert_clean_after_shutdown()
    del refs


def test_get_blocked_in_another_thread_ends_at_shutdown():
    @pygen.remote
    def long_sleep():
        time.sleep(60)

    pygen.init(num_cpus=1, object_store_memory=STORE)
    ref = long_sleep.remote()
    outcome = {}

    def waiter():
        try:
            outcome["value"] = pygen.get(ref)
        except BaseException as exc:  # noqa: BLE001 -- whatever it is, it must come
            outcome["error"] = exc

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.3)
    pygen.shutdown()
    t.join(5)
    assert not t.is_alive(), "get still blocked after shutdown"
    assert isinstance(outcome.get("error"), PygenError), outcome


def test_reinit_after_shutdown_works_and_old_refs_are_refused():
    pygen.init(num_cpus=1, object_store_memory=STORE)
    old = pygen.put("old")
    old_task = add.remote(1, 1)
    assert pygen.get(old_task, timeout=30) == 2
    pygen.shutdown()
    assert_clean_after_shutdown()
    pygen.init(num_cpus=2, object_store_memory=2 * STORE)
    assert pygen.state.store_stats()["capacity"] == 2 * STORE
    assert pygen.get(add.remote(2, 3), timeout=30) == 5
    assert pygen.get(pygen.put("new")) == "new"
    with pytest.raises((ValueError, PygenError)):
        pygen.get(old, timeout=30)
    del old, old_task
    pygen.shutdown()
    assert_clean_after_shutdown()
    for _ in range(3):  # and again, quickly
        pygen.init(num_cpus=1, object_store_memory=STORE)
        assert pygen.get(add.remote(1, 1), timeout=30) == 2
        pygen.shutdown()
    assert_clean_after_shutdown()


# -- descriptors -------------------------------------------------------------------------------

LIST_FDS = [sys.executable, "-c",
            "import os; print(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)))"]


def test_every_descriptor_pygen_opens_is_close_on_exec():
    before = set(fds())
    pygen.init(num_cpus=2, object_store_memory=STORE)
    pygen.get([pygen.put(os.urandom(1 << 20)), add.remote(1, 2)], timeout=30)
    opened = set(fds()) - before
    assert opened, "pygen opened no descriptor?"
    inheritable = [(fd, os.readlink(f"/proc/self/fd/{fd}")) for fd in opened if not cloexec(fd)]
    assert inheritable == []
    # a child started with close_fds=False sees none of them
    seen = subprocess.run(LIST_FDS, capture_output=True, text=True, close_fds=False,
                          timeout=30).stdout.split()
    assert not ({int(x) for x in seen} & opened)


def inherited_from_outside() -> set:
    """Inheritable descriptors this test process got from whoever started it."""
    return {fd for fd in fds() if fd > 2 and not cloexec(fd)}


@pygen.remote
def child_fds():
    py = subprocess.run(LIST_FDS, capture_output=True, text=True, close_fds=False,
                        timeout=30).stdout.split()
    ls = subprocess.run(["ls", "-l", "/proc/self/fd"], capture_output=True, text=True,
                        close_fds=False, timeout=30).stdout
    mine = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            mine[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return ([int(x) for x in py],
            sorted(int(line.split()[-3]) for line in ls.splitlines() if "->" in line),
            {fd: (target, cloexec(fd)) for fd, target in mine.items() if fd > 2})


def test_a_subprocess_of_a_task_inherits_no_pygen_descriptor():
    outside = inherited_from_outside()  # (strict, with a descriptor of ours: the next test)
    pygen.init(num_cpus=1, object_store_memory=STORE)
    py, ls, worker_fds = pygen.get(child_fds.remote(), timeout=30)
    assert set(py) - outside == {0, 1, 2, 3}, py  # 3: the listing's own descriptor
    assert set(ls) - outside == {0, 1, 2, 3}, ls
    # inside the worker every descriptor above 2 that pygen made is close-on-exec
    ours = {fd: v for fd, v in worker_fds.items() if fd not in outside}
    assert ours and all(flag for _, flag in ours.values()), worker_fds


def test_subprocess_of_a_task_sees_only_0_1_2_strict(fresh):
    r, w = os.pipe()  # an inheritable descriptor of the driver, not pygen's
    os.set_inheritable(w, True)
    try:
        fresh(num_cpus=1)
        py, ls, worker_fds = pygen.get(child_fds.remote(), timeout=30)
        assert py == [0, 1, 2, 3], py
        assert ls == [0, 1, 2, 3], ls
    finally:
        os.close(r)
        os.close(w)


# -- clean exits of the driver ------------------------------------------------------------------

DRIVER = """
import os, sys, time, pygen
pygen.init(num_cpus=2, object_store_memory={store}, spill_dir={spill!r})

@pygen.remote
def long_sleep():
    time.sleep(120)

@pygen.remote
def big(i):
    import numpy as np
    return np.full(20_000_000 // 8, i)

keep = [big.remote(i) for i in range(5)]      # more than the arena: some are spilled
pygen.wait(keep, num_returns=5, timeout=60)
refs = [long_sleep.remote(), long_sleep.remote()]
def workers():
    out = []
    for tid in os.listdir(f"/proc/{{os.getpid()}}/task"):
        try:
            with open(f"/proc/{{os.getpid()}}/task/{{tid}}/children") as f:
                out += [int(p) for p in f.read().split()]
        except FileNotFoundError:  # a short-lived thread (a copy helper) ended meanwhile
            pass
    return out
deadline = time.time() + 30
while len(workers()) < 2 and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.2)
print("PIDS", os.getpid(), *workers(), flush=True)
{then}
"""


def start_driver(tmp_path, then: str) -> "tuple[subprocess.Popen, int, list]":
    spill = tmp_path / "spill"
    spill.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(store=STORE, spill=str(spill), then=then)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("PIDS"):
        proc.kill()
        raise AssertionError(f"driver did not start: {line!r} {proc.stderr.read()}")
    pids = [int(x) for x in line.split()[1:]]
    assert len(pids) >= 3, pids
    return proc, pids[0], pids[1:]


def assert_driver_left_nothing(tmp_path, driver_pid: int, workers: list,
                               timeout: float = 30.0) -> None:
    assert wait_until(lambda: not any(alive(p) for p in workers), timeout), \
        [p for p in workers if alive(p)]
    assert shm_entries(driver_pid) == []
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers
    assert (tmp_path / "spill").exists() and os.listdir(tmp_path / "spill") == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_driver_killed_by_a_signal_leaves_nothing(tmp_path, sig):
    proc, driver_pid, workers = start_driver(tmp_path, "time.sleep(120)")
    try:
        assert all(alive(p) for p in workers)
        proc.send_signal(sig)
        proc.wait(30)
        assert_driver_left_nothing(tmp_path, driver_pid, workers)
    finally:
        proc.kill()
        proc.wait()
        for p in workers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("then", [
    "pass",                                   # falls off the end of the script
    "sys.exit(3)",
    "raise RuntimeError('uncaught')",
], ids=["end", "sys.exit", "uncaught"])
def test_interpreter_exit_without_shutdown_leaves_nothing(tmp_path, then):
    proc, driver_pid, workers = start_driver(tmp_path, then)
    try:
        t0 = time.monotonic()
        proc.wait(15)
        assert time.monotonic() - t0 < 10, "exit took too long"
        assert proc.returncode == {"pass": 0, "sys.exit(3)": 3}.get(then, 1), proc.stderr.read()
        assert_driver_left_nothing(tmp_path, driver_pid, workers)
    finally:
        proc.kill()
        proc.wait()


def test_exit_while_get_is_blocked_in_a_daemon_thread(tmp_path):
    then = ("import threading\n"
            "threading.Thread(target=lambda: pygen.get(refs[0]), daemon=True).start()\n"
            "time.sleep(0.2)")
    proc, driver_pid, workers = start_driver(tmp_path, then)
    try:
        proc.wait(15)
        assert proc.returncode == 0, proc.stderr.read()
        assert_driver_left_nothing(tmp_path, driver_pid, workers)
    finally:
        proc.kill()
        proc.wait()


# -- a small /dev/shm (own mount namespace) ------------------------------------------------------

SMALL_SHM = """
import errno, os, sys, time
import numpy as np
import pygen
MiB = 2**20
mode = sys.argv[1]
if mode == "default":
    pygen.init(num_cpus=1)
    print("CAPACITY", pygen.state.store_stats()["capacity"])
    sys.exit(0)
try:
    pygen.init(num_cpus=1, object_store_memory=200 * MiB)
    print("NOT REFUSED")
except ValueError as e:
    print("REFUSED", e)
pygen.init(num_cpus=1, object_store_memory=64 * MiB)
if mode == "held":  # stored (so reserved) before /dev/shm fills up
    held = [pygen.put(np.full(10_000_000 // 8, 100 + i)) for i in range(2)]
# someone else fills /dev/shm to the last byte
fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_WRONLY)
try:
    while os.write(fd, b"x" * MiB) == MiB:
        pass
except OSError as e:
    assert e.errno == errno.ENOSPC, e

@pygen.remote
def make(i):
    return np.full(20_000_000 // 8, i)

for what, fn in (("put", lambda i: pygen.put(np.full(20_000_000 // 8, i))),
                 ("return", lambda i: make.remote(i))):
    try:
        refs = [fn(i) for i in range(3)]
        print(what, "VALUES", [int(pygen.get(r, timeout=30)[0]) for r in refs])
        del refs
    except pygen.exceptions.ObjectStoreFullError as e:
        print(what, "FULL", str(e).splitlines()[0])
    except Exception as e:
        print(what, "ERROR", type(e).__name__, str(e).splitlines()[0])
if mode == "held":
    print("held VALUES", [int(pygen.get(r)[-1]) for r in held])
pygen.shutdown()
print("DONE")
"""


def run_with_small_shm(tmp_path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "small_shm.py"
    script.write_text(SMALL_SHM)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (unshare -m)")
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o size=100m tmpfs /dev/shm && exec {sys.executable} {script} {mode}"],
        capture_output=True, text=True, env=env, timeout=120)


def test_default_arena_fits_a_small_dev_shm(tmp_path):
    proc = run_with_small_shm(tmp_path, "default")
    assert proc.returncode == 0, proc.stderr
    capacity = int(proc.stdout.split("CAPACITY")[1].split()[0])
    assert MIN_STORE <= capacity <= 100 * MiB


MIN_STORE = 16 * MiB


def test_full_dev_shm_after_init_is_never_a_sigbus(tmp_path):
    """Whatever happens to /dev/shm after init, a put or a return is an error, not a crash."""
    proc = run_with_small_shm(tmp_path, "immediately")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)  # -7: SIGBUS
    assert "REFUSED" in proc.stdout and "NOT REFUSED" not in proc.stdout
    assert "DONE" in proc.stdout
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("put ")][0]
    assert "VALUES [0, 1, 2]" in line or ("FULL" in line and "/dev/shm" in line), line
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("return ")][0]
    assert "VALUES [0, 1, 2]" in line or ("FULL" in line and "/dev/shm" in line), line


def test_objects_stored_before_dev_shm_fills_stay_readable(tmp_path):
    """The arena takes memory as objects need it (a ceiling, not a commitment): what is
    stored keeps its memory when /dev/shm fills up; new values get it or a clean error."""
    proc = run_with_small_shm(tmp_path, "held")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)  # -7: SIGBUS
    assert "held VALUES [100, 101]" in proc.stdout, proc.stdout
    for what in ("put", "return"):
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith(what + " ")][0]
        assert "VALUES [0, 1, 2]" in line or ("FULL" in line and "/dev/shm" in line), line


# -- fork after init (SPEC §1: the child does not own the runtime) ---------------------------------

FORK = """
import json, os, sys
import pygen
MiB = 2**20
pygen.init(num_cpus=1, object_store_memory=64 * MiB)

@pygen.remote
def add(a, b):
    return a + b

@pygen.remote
def count(n):
    yield from range(n)

old = add.remote(1, 1)
assert pygen.get(old, timeout=60) == 2
gen = count.remote(3)

def in_child(body):
    # body() runs in a forked child that then leaves by sys.exit: atexit handlers run
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            report = body()
        except BaseException as e:
            report = ["raised", type(e).__name__, str(e)]
        os.write(w, json.dumps(report).encode())
        os.close(w)
        sys.exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return [os.waitstatus_to_exitcode(status), json.loads(data)]

def use_pygen():
    out = {"initialized": pygen.is_initialized()}
    uses = {
        "remote": lambda: add.remote(1, 2),
        "put": lambda: pygen.put(1),
        "get": lambda: pygen.get(old, timeout=30),
        "wait": lambda: pygen.wait([old], timeout=30),
        "next": lambda: next(gen),
        "state": lambda: pygen.state.list_tasks(),
    }
    for name, use in uses.items():
        try:
            use()
            out[name] = "no error"
        except RuntimeError as e:
            out[name] = str(e)
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    pygen.shutdown()  # not this process's runtime: nothing to do
    pygen.init(num_cpus=1, object_store_memory=64 * MiB)
    out["own"] = pygen.get(add.remote(20, 22), timeout=60)
    try:
        pygen.get(old, timeout=30)
        out["old_after_init"] = "no error"
    except RuntimeError as e:
        out["old_after_init"] = str(e)
    return out  # the child's own runtime is shut down by its atexit handler

print("EXIT", json.dumps(in_child(lambda: "exited")), flush=True)
print("AFTER-EXIT", pygen.get(add.remote(2, 3), timeout=30), flush=True)
print("USE", json.dumps(in_child(use_pygen)), flush=True)
print("AFTER-USE", pygen.get(add.remote(3, 4), timeout=30),
      [pygen.get(r, timeout=30) for r in gen], flush=True)
pygen.shutdown()
print("DONE", flush=True)
"""


def test_fork_child_never_touches_the_parents_runtime():
    proc = run_python(FORK, timeout=180)
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()
             if " " in ln}
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    # a child that simply exits (running pygen's atexit handler) leaves the parent working
    assert json.loads(lines["EXIT"]) == [0, "exited"]
    assert lines["AFTER-EXIT"] == "5"
    code, report = json.loads(lines["USE"])
    assert code == 0, report
    assert report["initialized"] is False
    for use in ("remote", "put", "get", "wait", "next", "state"):
        assert "pygen.init()" in report[use] and "fork" in report[use], (use, report[use])
    # after init in the child it has a runtime of its own; the parent's refs stay refused
    assert report["own"] == 42
    assert "parent" in report["old_after_init"], report["old_after_init"]
    assert lines["AFTER-USE"] == "7 [0, 1, 2]"
    assert "DONE" in proc.stdout


@pygen.remote(max_retries=0)
def fork_in_task(how):
    """Fork inside a task; the child ends as ``how`` says. Returns (child's exit code,
    what it reported, the task's own pid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if how == "use":
            try:
                pygen.put(1)
                report = "no error"
            except RuntimeError as e:
                report = str(e)
            os.write(w, report.encode())
            os._exit(0)
        if how == "exit":
            sys.exit(7)
        if how == "raise":
            raise ValueError("raised in the child")
        return "returned by the child"  # back into the worker's loop, which is not its own
    os.close(w)
    report = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        report += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), report.decode(), os.getpid()


def test_fork_inside_a_task_never_speaks_for_the_worker():
    """A child forked by a task never reports for it nor reads the worker's socket: the
    task's result is the parent's, the child exits as it says, the worker goes on."""
    pygen.init(num_cpus=1, object_store_memory=STORE)
    worker = pygen.get(getpid.remote(), timeout=60)
    code, report, pid = pygen.get(fork_in_task.remote("use"), timeout=60)
    assert (code, pid) == (0, worker)
    assert "pygen.init()" in report and "fork" in report, report
    assert pygen.get(fork_in_task.remote("exit"), timeout=60) == (7, "", worker)
    assert pygen.get(fork_in_task.remote("raise"), timeout=60) == (1, "", worker)
    assert pygen.get(fork_in_task.remote("return"), timeout=60) == (1, "", worker)
    # the same worker still serves tasks, with nothing lost or answered twice
    assert pygen.get([add.remote(i, 1) for i in range(20)], timeout=60) == list(range(1, 21))
    assert pygen.get(getpid.remote(), timeout=60) == worker
