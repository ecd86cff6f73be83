"""``pygen.cancel`` (SPEC §2): queued tasks never run, running tasks get TaskCancelledError
raised inside them within 1 s, ``force=True`` kills the worker, ``recursive`` reaches children.

Tasks report what happened to them with marker files in ``tmp_path``, so every claim
("it never ran", "the error was raised inside it") is checked, not assumed.
"""
from __future__ import annotations

import os
import time

import pytest

import pygen
from pygen.exceptions import TaskCancelledError, WorkerCrashedError

from conftest import child_pids, wait_until

pytestmark = pytest.mark.usefixtures("session")


def touch(path: str, text: str = "") -> None:
    """Create ``path`` with ``text`` atomically: whoever sees it sees all of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_file(path, timeout: float = 30.0) -> bool:
    return wait_until(lambda: os.path.exists(path), timeout, 0.002)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pygen.remote
def hold(started: str, release: str):
    """Occupies a CPU until ``release`` exists (polls: never blocks in pygen)."""
    touch(started, str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "held"


@pygen.remote
def mark(path: str):
    touch(path)
    return "ran"


@pygen.remote
def sleeper(d: str, seconds: float = 30):
    """Sleeps; records whether TaskCancelledError was raised inside it."""
    try:  # (a cancel may arrive as soon as "started" exists: it must land inside the try)
        touch(os.path.join(d, "started"), str(os.getpid()))
        time.sleep(seconds)
    except TaskCancelledError:
        touch(os.path.join(d, "caught"))
        raise
    touch(os.path.join(d, "finished"))
    return "slept"


@pygen.remote
def getpid():
    return os.getpid()


def fill_cpus(tmp_path, n: int = 2):
    """Start ``n`` tasks that hold a CPU each; returns (refs, release path)."""
    release = str(tmp_path / "release")
    refs = []
    for i in range(n):
        started = str(tmp_path / f"started-{i}")
        refs.append(hold.remote(started, release))
    for i in range(n):
        assert wait_file(str(tmp_path / f"started-{i}"))
    return refs, release


# -- queued tasks -------------------------------------------------------------------------------

def test_queued_task_never_runs(tmp_path):
    holders, release = fill_cpus(tmp_path)
    marker = str(tmp_path / "queued-ran")
    queued = mark.remote(marker)
    later = mark.remote(str(tmp_path / "later-ran"))
    time.sleep(0.05)
    pygen.cancel(queued)
    with pytest.raises(TaskCancelledError):
        pygen.get(queued, timeout=20)  # before the CPUs are released: no waiting for a slot
    touch(release)
    assert pygen.get(holders, timeout=30) == ["held", "held"]
    assert pygen.get(later, timeout=30) == "ran"  # the queue moved on past it
    time.sleep(0.2)
    assert not os.path.exists(marker)
    with pytest.raises(TaskCancelledError):
        pygen.get(queued, timeout=20)


def test_task_waiting_for_its_argument_never_runs(tmp_path):
    holders, release = fill_cpus(tmp_path, 1)
    marker = str(tmp_path / "dependent-ran")
    arg = hold.remote(str(tmp_path / "started-arg"), release)
    dependent = mark.remote(marker)
    dependent_on_arg = pygen.remote(lambda x, p: touch(p)).remote(arg, marker)
    pygen.cancel(dependent_on_arg)
    with pytest.raises(TaskCancelledError):
        pygen.get(dependent_on_arg, timeout=20)
    touch(release)
    pygen.get(holders + [arg], timeout=30)
    pygen.get(dependent, timeout=30)
    os.unlink(marker)
    time.sleep(0.2)
    assert not os.path.exists(marker)


def test_dependent_of_cancelled_task_fails_with_task_cancelled(tmp_path):
    holders, release = fill_cpus(tmp_path)
    queued = mark.remote(str(tmp_path / "queued"))
    marker = str(tmp_path / "dependent")
    dependent = pygen.remote(lambda x, p: touch(p)).remote(queued, marker)
    pygen.cancel(queued, recursive=False)
    touch(release)
    pygen.get(holders, timeout=30)
    with pytest.raises(TaskCancelledError):
        pygen.get(dependent, timeout=30)
    assert not os.path.exists(marker)


# -- running tasks --------------------------------------------------------------------------------

def test_running_task_gets_cancelled_error_inside_sleep(tmp_path):
    """The sleep (120 s) is interrupted: the error comes long before it could end (a
    liveness bound, not a measure of speed: speed lives in bench/)."""
    d = str(tmp_path)
    ref = sleeper.remote(d, 120)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=60)
    assert os.path.exists(os.path.join(d, "caught")), "not raised inside the task"
    assert not os.path.exists(os.path.join(d, "finished"))


def test_cancelled_error_is_not_a_task_error(tmp_path):
    d = str(tmp_path)
    ref = sleeper.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError) as info:
        pygen.get(ref, timeout=30)
    assert "sleeper" in str(info.value)
    assert isinstance(info.value, pygen.exceptions.PygenError)


def test_running_task_in_a_python_loop_is_cancelled(tmp_path):
    @pygen.remote
    def spin(d):
        try:  # started inside the try: a cancel may come at once
            touch(os.path.join(d, "started"))
            x = 0
            while True:
                x += 1
        except TaskCancelledError:
            touch(os.path.join(d, "caught"))
            raise

    d = str(tmp_path)
    ref = spin.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=60)  # the loop never ends by itself
    assert os.path.exists(os.path.join(d, "caught"))


def test_cancelled_task_that_swallows_the_error_still_reports_cancelled(tmp_path):
    @pygen.remote
    def stubborn(d):
        try:  # started inside the try: a cancel may come at once
            touch(os.path.join(d, "started"))
            time.sleep(30)
        except TaskCancelledError:
            touch(os.path.join(d, "caught"))
        return "finished anyway"

    d = str(tmp_path)
    ref = stubborn.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    assert os.path.exists(os.path.join(d, "caught"))


def test_cancelled_task_is_not_retried(tmp_path):
    @pygen.remote(max_retries=3, retry_exceptions=True)
    def counted(d):
        with open(os.path.join(d, "attempts"), "a") as f:
            f.write("x")
        touch(os.path.join(d, "started"))
        time.sleep(30)

    d = str(tmp_path)
    ref = counted.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    time.sleep(0.3)
    assert open(os.path.join(d, "attempts")).read() == "x"


def test_worker_survives_a_normal_cancel(tmp_path):
    d = str(tmp_path)
    ref = sleeper.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pid = int(open(os.path.join(d, "started")).read())
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    assert alive(pid)
    assert pid in pygen.get([getpid.remote() for _ in range(20)], timeout=30)


def test_async_task_is_cancelled(tmp_path):
    import asyncio

    @pygen.remote
    async def napper(d):
        try:  # started inside the try: a cancel may come at once
            touch(os.path.join(d, "started"))
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            touch(os.path.join(d, "caught"))
            raise

    d = str(tmp_path)
    ref = napper.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=60)  # long before the sleep could end
    assert os.path.exists(os.path.join(d, "caught"))


def test_cancel_twice(tmp_path):
    d = str(tmp_path)
    ref = sleeper.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pygen.cancel(ref)
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    assert pygen.get(getpid.remote(), timeout=30)


def test_task_blocked_in_nested_get_is_cancelled(tmp_path):
    @pygen.remote
    def waits_on_child(d, release):
        try:  # started inside the try: a cancel may come at once
            touch(os.path.join(d, "started"))
            return pygen.get(hold.remote(os.path.join(d, "child-started"), release))
        except TaskCancelledError:
            touch(os.path.join(d, "caught"))
            raise

    d = str(tmp_path)
    release = str(tmp_path / "release")
    ref = waits_on_child.remote(d, release)
    assert wait_file(os.path.join(d, "child-started"))
    pygen.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)  # its child is held until the end: only the cancel ends it
    assert os.path.exists(os.path.join(d, "caught"))
    touch(release)


# -- force ----------------------------------------------------------------------------------------


def test_force_cancel_kills_the_worker_and_is_not_retried(tmp_path):
    @pygen.remote(max_retries=3)
    def stuck(d):
        with open(os.path.join(d, "attempts"), "a") as f:
            f.write("x")
        touch(os.path.join(d, "started"), str(os.getpid()))
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # deaf to a normal cancel
        time.sleep(120)

    d = str(tmp_path)
    ref = stuck.remote(d)
    assert wait_file(os.path.join(d, "started"))
    pid = int(open(os.path.join(d, "started")).read())
    pygen.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError) as info:
        pygen.get(ref, timeout=60)  # only killing the worker can end it this soon
    assert not isinstance(info.value, WorkerCrashedError)
    assert wait_until(lambda: not alive(pid), 30)
    time.sleep(0.3)
    assert open(os.path.join(d, "attempts")).read() == "x"
    # the pool is whole again
    assert wait_until(lambda: len(child_pids()) >= 2)
    assert pid not in pygen.get([getpid.remote() for _ in range(10)], timeout=30)


def test_force_cancel_of_queued_task(tmp_path):
    holders, release = fill_cpus(tmp_path)
    pids = set(child_pids())
    marker = str(tmp_path / "ran")
    queued = mark.remote(marker)
    pygen.cancel(queued, force=True)
    with pytest.raises(TaskCancelledError):
        pygen.get(queued, timeout=20)
    assert pids <= set(child_pids())  # nobody was killed for a task that was not running
    touch(release)
    pygen.get(holders, timeout=30)
    time.sleep(0.2)
    assert not os.path.exists(marker)


# -- finished tasks and other refs --------------------------------------------------------------------

def test_cancelling_a_finished_task_is_a_no_op():
    ref = getpid.remote()
    pid = pygen.get(ref, timeout=30)
    pygen.cancel(ref)
    pygen.cancel(ref, force=True)
    assert pygen.get(ref, timeout=30) == pid
    assert alive(pid)


def test_cancelling_a_failed_task_keeps_its_error():
    @pygen.remote
    def bad():
        raise KeyError("original")

    ref = bad.remote()
    with pytest.raises(KeyError):
        pygen.get(ref, timeout=30)
    pygen.cancel(ref)
    with pytest.raises(KeyError, match="original"):
        pygen.get(ref, timeout=30)


def test_cancel_of_a_put_ref_is_a_no_op():
    ref = pygen.put(123)
    pygen.cancel(ref)
    assert pygen.get(ref) == 123


def test_cancel_rejects_non_refs():
    with pytest.raises(TypeError):
        pygen.cancel("not a ref")


# -- recursive ----------------------------------------------------------------------------------

@pygen.remote
def parent_of_sleeper(d):
    child_dir = os.path.join(d, "child")
    os.mkdir(child_dir)
    child = sleeper.remote(child_dir, float(open(os.path.join(d, "child-seconds")).read()))
    touch(os.path.join(d, "parent-started"))
    try:
        return pygen.get(child)
    except TaskCancelledError:
        touch(os.path.join(d, "parent-caught"))
        raise


def test_recursive_cancel_reaches_children(tmp_path):
    d = str(tmp_path)
    touch(os.path.join(d, "child-seconds"), "120")  # only a cancel ends it before the test
    ref = parent_of_sleeper.remote(d)
    assert wait_file(os.path.join(d, "child", "started"))
    assert wait_file(os.path.join(d, "parent-started"))
    pygen.cancel(ref)  # recursive=True is the default
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    assert wait_file(os.path.join(d, "child", "caught"), 30), "the child was not cancelled"
    assert not os.path.exists(os.path.join(d, "child", "finished"))


def test_cancel_from_inside_a_task(tmp_path):
    @pygen.remote
    def canceller(d):
        ref = sleeper.remote(d)
        while not os.path.exists(os.path.join(d, "started")):
            time.sleep(0.005)
        pygen.cancel(ref)
        try:
            pygen.get(ref, timeout=30)
        except TaskCancelledError:
            return "cancelled"
        return "not cancelled"

    d = str(tmp_path)
    assert pygen.get(canceller.remote(d), timeout=30) == "cancelled"
    assert os.path.exists(os.path.join(d, "caught"))


def test_non_recursive_cancel_leaves_children_running(tmp_path):
    d = str(tmp_path)
    touch(os.path.join(d, "child-seconds"), "1")
    ref = parent_of_sleeper.remote(d)
    assert wait_file(os.path.join(d, "child", "started"))
    assert wait_file(os.path.join(d, "parent-started"))
    pygen.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=30)
    assert wait_file(os.path.join(d, "child", "finished"), 30), "the child did not finish"
    assert not os.path.exists(os.path.join(d, "child", "caught"))




# -- tasks queued on a busy worker (pipelining of short tasks) ------------------------------

@pygen.remote
def short(mode, path=None):
    """Usually instant (so the node queues more of it on busy workers); can wait or mark."""
    if mode == "gate":
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
    elif mode == "mark":
        with open(path, "a") as f:
            f.write("x")
    return os.getpid()


@pygen.remote
def not_short(path):
    """Never known to be short: a worker running it is no queueing target."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return os.getpid()


def queue_behind_a_gate(tmp_path):
    """Both CPUs busy, one with a (so far) short function: returns (gate ref, other ref,
    release path).  Tasks of ``short`` submitted now are queued on the gate's worker."""
    for _ in range(10):
        pygen.get([short.remote("fast") for _ in range(4)], timeout=30)
    release = str(tmp_path / "release")
    other = not_short.remote(release)
    gate = short.remote("gate", release)
    time.sleep(0.1)
    return gate, other, release


def test_cancel_of_a_task_queued_on_a_busy_worker(tmp_path):
    gate, other, release = queue_behind_a_gate(tmp_path)
    marks = [str(tmp_path / f"mark-{i}") for i in range(3)]
    queued = [short.remote("mark", m) for m in marks]
    pygen.cancel(queued[1])
    touch(release)
    with pytest.raises(TaskCancelledError):
        pygen.get(queued[1], timeout=30)
    pids = pygen.get([gate, other, queued[0], queued[2]], timeout=30)
    assert all(alive(p) for p in pids)
    assert not os.path.exists(marks[1])
    assert open(marks[0]).read() == "x" and open(marks[2]).read() == "x"


def test_force_cancel_of_a_task_queued_on_a_busy_worker_kills_nothing(tmp_path):
    gate, other, release = queue_behind_a_gate(tmp_path)
    mark_path = str(tmp_path / "mark")
    queued = short.remote("mark", mark_path)
    after = short.remote("fast")
    pygen.cancel(queued, force=True)
    with pytest.raises(TaskCancelledError):
        pygen.get(queued, timeout=20)
    touch(release)
    gate_pid = pygen.get(gate, timeout=30)  # the task the worker was running finishes
    assert alive(gate_pid)
    pygen.get([other, after], timeout=30)
    assert not os.path.exists(mark_path)


def test_task_pipelined_behind_a_long_task_runs_when_a_cpu_frees(tmp_path):
    @pygen.remote
    def fn(mode, path=None):
        if mode == "wait":  # waits for the flag that only the task behind it creates
            deadline = time.monotonic() + 120
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.005)
            return os.path.exists(path)
        if mode == "create":
            open(path, "w").close()
        return mode

    @pygen.remote
    def other_work(release):  # not known to be short: its worker is no pipelining target
        while not os.path.exists(release):
            time.sleep(0.005)

    for _ in range(20):  # fn is "short" now
        pygen.get([fn.remote("fast") for _ in range(4)], timeout=30)
    flag, release = str(tmp_path / "flag"), str(tmp_path / "release")
    other = other_work.remote(release)  # holds the other CPU
    waiter = fn.remote("wait", flag)
    creator = fn.remote("create", flag)  # both CPUs busy: queued behind `waiter`
    touch(release)  # a CPU frees: the creator must run now, not after the waiter
    assert pygen.get(waiter, timeout=60) is True, "the creator never ran while a CPU was free"
    pygen.get([other, creator], timeout=30)


def test_cancel_of_a_task_queued_on_a_busy_worker_is_immediate(tmp_path):
    gate, other, release = queue_behind_a_gate(tmp_path)
    queued = short.remote("mark", str(tmp_path / "mark"))
    pygen.cancel(queued)
    try:
        with pytest.raises(TaskCancelledError):
            pygen.get(queued, timeout=20)
    finally:
        touch(release)
        pygen.get([gate, other], timeout=30)
