"""Workers killed while they are still starting (before the node has their Hello).

A worker is up when the node reads its Hello (it says which store slot it holds); before
that it is "starting".  The chaos suite SIGKILLs any pygen process it finds, starting
ones included; these tests do it deterministically.  A hook (a ``sitecustomize`` module
put on the workers' PYTHONPATH) holds chosen workers just before they send their Hello:
the store is attached (a slot is taken), the node has not heard of them.  The test then
kills or releases them.

What must hold: the dead worker's store slot is released, the pool is whole again
(``num_cpus`` workers for tasks), every CPU is free once the work is done, every task
runs and an actor gets a worker.
"""
from __future__ import annotations

import os
import signal

import pytest

import pygen

from conftest import touch, wait_file, wait_until

T = 30

HOOK = '''
import os
_dir = os.environ.get("PYGEN_TEST_HOLD_DIR")
_wid = os.environ.get("PYGEN_WORKER_ID")
if _dir and _wid and os.path.exists(os.path.join(_dir, "broken")):
    os._exit(3)   # an environment in which no worker can start
if _dir and _wid and os.path.exists(os.path.join(_dir, "hold-" + _wid)):
    import time
    from pygen.core import protocol, worker_client

    _send = worker_client.WorkerClient.send

    def send(self, msg, flush=True):
        if type(msg) is protocol.Hello:
            tmp = os.path.join(_dir, "tmp-" + _wid)
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, os.path.join(_dir, "held-" + _wid))
            deadline = time.monotonic() + 60
            while (not os.path.exists(os.path.join(_dir, "release-" + _wid))
                   and time.monotonic() < deadline):
                time.sleep(0.002)
        return _send(self, msg, flush)

    worker_client.WorkerClient.send = send
'''


@pytest.fixture
def hold(tmp_path, monkeypatch, fresh):
    """``hold(wid)``: worker ``wid`` (1, 2... in the order the node starts them) will stop
    just before its Hello; returns ``held(wid) -> pid`` and ``release(wid)``."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    d = tmp_path / "hold"
    d.mkdir()
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(hook_dir) + (os.pathsep + path if path else ""))
    monkeypatch.setenv("PYGEN_TEST_HOLD_DIR", str(d))

    class Hold:
        start = staticmethod(fresh)

        @staticmethod
        def __call__(wid: int) -> None:
            touch(str(d / f"hold-{wid}"))

        @staticmethod
        def held(wid: int) -> int:
            assert wait_file(str(d / f"held-{wid}"), T), f"worker {wid} was never held"
            return int((d / f"held-{wid}").read_text())

        @staticmethod
        def release(wid: int) -> None:
            touch(str(d / f"release-{wid}"))

        @staticmethod
        def break_environment() -> None:
            touch(str(d / "broken"))

    yield Hold()


@pygen.remote
def getpid():
    return os.getpid()


def node():
    return pygen.state._node()


def plain_workers() -> list:
    """(id, state) of the node's live workers for tasks."""
    with node().lock:
        return sorted((w.id, w.state) for w in node().pool.task_workers())


def slot_pids() -> set:
    return {pid for _, pid in node().store.slots()}


def pool_is_whole() -> bool:
    workers = plain_workers()
    return len(workers) == 2 and all(state == "idle" for _, state in workers)


def all_cpus_free() -> bool:
    return node().free_cpus == node().num_cpus


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def worker_pid(wid: int) -> int:
    with node().lock:
        return node().pool.workers[wid].pid


def test_a_worker_killed_before_its_hello_gives_back_its_slot_and_is_replaced(hold):
    hold(3)
    hold.start(num_cpus=2)
    assert wait_until(pool_is_whole, T)
    kill(worker_pid(1))                  # the pool replaces it with worker 3: held
    pid = hold.held(3)
    assert pid in slot_pids()            # it attached the store: it holds a slot
    assert (3, "starting") in plain_workers()
    kill(pid)
    assert wait_until(lambda: pid not in slot_pids(), T), node().store.slots()
    assert wait_until(pool_is_whole, T), plain_workers()
    assert len(set(pygen.get([getpid.remote() for _ in range(20)], timeout=T))) >= 1
    assert wait_until(all_cpus_free, T), node().free_cpus
    assert node().store.check()["slots_in_use"] == len(slot_pids())


def test_a_worker_that_dies_while_its_replacement_starts_is_replaced_too(hold):
    """Worker 1 dies: worker 3 starts (held).  Worker 2 dies meanwhile: one more must
    start, since worker 3 replaces only worker 1 (it was counted twice: as a live worker
    and as one starting, so the pool stayed one short)."""
    hold(3)
    hold.start(num_cpus=2)
    assert wait_until(pool_is_whole, T)
    kill(worker_pid(1))
    hold.held(3)
    kill(worker_pid(2))
    # (its death accounted for while worker 3 is still starting)
    assert wait_until(lambda: 2 not in [w for w, _ in plain_workers()], T), plain_workers()
    hold.release(3)
    assert wait_until(pool_is_whole, T), plain_workers()
    pids = set(pygen.get([getpid.remote() for _ in range(20)], timeout=T))
    assert pids <= {w for w in slot_pids()}
    assert wait_until(all_cpus_free, T), node().free_cpus


def test_an_actors_worker_killed_before_its_hello_is_replaced(hold, tmp_path):
    """Both task workers are busy, so the actor waits for a new worker (3): killed
    while starting, the actor gets the next one and serves calls."""
    @pygen.remote
    class Pinger:
        def pid(self):
            return os.getpid()

    @pygen.remote
    def busy(gate):
        wait_file(gate, T)
        return os.getpid()

    hold(3)
    hold.start(num_cpus=2)
    assert wait_until(pool_is_whole, T)
    gate = str(tmp_path / "gate")
    blockers = [busy.remote(gate) for _ in range(2)]
    assert wait_until(lambda: all(s == "busy" for _, s in plain_workers()), T)
    a = Pinger.remote()
    pid = hold.held(3)
    kill(pid)
    assert pygen.get(a.pid.remote(), timeout=T) not in (pid, None)
    assert wait_until(lambda: pid not in slot_pids(), T)
    touch(gate)
    pygen.get(blockers, timeout=T)
    assert wait_until(pool_is_whole, T), plain_workers()
    assert wait_until(all_cpus_free, T), node().free_cpus


def test_workers_sigkilled_while_starting_again_and_again_are_replaced(hold):
    """Three new workers in a row SIGKILLed before their Hello: a SIGKILL comes from
    outside (a user, a chaos test), not from an environment that cannot start a worker,
    so the queued task waits for the next worker instead of failing (the chaos suite
    saw 'WorkerCrashedError: 3 new worker processes died while starting')."""
    for wid in (2, 3, 4):
        hold(wid)
    hold.start(num_cpus=1)
    assert wait_until(lambda: plain_workers() == [(1, "idle")], T)
    kill(worker_pid(1))
    for wid in (2, 3, 4):
        pid = hold.held(wid)
        if wid == 2:
            ref = getpid.remote()           # queued: no worker is up
        kill(pid)
    assert pygen.get(ref, timeout=T) > 0
    assert wait_until(all_cpus_free, T), node().free_cpus


def test_an_environment_where_no_worker_can_start_fails_the_queued_tasks(hold):
    """Workers that exit by themselves while starting, three in a row: the queued
    task fails with WorkerCrashedError saying so, instead of workers spawned for ever."""
    hold.start(num_cpus=1)
    assert wait_until(lambda: plain_workers() == [(1, "idle")], T)
    hold.break_environment()
    kill(worker_pid(1))
    with pytest.raises(pygen.exceptions.WorkerCrashedError, match="died while starting"):
        pygen.get(getpid.remote(), timeout=T)
