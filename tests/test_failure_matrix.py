"""The failure matrix: stage x failure -> the exact exception and a message naming the
task and the stage (as loky's tests do for its executor).

Stages of a call, in order:

    args-pickle   the caller pickles the arguments (in ``.remote()``)
    args-read     the worker unpickles them (``__setstate__``/reducers run there)
    body          the task's own code
    return-pickle the worker pickles the return value (or a yielded item)
    store         it writes the pickle into the object store (large values)
    report        it sends the result to the node
    caller-read   the caller unpickles the value in ``get``

Failures: exception (something raises), unpicklable (a value pickle cannot handle, or
cannot rebuild where it is read), crash (``os._exit(3)`` and SIGKILL), memory (over the
``memory=`` limit), cancel (``pygen.cancel`` while the call is in that stage).

Every cell runs with ``max_retries=0`` (a retry would hide the failure) and checks the
exception's class and that its message names the task and the stage.  The stage phrases:

    args-pickle   "could not pickle the arguments of task f"
    args-read     "while reading its arguments"
    body          an exception: "E in task f (pid=N): <message>" and the traceback of the
                  task's own code; a crash, memory kill or cancel: "while running"
    return-pickle "could not pickle the return value of task f" / "item i of generator
                  task g"; a crash, memory kill or cancel: "while pickling its return value"
                  / "item i"
    store         "could not store the return value of task f"; a crash: "while storing"
    report        "while reporting its return value"
    caller-read   "in task f while the caller read its return value"

Cells left out, and why (not silently):

    stage          failure      why not
    args-pickle    crash        it happens in the caller's own process: no worker involved
    args-pickle    memory       memory= limits the worker; the caller has no limit
    args-pickle    cancel       .remote() has not returned: there is no ref to cancel
    store          unpicklable  pickling is done before the store is written
    store          memory       arena pages never count against memory= (SPEC 7)
    store          crash/exit   no user code runs while storing (SIGKILL is covered, from
                                the store's own crash point)
    store          cancel       runtime code of microseconds: a cancel then is one during
                                pickling or reporting (the task ends cancelled); it cannot
                                be aimed at it deterministically
    report         exception,   reporting sends bytes already made; the only way it
                   unpicklable, fails is the worker dying (crash), and a cancel then ends
                   memory, cancel the task as cancelled like one while pickling
    caller-read    crash,       in the caller's own process (memory= limits workers); the
                   memory,      task has finished, so there is nothing left to cancel
                   cancel

Generators (streaming; the item rows) and actor methods (a sync actor) run the body,
return-pickle and crash rows, and some more.  A threaded or async actor runs several
calls at once: its death is described per call as "in flight", with no stage.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import types

import numpy as np
import pytest

import pygen
from pygen import _store
from pygen.exceptions import (ActorDiedError, ObjectStoreFullError, OutOfMemoryError,
                              TaskCancelledError, TaskError, WorkerCrashedError)

from conftest import MiB, assert_clean_after_shutdown, touch, wait_file

T = 30
LIMIT = 100 * MiB     # memory= of the memory cells; they allocate 3x that
STORE = 64 * MiB      # the store-full cells return a value larger than this

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def session():
    if pygen.is_initialized():
        pygen.shutdown()
    pygen.init(num_cpus=2, object_store_memory=STORE)
    yield
    pygen.shutdown()
    assert_clean_after_shutdown()


# == values that fail where they are pickled or read =============================================

def _raise_value_error(*args):
    raise ValueError("cannot rebuild me")


def _exit_now(*args):
    os._exit(3)


def _sigkill_me(*args):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(T)


def _hog(*args):
    block = np.ones(3 * LIMIT // 8)   # touched: private memory, over the limit
    time.sleep(T)                     # killed long before, or the test fails
    return block


def _wait_for_go(d):
    touch(os.path.join(d, "in-stage"))
    wait_file(os.path.join(d, "go"), T)
    return "read"


class RaisesOnPickle:
    def __reduce__(self):
        raise ValueError("refuses to be pickled")


class OnRead:
    """Pickles fine; unpickling it calls ``action`` (where it is read)."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        return (self.action, self.args)


class OnPickle:
    """Pickling it calls ``action`` (in the process that pickles it)."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        self.action(*self.args)
        return (str, ("pickled",))


def _driver_only(*args):
    return "read"


_driver_only.__qualname__ = _driver_only.__name__ = "driver_only_function"
if "PYGEN_WORKER_ID" not in os.environ:   # the driver: a worker importing this has none
    globals()["driver_only_function"] = _driver_only


class DriverOnly:
    """Pickled as a call of a function that exists only in the driver (by reference)."""

    def __reduce__(self):
        return (_driver_only, ())


def worker_only_value():
    """Inside a task: an instance of a class that exists only in this worker."""
    module = types.ModuleType("pygen_matrix_worker_only")
    cls = type("WorkerOnly", (), {"__module__": module.__name__})
    module.WorkerOnly = cls
    sys.modules[module.__name__] = module
    return cls()


class Unpicklable(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def arm_store_crash():
    """Inside a task: SIGKILL this worker the next time it writes an object into the
    store (half-way through reserving it)."""
    _store._debug_crash_at(_store.CRASH_POINTS["create_filled"], 1)


def die_when_reporting(how):
    """Inside a task: this worker dies as it sends its result."""
    client = pygen.context.current().client
    ex = client.on_control.__self__   # the worker's Executor
    ex.report = lambda call, msg: _exit_now() if how == "exit" else _sigkill_me()


# == the tasks ==================================================================================

@pygen.remote(max_retries=0)
def takes(x):
    return "ran"


@pygen.remote(max_retries=0)
def body(action, d=None):
    if action == "raise":
        raise ValueError("boom in the body")
    if action == "unpicklable":
        raise Unpicklable("a lock inside")
    if action == "exit":
        _exit_now()
    if action == "sigkill":
        _sigkill_me()
    if action == "memory":
        _hog()
    if action == "cancel":
        _wait_for_go(d)
        time.sleep(T)
    return "ran"


@pygen.remote(max_retries=0)
def returns(what, d=None):
    if what == "raise":
        return RaisesOnPickle()
    if what == "unpicklable":
        return threading.Lock()
    if what == "exit":
        return OnPickle(_exit_now)
    if what == "sigkill":
        return OnPickle(_sigkill_me)
    if what == "memory":
        return OnPickle(_hog)
    if what == "cancel":
        return OnPickle(_wait_for_go, d)
    if what == "store-full":
        return np.zeros(STORE + MiB, dtype=np.uint8)
    if what == "store-crash":
        arm_store_crash()
        return np.zeros(MiB, dtype=np.uint8)
    if what in ("report-exit", "report-sigkill"):
        die_when_reporting(what.split("-")[1])
        return "never reported"
    if what == "read-raise":
        return OnRead(_raise_value_error)
    if what == "read-unpicklable":
        return worker_only_value()
    raise AssertionError(what)


@pygen.remote(max_retries=0)
def items(what, d=None):
    """Yields 0 and 1, then fails at item 2 in the way ``what`` says.  (Each step takes
    a millisecond: a fast generator's items are batched, and a crash would take the
    batch with it -- an error at an earlier position, which SPEC 4.3 allows.)"""
    time.sleep(0.001)
    yield 0
    time.sleep(0.001)
    yield 1
    time.sleep(0.001)
    if what == "raise":
        raise ValueError("boom after two items")
    if what == "exit":
        _exit_now()
    if what == "sigkill":
        _sigkill_me()
    if what == "memory":
        _hog()
    if what == "cancel":
        _wait_for_go(d)
        time.sleep(T)
    if what == "pickle-raise":
        yield RaisesOnPickle()
    if what == "pickle-unpicklable":
        yield threading.Lock()
    if what == "pickle-exit":
        yield OnPickle(_exit_now)
    if what == "store-crash":
        arm_store_crash()
        yield np.zeros(MiB, dtype=np.uint8)
    if what == "read-raise":
        yield OnRead(_raise_value_error)
    yield 3


@pygen.remote(max_restarts=0, max_task_retries=0)
class Actor:
    def body(self, action, d=None):
        if action == "raise":
            raise ValueError("boom in the method")
        if action == "exit":
            _exit_now()
        if action == "sigkill":
            _sigkill_me()
        if action == "memory":
            _hog()
        if action == "cancel":
            _wait_for_go(d)
            time.sleep(T)
        return "ran"

    def returns(self, what):
        if what == "raise":
            return RaisesOnPickle()
        if what == "unpicklable":
            return threading.Lock()
        if what == "exit":
            return OnPickle(_exit_now)
        if what == "sigkill":
            return OnPickle(_sigkill_me)
        raise AssertionError(what)

    def stream(self, what):
        yield 0
        if what == "raise":
            raise ValueError("boom in the stream")
        if what == "pickle-raise":
            yield RaisesOnPickle()
        if what == "exit":
            _exit_now()
        yield 1


# == checking one cell ==========================================================================

EXITS = {"exit": "it exited with code 3", "sigkill": "it was killed by signal SIGKILL"}


def check(exc: BaseException, cls: type, *phrases: str) -> None:
    """``exc`` is exactly of class ``cls`` (for a task's error: ``task_error(cause)``, the
    TaskError that is also its cause's class) and its message holds ``phrases``."""
    assert type(exc) is cls, f"{type(exc).__mro__} is not {cls}: {exc}"
    text = str(exc)
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


def task_error(cause: type) -> type:
    """The class of what get raises for a TaskError caused by ``cause``."""
    return type(TaskError("f", "", cause("x")).as_instanceof_cause())


def raised_by(fn, *args, **kwargs) -> BaseException:
    with pytest.raises(BaseException) as info:
        fn(*args, **kwargs)
    return info.value


def get(ref):
    return pygen.get(ref, timeout=T)


def cancel_in_stage(ref, d) -> None:
    """Cancel ``ref`` once its call says it is in the stage (``in-stage``), then let the
    stage go on (``go``): the cancel found it there."""
    assert wait_file(os.path.join(d, "in-stage"), T)
    pygen.cancel(ref)
    touch(os.path.join(d, "go"))


def first_error_item(gen):
    """(values before it, the first item that raises) of a streaming generator."""
    values = []
    for ref in gen:
        try:
            values.append(pygen.get(ref, timeout=T))
        except Exception as exc:  # noqa: BLE001 - the error item
            return values, exc
    raise AssertionError(f"no error item after {values}")


# == tasks ======================================================================================

# -- args-pickle (in the caller) --

@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_args_pickle(failure):
    arg = RaisesOnPickle() if failure == "exception" else threading.Lock()
    check(raised_by(takes.remote, arg), TypeError,
          "could not pickle the arguments of task takes")


# -- args-read (in the worker) --

@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_args_read_error(failure):
    arg = OnRead(_raise_value_error) if failure == "exception" else DriverOnly()
    cause = ValueError if failure == "exception" else AttributeError  # "Can't get attribute"
    check(raised_by(get, takes.remote(arg)), task_error(cause),
          "in task takes (pid=", "while reading its arguments")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_args_read_crash(how):
    arg = OnRead(_exit_now if how == "exit" else _sigkill_me)
    check(raised_by(get, takes.remote(arg)), WorkerCrashedError,
          "running task takes died while reading its arguments", EXITS[how])


def test_args_read_memory():
    check(raised_by(get, takes.options(memory=LIMIT).remote(OnRead(_hog))), OutOfMemoryError,
          "task takes was killed for using too much memory while reading its arguments")


def test_args_read_cancel(tmp_path):
    ref = takes.remote(OnRead(_wait_for_go, str(tmp_path)))
    cancel_in_stage(ref, str(tmp_path))
    check(raised_by(get, ref), TaskCancelledError,
          "task takes was cancelled while reading its arguments")


# -- body --

def test_body_exception():
    exc = raised_by(get, body.remote("raise"))
    check(exc, task_error(ValueError), "ValueError in task body (pid=")
    assert str(exc).splitlines()[0].endswith("): boom in the body"), str(exc)
    assert ", in body\n" in str(exc), str(exc)   # the traceback of the task's own code


def test_body_unpicklable_exception():
    exc = raised_by(get, body.remote("unpicklable"))
    assert isinstance(exc, TaskError) and type(exc.cause).__name__ == "RemoteExceptionInfo"
    check(exc, type(exc), "Unpicklable in task body (pid=", "a lock inside", ", in body\n")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_body_crash(how):
    check(raised_by(get, body.remote(how)), WorkerCrashedError,
          "running task body died while running", EXITS[how])


def test_body_memory():
    check(raised_by(get, body.options(memory=LIMIT).remote("memory")), OutOfMemoryError,
          "task body was killed for using too much memory while running", "limit of")


def test_body_cancel(tmp_path):
    ref = body.remote("cancel", str(tmp_path))
    cancel_in_stage(ref, str(tmp_path))
    check(raised_by(get, ref), TaskCancelledError, "task body was cancelled while running")


# -- return-pickle --

@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_return_pickle_error(failure):
    what = "raise" if failure == "exception" else "unpicklable"
    check(raised_by(get, returns.remote(what)), task_error(TypeError),
          "in task returns (pid=", "could not pickle the return value of task returns")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_return_pickle_crash(how):
    check(raised_by(get, returns.remote(how)), WorkerCrashedError,
          "running task returns died while pickling its return value", EXITS[how])


def test_return_pickle_memory():
    check(raised_by(get, returns.options(memory=LIMIT).remote("memory")), OutOfMemoryError,
          "task returns was killed for using too much memory while pickling its return value")


def test_return_pickle_cancel(tmp_path):
    ref = returns.remote("cancel", str(tmp_path))
    cancel_in_stage(ref, str(tmp_path))
    check(raised_by(get, ref), TaskCancelledError,
          "task returns was cancelled while pickling its return value")


# -- store --

def test_store_full():
    exc = raised_by(get, returns.remote("store-full"))
    check(exc, task_error(ObjectStoreFullError), "in task returns (pid=",
          "could not store the return value of task returns")
    assert isinstance(exc, MemoryError)


def test_store_crash():
    check(raised_by(get, returns.remote("store-crash")), WorkerCrashedError,
          "running task returns died while storing its return value", EXITS["sigkill"])


# -- report --

@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_report_crash(how):
    check(raised_by(get, returns.remote(f"report-{how}")), WorkerCrashedError,
          "running task returns died while reporting its return value", EXITS[how])


# -- caller-read --

@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_caller_read(failure):
    what = "read-raise" if failure == "exception" else "read-unpicklable"
    cause = ValueError if failure == "exception" else ModuleNotFoundError
    check(raised_by(get, returns.remote(what)), task_error(cause),
          "in task returns while the caller read its return value")


# == generator items ============================================================================

def test_generator_body_exception():
    values, exc = first_error_item(items.remote("raise"))
    assert values == [0, 1]
    check(exc, task_error(ValueError), "ValueError in task items (pid=", "boom after two items")
    assert ", in items\n" in str(exc), str(exc)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_generator_body_crash(how):
    values, exc = first_error_item(items.remote(how))
    assert values == [0, 1]
    check(exc, WorkerCrashedError, "running task items died while running", EXITS[how])


def test_generator_body_memory():
    values, exc = first_error_item(items.options(memory=LIMIT).remote("memory"))
    assert values == [0, 1]
    check(exc, OutOfMemoryError, "task items was killed for using too much memory while running")


def test_generator_body_cancel(tmp_path):
    gen = items.remote("cancel", str(tmp_path))
    cancel_in_stage(gen, str(tmp_path))
    values, exc = first_error_item(gen)
    assert values == [0, 1]
    check(exc, TaskCancelledError, "task items was cancelled while running")


@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_generator_item_pickle_error(failure):
    what = "pickle-raise" if failure == "exception" else "pickle-unpicklable"
    values, exc = first_error_item(items.remote(what))
    assert values == [0, 1]
    check(exc, task_error(TypeError), "in task items (pid=",
          "could not pickle item 2 of generator task items")


def test_generator_item_pickle_crash():
    values, exc = first_error_item(items.remote("pickle-exit"))
    assert values == [0, 1]
    check(exc, WorkerCrashedError, "running task items died while pickling item 2",
          EXITS["exit"])


def test_generator_item_store_crash():
    values, exc = first_error_item(items.remote("store-crash"))
    assert values == [0, 1]
    check(exc, WorkerCrashedError, "running task items died while storing item 2",
          EXITS["sigkill"])


def test_generator_item_caller_read():
    values, exc = first_error_item(items.remote("read-raise"))
    assert values == [0, 1]
    check(exc, task_error(ValueError), "in task items while the caller read an item it yielded")


# == actor methods (a sync actor) ===============================================================

def test_actor_body_exception():
    a = Actor.remote()
    exc = raised_by(get, a.body.remote("raise"))
    check(exc, task_error(ValueError), "ValueError in task Actor.body (pid=",
          "boom in the method")
    assert ", in body\n" in str(exc), str(exc)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_actor_body_crash(how):
    a = Actor.remote()
    check(raised_by(get, a.body.remote(how)), ActorDiedError,
          "the call Actor.body was in flight (the actor died while running)",
          "the actor process (pid", EXITS[how].replace("it ", "", 1))


def test_actor_body_memory():
    a = Actor.options(memory=LIMIT).remote()
    check(raised_by(get, a.body.remote("memory")), ActorDiedError,
          "killed for using too much memory",
          "the call Actor.body was in flight (the actor died while running)")


def test_actor_body_cancel(tmp_path):
    a = Actor.remote()
    ref = a.body.remote("cancel", str(tmp_path))
    cancel_in_stage(ref, str(tmp_path))
    check(raised_by(get, ref), TaskCancelledError, "task Actor.body was cancelled while running")
    assert get(a.body.remote("ok")) == "ran"   # the actor lives on


@pytest.mark.parametrize("failure", ["exception", "unpicklable"])
def test_actor_return_pickle_error(failure):
    a = Actor.remote()
    what = "raise" if failure == "exception" else "unpicklable"
    check(raised_by(get, a.returns.remote(what)), task_error(TypeError),
          "in task Actor.returns (pid=", "could not pickle the return value of task Actor.returns")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_actor_return_pickle_crash(how):
    a = Actor.remote()
    check(raised_by(get, a.returns.remote(how)), ActorDiedError,
          "the call Actor.returns was in flight (the actor died while pickling its return "
          "value)", EXITS[how].replace("it ", "", 1))


def test_actor_generator_rows():
    a = Actor.remote()
    values, exc = first_error_item(a.stream.remote("raise"))
    assert values == [0]
    check(exc, task_error(ValueError), "ValueError in task Actor.stream (pid=")
    values, exc = first_error_item(a.stream.remote("pickle-raise"))
    assert values == [0]
    check(exc, task_error(TypeError), "could not pickle item 1 of generator task Actor.stream")
    values, exc = first_error_item(a.stream.remote("exit"))
    assert values == [0]
    check(exc, ActorDiedError,
          "the call Actor.stream was in flight (the actor died while running)")
