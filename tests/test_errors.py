"""Errors (SPEC §2, §6): TaskError, unpicklable errors and values, worker crashes, retries,
failed arguments.

Crash and retry tests count attempts with marker files in ``tmp_path``: one file per
attempt, so the driver can tell exactly how often a task ran.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

import pygen
from pygen.exceptions import PygenError, TaskError, WorkerCrashedError

from conftest import child_pids, run_python, wait_until

pytestmark = pytest.mark.usefixtures("session")


# -- helpers ------------------------------------------------------------------------------

def attempt(directory: str) -> int:
    """Record one attempt in ``directory``; returns its number (1, 2, ...)."""
    n = len(os.listdir(directory)) + 1
    open(os.path.join(directory, f"attempt-{n}-{os.getpid()}"), "w").close()
    return n


def attempts(directory) -> int:
    return len(os.listdir(directory))


def crash(how: str) -> None:
    if how == "exit":
        os._exit(1)
    elif how == "sigkill":
        os.kill(os.getpid(), 9)
        time.sleep(10)
    elif how == "segfault":
        import ctypes
        ctypes.string_at(0)
    raise AssertionError(how)


def pool_pids() -> set:
    return set(child_pids())


class MyError(Exception):
    pass


class OtherError(Exception):
    pass


class TwoArgError(Exception):
    """An exception whose constructor takes more than a message."""

    def __init__(self, code, detail):
        super().__init__(f"code={code} detail={detail}")
        self.code = code
        self.detail = detail


class ReducingTwoArgError(Exception):
    """Like TwoArgError, but pickles correctly (defines __reduce__)."""

    def __init__(self, code, detail):
        super().__init__(f"code={code} detail={detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self):
        return (ReducingTwoArgError, (self.code, self.detail))


class LockError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


@pygen.remote
def raise_value_error(msg):
    raise ValueError(msg)


@pygen.remote
def raise_error(cls, *args):
    raise cls(*args)


@pygen.remote
def identity(x):
    return x


@pygen.remote
def getpid():
    return os.getpid()


# -- TaskError ------------------------------------------------------------------------------

def test_task_error_has_traceback_cause_and_cause_class():
    with pytest.raises(TaskError) as info:
        pygen.get(raise_value_error.remote("bad value 42"), timeout=30)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, PygenError)
    assert isinstance(err.cause, ValueError)
    assert str(err.cause) == "bad value 42"
    text = str(err)
    assert "Traceback" in text
    assert "raise_value_error" in text          # the remote frame
    assert "bad value 42" in text
    assert "ValueError" in text


def test_remote_value_error_is_caught_by_except_value_error():
    try:
        pygen.get(raise_value_error.remote("x"), timeout=30)
    except ValueError as err:
        assert isinstance(err, TaskError)
    else:
        pytest.fail("no error")


def test_custom_exception_class():
    with pytest.raises(MyError) as info:
        pygen.get(raise_error.remote(MyError, "custom"), timeout=30)
    assert isinstance(info.value, TaskError)
    assert type(info.value.cause) is MyError
    assert "custom" in str(info.value)


def test_locally_defined_exception_class():
    class LocalError(KeyError):
        pass

    @pygen.remote
    def boom():
        raise LocalError("local")

    with pytest.raises(TaskError) as info:
        pygen.get(boom.remote(), timeout=30)
    assert isinstance(info.value, KeyError)
    assert type(info.value.cause).__name__ == "LocalError"


def test_error_is_the_same_on_every_get():
    ref = raise_value_error.remote("again")
    for _ in range(3):
        with pytest.raises(ValueError, match="again"):
            pygen.get(ref, timeout=30)


def test_get_of_a_list_raises_the_error_of_the_failed_ref():
    ok = identity.remote(1)
    bad = raise_value_error.remote("in a list")
    with pytest.raises(ValueError, match="in a list"):
        pygen.get([ok, bad], timeout=30)
    assert pygen.get(ok) == 1


def test_builtin_exception_with_attributes_reads_through():
    @pygen.remote
    def missing():
        open("/nonexistent/pygen/file")

    with pytest.raises(FileNotFoundError) as info:
        pygen.get(missing.remote(), timeout=30)
    assert info.value.errno == 2
    assert isinstance(info.value, TaskError)


@pygen.remote
def leave(how):
    if how == "sys.exit":
        import sys
        sys.exit(3)
    raise KeyboardInterrupt


@pygen.remote
def leave_after_yield(how):
    yield 1
    if how == "sys.exit":
        import sys
        sys.exit(3)
    raise KeyboardInterrupt


@pytest.mark.parametrize("how,cause", [("sys.exit", SystemExit),
                                       ("KeyboardInterrupt", KeyboardInterrupt)])
@pytest.mark.parametrize("kind", ["task", "stream item"])
def test_system_exit_and_keyboard_interrupt_reach_the_caller_as_an_exception(how, cause, kind):
    """SPEC §6: never an error that exits or interrupts the caller."""
    caught = None
    try:
        if kind == "task":
            pygen.get(leave.remote(how), timeout=30)
        else:
            gen = leave_after_yield.remote(how)
            assert pygen.get(next(gen), timeout=30) == 1
            pygen.get(next(gen), timeout=30)
    except Exception as err:  # what a caller's `except Exception` must catch
        caught = err
    except BaseException as err:  # noqa: B036 -- the bug: it would exit or interrupt pytest
        pytest.fail(f"the caller got a {type(err).__mro__} that is not an Exception")
    assert isinstance(caught, TaskError), repr(caught)
    assert not isinstance(caught, (SystemExit, KeyboardInterrupt))
    assert type(caught.cause) is cause
    assert str(caught).startswith(f"{cause.__name__} in task ")
    if how == "sys.exit":
        assert caught.cause.code == 3


def test_unpicklable_exception_arrives_as_task_error():
    with pytest.raises(TaskError) as info:
        pygen.get(raise_error.remote(LockError, "holds a lock"), timeout=30)
    text = str(info.value)
    assert "LockError" in text            # type name
    assert "holds a lock" in text         # message
    assert "Traceback" in text and "raise_error" in text


def test_exception_with_extra_constructor_args_that_pickles():
    with pytest.raises(ReducingTwoArgError) as info:
        pygen.get(raise_error.remote(ReducingTwoArgError, 7, "seven"), timeout=30)
    err = info.value
    assert isinstance(err, TaskError)
    assert err.cause.code == 7 and err.cause.detail == "seven"
    assert "code=7 detail=seven" in str(err)


def test_exception_with_extra_constructor_args():
    """SPEC §6: it pickles, but calling its class with its args cannot rebuild it: it
    keeps its class and attributes all the same."""
    with pytest.raises(TwoArgError) as info:
        pygen.get(raise_error.remote(TwoArgError, 7, "seven"), timeout=30)
    err = info.value
    assert isinstance(err, TaskError)
    assert type(err.cause) is TwoArgError
    assert (err.cause.code, err.cause.detail) == (7, "seven")
    assert (err.code, err.detail) == (7, "seven")  # read through the TaskError too
    assert err.cause.args == ("code=7 detail=seven",)
    text = str(err)
    assert text.startswith("TwoArgError in task raise_error")
    assert "code=7 detail=seven" in text and "raise_error" in text


class TwoArgKeyError(KeyError):
    def __init__(self, key, why):
        super().__init__(key)
        self.why = why


def test_builtin_subclass_with_extra_constructor_args_keeps_class_and_attributes():
    with pytest.raises(TwoArgKeyError) as info:
        pygen.get(raise_error.remote(TwoArgKeyError, "k", "gone"), timeout=30)
    assert isinstance(info.value, KeyError) and info.value.cause.why == "gone"
    assert info.value.cause.args == ("k",)


HARD_TO_CARRY = """
import pygen

class E(Exception):
    def __init__(self, a, b):
        super().__init__(f"a={a}")
        self.a = a
        self.b = b

@pygen.remote
def fail():
    raise E(1, [2, 3])

pygen.init(num_cpus=1, object_store_memory=64 * 2**20)
try:
    pygen.get(fail.remote(), timeout=60)
except E as e:
    print("CAUGHT", type(e.cause) is E, e.cause.a, e.cause.b, str(e).split(" (pid=")[0])
"""


def test_exception_defined_in_main_with_two_arg_init_is_caught_by_its_class():
    proc = run_python(HARD_TO_CARRY, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CAUGHT True 1 [2, 3] E in task fail", proc.stdout


def test_unpicklable_return_value_is_a_task_error():
    @pygen.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(TaskError) as info:
        pygen.get(returns_lock.remote(), timeout=30)
    err = info.value
    assert isinstance(err, TypeError)
    text = str(err)
    assert "returns_lock" in text
    assert "pickle" in text and "lock" in text
    # the worker survives and runs the next task
    assert pygen.get(identity.remote(5), timeout=30) == 5


def test_unpicklable_return_value_error_says_return_value():
    @pygen.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(TypeError) as info:
        pygen.get(returns_lock.remote(), timeout=30)
    assert "return" in str(info.value).splitlines()[0] or "return value" in str(info.value)


def test_unpicklable_argument_fails_at_remote_time():
    with pytest.raises(TypeError, match="pickle"):
        identity.remote(threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        identity.remote(x=threading.Lock())
    assert pygen.get(identity.remote(1), timeout=30) == 1


def test_remote_memory_error_is_a_task_error():
    @pygen.remote
    def raises_memory_error():
        raise MemoryError("pretend")

    with pytest.raises(MemoryError) as info:
        pygen.get(raises_memory_error.remote(), timeout=30)
    assert isinstance(info.value, TaskError)
    assert "pretend" in str(info.value)


def test_remote_object_store_full_error_is_a_task_error():
    from pygen.exceptions import ObjectStoreFullError

    @pygen.remote
    def raises_store_full():
        raise ObjectStoreFullError("pretend full", 10, 5)

    with pytest.raises(ObjectStoreFullError) as info:
        pygen.get(raises_store_full.remote(), timeout=30)
    assert isinstance(info.value, MemoryError)


def test_unpicklable_argument_error_names_task_and_argument():
    @pygen.remote
    def takes_three(a, b, c):
        return 1

    with pytest.raises(TypeError) as info:
        takes_three.remote(1, threading.Lock(), 3)
    text = str(info.value)
    assert "takes_three" in text and "argument" in text, text


def test_error_inside_nested_task_propagates_through_the_parent():
    @pygen.remote
    def parent():
        return pygen.get(raise_value_error.remote("deep"))

    with pytest.raises(ValueError, match="deep") as info:
        pygen.get(parent.remote(), timeout=30)
    assert isinstance(info.value, TaskError)


def test_failed_argument_fails_the_dependent_task(tmp_path):
    @pygen.remote
    def consumer(x, marker):
        open(marker, "w").close()
        return x

    marker = str(tmp_path / "ran")
    bad = raise_value_error.remote("upstream failure")
    out = consumer.remote(bad, marker)
    with pytest.raises(ValueError, match="upstream failure") as info:
        pygen.get(out, timeout=30)
    assert isinstance(info.value, TaskError)
    assert not os.path.exists(marker)


def test_failed_argument_that_fails_later(tmp_path):
    @pygen.remote
    def slow_fail():
        time.sleep(0.3)
        raise MyError("late")

    @pygen.remote
    def consumer(x, marker):
        open(marker, "w").close()
        return x

    marker = str(tmp_path / "ran")
    out = consumer.remote(slow_fail.remote(), marker)
    with pytest.raises(MyError, match="late"):
        pygen.get(out, timeout=30)
    assert not os.path.exists(marker)


def test_nested_failed_ref_stays_a_ref():
    @pygen.remote
    def inspect_list(refs):
        try:
            pygen.get(refs[0])
        except ValueError as exc:
            return f"caught {exc.cause}"
        return "no error"

    bad = raise_value_error.remote("nested")
    assert pygen.get(inspect_list.remote([bad]), timeout=30) == "caught nested"


# -- worker crashes -------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_worker_crash_raises_worker_crashed_error(how, tmp_path):
    """The death is seen (pidfd) and reported; how fast is bench/'s business."""
    @pygen.remote(max_retries=0)
    def dies(how, marker):
        open(marker, "w").close()  # the moment of death, give or take a syscall
        crash(how)

    marker = str(tmp_path / "dying")
    ref = dies.remote(how, marker)
    assert wait_until(lambda: os.path.exists(marker), 30, 0.001)
    with pytest.raises(WorkerCrashedError) as info:
        pygen.get(ref, timeout=30)
    assert not isinstance(info.value, TaskError)
    assert "dies" in str(info.value)


def test_crash_error_says_how_the_worker_died():
    @pygen.remote(max_retries=0)
    def dies(how):
        crash(how)

    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        pygen.get(dies.remote("sigkill"), timeout=30)
    with pytest.raises(WorkerCrashedError, match="SIGSEGV"):
        pygen.get(dies.remote("segfault"), timeout=30)
    with pytest.raises(WorkerCrashedError, match="code 1"):
        pygen.get(dies.remote("exit"), timeout=30)


def test_many_crashes_in_a_row_leave_a_working_pool():
    @pygen.remote(max_retries=0)
    def dies():
        os._exit(3)

    refs = [dies.remote() for _ in range(6)]
    for ref in refs:
        with pytest.raises(WorkerCrashedError):
            pygen.get(ref, timeout=20)
    assert pygen.get([identity.remote(i) for i in range(10)], timeout=30) == list(range(10))
    assert wait_until(lambda: len(child_pids()) == 2), child_pids()


def test_crash_fails_only_the_task_of_the_dead_worker():
    @pygen.remote(max_retries=0)
    def dies_later():
        time.sleep(0.2)
        os._exit(1)

    @pygen.remote
    def slow_ok():
        time.sleep(0.5)
        return "ok"

    good = slow_ok.remote()
    bad = dies_later.remote()
    with pytest.raises(WorkerCrashedError):
        pygen.get(bad, timeout=30)
    assert pygen.get(good, timeout=30) == "ok"


# -- retries --------------------------------------------------------------------------------

@pygen.remote
def crash_until(directory, succeed_on, how="exit"):
    n = attempt(directory)
    if n < succeed_on:
        crash(how)
    return n


def test_crash_retried_until_success(tmp_path):
    ref = crash_until.options(max_retries=2).remote(str(tmp_path), 3)
    assert pygen.get(ref, timeout=30) == 3
    assert attempts(tmp_path) == 3


def test_crash_retries_run_out(tmp_path):
    ref = crash_until.options(max_retries=1).remote(str(tmp_path), 3)
    with pytest.raises(WorkerCrashedError):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 2


def test_default_max_retries_is_three(tmp_path):
    ref = crash_until.remote(str(tmp_path), 100, "sigkill")
    with pytest.raises(WorkerCrashedError):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 4


def test_max_retries_zero_runs_once(tmp_path):
    ref = crash_until.options(max_retries=0).remote(str(tmp_path), 2)
    with pytest.raises(WorkerCrashedError):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 1


def test_retried_task_with_multiple_returns(tmp_path):
    @pygen.remote(num_returns=2, max_retries=2)
    def pair(directory):
        n = attempt(directory)
        if n < 2:
            os._exit(1)
        return n, n * 10

    assert pygen.get(pair.remote(str(tmp_path)), timeout=30) == [2, 20]


def test_max_retries_minus_one_retries_until_success(tmp_path):
    ref = crash_until.options(max_retries=-1).remote(str(tmp_path), 6)
    assert pygen.get(ref, timeout=60) == 6


def test_retry_gets_its_large_arguments_again(tmp_path):
    import numpy as np

    @pygen.remote(max_retries=2)
    def crash_once(arr, nested, directory):
        n = attempt(directory)
        if n < 2:
            os._exit(1)
        return int(arr.sum()), int(pygen.get(nested[0]).sum()), n

    by_value = np.ones(2**20)  # 8 MB: an argument object in the store
    by_ref = pygen.put(np.full(2**20, 2.0))
    out = crash_once.remote(by_value, [by_ref], str(tmp_path))
    assert pygen.get(out, timeout=60) == (2**20, 2 * 2**20, 2)


@pygen.remote
def raise_until(directory, succeed_on, cls):
    n = attempt(directory)
    if n < succeed_on:
        raise cls(f"attempt {n}")
    return n


def test_application_errors_are_not_retried_by_default(tmp_path):
    ref = raise_until.options(max_retries=5).remote(str(tmp_path), 3, MyError)
    with pytest.raises(MyError, match="attempt 1"):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 1


def test_retry_exceptions_true(tmp_path):
    ref = raise_until.options(retry_exceptions=True, max_retries=3).remote(
        str(tmp_path), 3, MyError)
    assert pygen.get(ref, timeout=30) == 3
    assert attempts(tmp_path) == 3


def test_retry_exceptions_true_respects_max_retries(tmp_path):
    ref = raise_until.options(retry_exceptions=True, max_retries=1).remote(
        str(tmp_path), 5, MyError)
    with pytest.raises(MyError, match="attempt 2"):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 2


def test_retry_exceptions_list_retries_listed_classes(tmp_path):
    ref = raise_until.options(retry_exceptions=[MyError], max_retries=3).remote(
        str(tmp_path), 3, MyError)
    assert pygen.get(ref, timeout=30) == 3
    assert attempts(tmp_path) == 3


def test_retry_exceptions_list_includes_subclasses(tmp_path):
    ref = raise_until.options(retry_exceptions=[LookupError], max_retries=3).remote(
        str(tmp_path), 2, KeyError)
    assert pygen.get(ref, timeout=30) == 2


def test_retry_exceptions_list_does_not_retry_other_classes(tmp_path):
    ref = raise_until.options(retry_exceptions=[MyError], max_retries=3).remote(
        str(tmp_path), 3, OtherError)
    with pytest.raises(OtherError, match="attempt 1"):
        pygen.get(ref, timeout=30)
    assert attempts(tmp_path) == 1


def test_retry_exceptions_with_locally_defined_class(tmp_path):
    class Flaky(Exception):
        pass

    @pygen.remote(retry_exceptions=[Flaky], max_retries=2)
    def flaky(directory):
        n = attempt(directory)
        if n < 3:
            raise Flaky(n)
        return "done"

    assert pygen.get(flaky.remote(str(tmp_path)), timeout=30) == "done"
    assert attempts(tmp_path) == 3


def test_crash_still_retried_with_retry_exceptions_list(tmp_path):
    ref = crash_until.options(retry_exceptions=[MyError], max_retries=2).remote(
        str(tmp_path), 2)
    assert pygen.get(ref, timeout=30) == 2


def test_tasks_queued_behind_a_crashing_task_run_elsewhere(tmp_path):
    from test_cancel import not_short, short, touch

    for _ in range(10):  # `short` is known to be short: tasks of it queue on busy workers
        pygen.get([short.remote("fast") for _ in range(4)], timeout=30)
    release = str(tmp_path / "release")
    other = not_short.remote(release)
    doomed = short.options(max_retries=0).remote("gate", release)

    def doomed_pid():
        for t in pygen.state.list_tasks():
            if t["task_id"] == doomed.task_id().hex() and t["state"] == "running":
                return t["worker_pid"]
        return None

    assert wait_until(lambda: doomed_pid() is not None)
    marks = [str(tmp_path / f"mark-{i}") for i in range(4)]
    queued = [short.remote("mark", m) for m in marks]  # behind `doomed`, on its worker
    os.kill(doomed_pid(), 9)  # its worker dies with tasks queued behind it
    with pytest.raises(WorkerCrashedError):
        pygen.get(doomed, timeout=30)
    touch(release)
    pygen.get(queued + [other], timeout=30)  # none of them failed
    for m in marks:
        assert open(m).read() == "x"  # and each ran exactly once


# -- tests with their own session (last: the module's session is shut down by them) --

def test_crashed_worker_is_replaced(fresh, tmp_path):
    fresh(num_cpus=2)  # its own pool: no extra workers lent out by earlier tests

    @pygen.remote(max_retries=0)
    def die_and_tell(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        crash("sigkill")

    assert wait_until(lambda: len(child_pids()) == 2), child_pids()
    before = pool_pids()
    path = str(tmp_path / "pid")
    with pytest.raises(WorkerCrashedError) as info:
        pygen.get(die_and_tell.remote(path), timeout=30)
    dead = int(open(path).read())
    assert dead in before
    assert f"pid {dead}" in str(info.value)
    # the pool has its size again, without the dead worker
    assert wait_until(lambda: len(child_pids()) == 2 and dead not in child_pids()), \
        (dead, child_pids())
    # and tasks run there
    pids = set(pygen.get([getpid.remote() for _ in range(20)], timeout=30))
    assert dead not in pids
    assert pids <= set(child_pids())




# -- remote tracebacks (SPEC §6): the user's file, line and source, none of pygen's frames ----

TRACEBACK_SCRIPT = '''
import asyncio, json, os, traceback
import pygen


def helper(x):
    return 1 / x


@pygen.remote
def task(x):
    y = x - 1
    return helper(y)


@pygen.remote
def gen_task(x):
    yield x
    helper(x - 1)


@pygen.remote
async def async_task(x):
    await asyncio.sleep(0)
    return helper(x - 1)


def remote_text(err):
    return str(err).split("\\n", 1)[1]  # after the headline


def local_text(fn, *args):
    try:
        fn(*args)
    except ZeroDivisionError as e:
        # a local traceback, without this script's own calling frame
        return "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next,
                                                  chain=False)).rstrip()


pygen.init(num_cpus=1, object_store_memory=64 * 2**20)
out = {}
try:
    pygen.get(task.remote(1), timeout=60)
except ZeroDivisionError as e:
    out["task"] = [remote_text(e), local_text(task._function, 1)]
g = gen_task.remote(1)
assert pygen.get(next(g), timeout=60) == 1
try:
    pygen.get(next(g), timeout=60)
except ZeroDivisionError as e:
    out["gen"] = [remote_text(e), local_text(list, gen_task._function(1))]
try:
    pygen.get(async_task.remote(1), timeout=60)
except ZeroDivisionError as e:
    out["async"] = [remote_text(e), None]
print(json.dumps(out))
'''


def test_remote_traceback_shows_the_users_file_line_and_source(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(TRACEBACK_SCRIPT)
    proc = run_python(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')",
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = __import__("json").loads(proc.stdout)
    pygen_dir = os.path.dirname(pygen.__file__)
    for kind, (remote, local) in out.items():
        assert "<dynamic-code>" not in remote, remote
        assert pygen_dir not in remote and "asyncio" not in remote, remote  # no runtime frame
        assert remote.startswith("Traceback (most recent call last):\n"
                                 f'  File "{script}", line '), remote
        assert "    return 1 / x\n" in remote, remote  # the source line, read from the file
        assert remote.rstrip().endswith("ZeroDivisionError: division by zero"), remote
    # exactly what a local traceback of the same call shows
    assert out["task"][0] == out["task"][1]
    assert '", line 13, in task\n    return helper(y)\n' in out["task"][0]
    assert out["gen"][0] == out["gen"][1]
    assert ", in async_task\n    return helper(x - 1)\n" in out["async"][0]
