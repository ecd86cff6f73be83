"""Reference counting and object lifetime (SPEC §3, §8): an object lives while any ref to
it (in any process, inside any stored value, in any pending task) or any zero-copy view
of it lives, and not a moment longer.  Introspection (``pygen.state``) shows it.
"""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import pygen
from pygen.exceptions import ObjectLostError, WorkerCrashedError

from conftest import MiB, child_pids, store_empty, wait_until

pytestmark = pytest.mark.usefixtures("session")

BIG = 4 * MiB  # well above the inline threshold: lives in the arena


def big(seed: int = 1, nbytes: int = BIG) -> np.ndarray:
    return np.full(nbytes // 8, seed, dtype=np.int64)


def object_ids() -> set:
    return {o["id"] for o in pygen.state.list_objects()}


def obj(ref) -> dict:
    for o in pygen.state.list_objects():
        if o["id"] == ref.hex():
            return o
    raise KeyError(ref.hex())


def gone(hex_id: str, timeout: float = 5.0) -> bool:
    def check():
        gc.collect()
        return hex_id not in object_ids()
    return wait_until(check, timeout)


def stays(hex_id: str, seconds: float = 0.3) -> bool:
    """The object is still there after its dropped refs had time to be counted."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gc.collect()
        if hex_id not in object_ids():
            return False
        time.sleep(0.02)
    return True


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


@pygen.remote
def make_big(seed, nbytes=BIG):
    return np.full(nbytes // 8, seed, dtype=np.int64)


@pygen.remote
def total(x):
    return int(np.asarray(x).sum())


@pygen.remote
def get_nested(refs):
    return [int(pygen.get(r).sum()) for r in refs]


@pygen.remote
def getpid():
    return os.getpid()


@pytest.fixture(autouse=True)
def empty_store_between_tests():
    assert store_empty(), pygen.state.list_objects()
    yield
    gc.collect()


# -- freeing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [big(), 12345, "small string"], ids=["arena", "int", "str"])
def test_put_object_freed_when_last_ref_dropped(value):
    ref = pygen.put(value)
    hex_id = ref.hex()
    assert hex_id in object_ids()
    if isinstance(value, np.ndarray):
        assert pygen.state.store_stats()["objects"] == 1
    copy = ref  # a second Python reference to the same ObjectRef
    del ref
    assert stays(hex_id)
    del copy
    assert gone(hex_id)
    assert store_empty()


def test_two_object_refs_to_one_object():
    ref = pygen.put(big())
    other = pickle_roundtrip(ref)  # a second ObjectRef instance with the same id
    assert other == ref and other is not ref
    hex_id = ref.hex()
    del ref
    assert stays(hex_id)
    assert int(pygen.get(other).sum()) == BIG // 8
    del other
    assert gone(hex_id)


def pickle_roundtrip(ref):
    import pickle
    return pickle.loads(pickle.dumps(ref))


def test_task_return_freed_when_ref_dropped():
    ref = make_big.remote(3)
    pygen.get(ref, timeout=30)  # the value is not kept by the get (no view survives)
    hex_id = ref.hex()
    assert obj(ref)["location"] == "store"
    del ref
    assert gone(hex_id)
    assert store_empty()


def test_result_of_a_task_whose_ref_was_dropped_before_it_finished():
    @pygen.remote
    def slow_big():
        time.sleep(0.3)
        return np.ones(BIG // 8)

    ref = slow_big.remote()
    del ref
    time.sleep(0.6)
    assert store_empty()


def test_freed_memory_is_reused():
    capacity = pygen.state.store_stats()["capacity"]
    per = 32 * MiB
    for i in range(3 * capacity // per):  # three times the arena, one object at a time
        ref = pygen.put(big(i, per))
        assert int(pygen.get(ref)[-1]) == i
        del ref
    assert store_empty()
    assert pygen.state.store_stats()["spilled_objects"] == 0


def test_get_of_a_freed_object_raises_object_lost():
    # An ObjectRef rebuilt from an id nobody holds any more names a freed object.
    ref = pygen.put(big())
    raw = ref.binary()
    del ref
    assert store_empty()
    stale = pygen.ObjectRef(raw)
    with pytest.raises(ObjectLostError):
        pygen.get(stale, timeout=30)


# -- zero-copy views -----------------------------------------------------------------------------

def test_zero_copy_view_pins_object_after_refs_are_gone():
    ref = pygen.put(big(7))
    arr = pygen.get(ref)
    assert not arr.flags.writeable
    assert obj(ref)["zero_copy_views"] >= 1
    used = pygen.state.store_stats()["used"]
    del ref
    time.sleep(0.2)
    gc.collect()
    stats = pygen.state.store_stats()
    assert stats["objects"] == 1, stats
    assert stats["used"] >= BIG
    # the pinned memory is not reused: fill the store around it, the view's data stays
    others = [pygen.put(big(100 + i)) for i in range(8)]
    assert int(arr[0]) == 7 and int(arr[-1]) == 7 and int(arr.sum()) == 7 * (BIG // 8)
    del others
    assert wait_until(lambda: pygen.state.store_stats()["objects"] == 1)
    del arr
    assert store_empty()
    assert pygen.state.store_stats()["used"] <= used - BIG


def test_list_objects_shows_object_pinned_only_by_a_view():
    import numpy as np
    import gc
    ref = pygen.put(np.ones(2**20))
    hex_id = ref.hex()
    arr = pygen.get(ref)
    del ref
    time.sleep(0.2)
    gc.collect()
    objs = {o["id"]: o for o in pygen.state.list_objects()}
    assert hex_id in objs, "pinned object not listed"
    assert objs[hex_id]["zero_copy_views"] == 1
    del arr


def test_view_of_a_task_result_pins_it():
    ref = make_big.remote(9)
    arr = pygen.get(ref, timeout=30)
    del ref
    time.sleep(0.2)
    assert pygen.state.store_stats()["objects"] == 1
    assert int(arr[123]) == 9
    derived = arr[10:20]  # a slice of the view keeps the pin too
    del arr
    time.sleep(0.2)
    gc.collect()
    assert pygen.state.store_stats()["objects"] == 1
    assert list(derived) == [9] * 10
    del derived
    assert store_empty()


def test_several_views_of_one_object():
    ref = pygen.put(big(4))
    a = pygen.get(ref)
    b = pygen.get(ref)
    del ref
    del a
    time.sleep(0.2)
    gc.collect()
    assert pygen.state.store_stats()["objects"] == 1
    assert int(b[0]) == 4
    del b
    assert store_empty()


def test_view_inside_a_container():
    ref = pygen.put({"a": big(5), "b": [big(6)]})
    value = pygen.get(ref)
    del ref
    keep = value["b"][0]
    del value
    time.sleep(0.2)
    gc.collect()
    assert pygen.state.store_stats()["objects"] == 1
    assert int(keep[0]) == 6
    del keep
    assert store_empty()


# -- refs inside stored values ----------------------------------------------------------------------

def test_ref_inside_put_value_keeps_object_alive():
    inner = pygen.put(big(11))
    inner_hex = inner.hex()
    outer = pygen.put({"refs": [inner]})
    del inner
    assert stays(inner_hex)
    got = pygen.get(outer)["refs"][0]
    assert int(pygen.get(got)[0]) == 11
    del got
    assert stays(inner_hex)
    del outer
    assert gone(inner_hex)
    assert store_empty()


def test_chain_of_nested_refs():
    ref = pygen.put(big(1))
    first = ref.hex()
    for _ in range(50):
        ref = pygen.put([ref])
    assert stays(first)
    value = ref
    for _ in range(50):
        value = pygen.get(value)[0]
    assert int(pygen.get(value)[0]) == 1
    del value, ref
    assert gone(first)
    assert store_empty()


def test_ref_inside_task_return_value_keeps_object_alive():
    @pygen.remote
    def returns_ref(seed):
        return [pygen.put(np.full(BIG // 8, seed))]

    outer = returns_ref.remote(12)
    inner = pygen.get(outer, timeout=30)[0]
    inner_hex = inner.hex()
    del inner
    assert stays(inner_hex)  # the worker dropped its ref long ago: the return value keeps it
    assert int(pygen.get(pygen.get(outer)[0])[0]) == 12
    del outer
    assert gone(inner_hex)
    assert store_empty()


def test_ref_to_task_result_returned_by_another_task():
    @pygen.remote
    def spawn_child(seed):
        return {"child": make_big.remote(seed)}

    outer = spawn_child.remote(13)
    child = pygen.get(outer, timeout=30)["child"]
    assert int(pygen.get(child, timeout=30)[0]) == 13
    child_hex = child.hex()
    del child
    assert stays(child_hex)
    del outer
    assert gone(child_hex)
    assert store_empty()


# -- refs held by tasks -------------------------------------------------------------------------

def test_refs_passed_to_pending_tasks_keep_objects_alive(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def gate(path):
        while not os.path.exists(path):
            time.sleep(0.005)
        return True

    g = gate.remote(release)
    top = pygen.put(big(21))
    nested = pygen.put(big(22))
    hexes = [top.hex(), nested.hex()]

    @pygen.remote
    def use(wait_for, a, refs):
        return int(a[0]), int(pygen.get(refs[0])[0])

    out = use.remote(g, top, [nested])  # waits for g: a pending task
    del top, nested
    for h in hexes:
        assert stays(h)
    open(release, "w").close()
    assert pygen.get(out, timeout=30) == (21, 22)
    del out, g
    for h in hexes:
        assert gone(h)
    assert store_empty()


def test_large_argument_by_value_is_freed_after_the_task():
    arr = big(3)
    refs = [total.remote(arr) for _ in range(5)]
    assert pygen.get(refs, timeout=30) == [3 * (BIG // 8)] * 5
    del refs
    assert store_empty()


def test_ref_pickled_into_a_worker_keeps_object_alive():
    @pygen.remote
    def stash(refs):
        import builtins
        builtins._pygen_test_stash = list(refs)  # the worker keeps the ref
        return os.getpid()

    @pygen.remote
    def read_stash():
        import builtins
        refs = getattr(builtins, "_pygen_test_stash", None)
        if refs is None:
            return None
        return int(pygen.get(refs[0])[0])

    @pygen.remote
    def drop_stash():
        import builtins
        had = hasattr(builtins, "_pygen_test_stash")
        builtins.__dict__.pop("_pygen_test_stash", None)
        return had

    ref = pygen.put(big(31))
    hex_id = ref.hex()
    worker_pid = pygen.get(stash.remote([ref]), timeout=30)
    del ref
    assert stays(hex_id, 0.5)
    assert wait_until(lambda: obj_by_hex(hex_id)["holders"] != [])
    holders = obj_by_hex(hex_id)["holders"]
    assert 0 not in holders  # the driver does not hold it; a worker does
    # both workers run the drop until the one that stashed it has dropped it
    deadline = time.monotonic() + 20
    while hex_id in object_ids() and time.monotonic() < deadline:
        pygen.get([drop_stash.remote() for _ in range(4)], timeout=30)
        gc.collect()
        time.sleep(0.05)
    assert gone(hex_id), f"still held by worker {worker_pid}"
    assert store_empty()


def obj_by_hex(hex_id: str) -> dict:
    for o in pygen.state.list_objects():
        if o["id"] == hex_id:
            return o
    raise KeyError(hex_id)


def test_ref_returned_through_a_task_keeps_object_alive():
    @pygen.remote
    def passthrough(refs):
        return refs  # the ref goes back nested in the return value

    ref = pygen.put(big(41))
    hex_id = ref.hex()
    back = passthrough.remote([ref])
    del ref
    assert stays(hex_id)
    inner = pygen.get(back, timeout=30)[0]
    assert inner.hex() == hex_id
    assert int(pygen.get(inner)[0]) == 41
    del inner, back
    assert gone(hex_id)


def test_objects_put_and_dropped_inside_a_worker_are_freed():
    @pygen.remote
    def churn(n):
        for i in range(n):
            r = pygen.put(np.full(BIG // 8, i))
            assert int(pygen.get(r)[0]) == i
            del r
        return n

    assert pygen.get(churn.remote(20), timeout=60) == 20
    assert store_empty()


def test_refs_held_by_a_crashed_worker_are_released():
    @pygen.remote(max_retries=0)
    def hold_and_die(refs):
        keep = list(refs)  # noqa: F841 -- held by this process when it dies
        r = pygen.put(np.ones(BIG // 8))  # a ref only this worker ever had
        del r
        os._exit(1)

    ref = pygen.put(big(51))
    hex_id = ref.hex()
    out = hold_and_die.remote([ref])
    del ref
    with pytest.raises(WorkerCrashedError):
        pygen.get(out, timeout=30)
    del out
    assert gone(hex_id)
    assert store_empty()
    assert wait_until(lambda: len(child_pids()) >= 2)


def test_pins_of_a_crashed_worker_are_released():
    @pygen.remote(max_retries=0)
    def view_and_die(arr):
        assert not arr.flags.writeable  # a zero-copy view: this worker pins the object
        os._exit(1)

    ref = pygen.put(big(61))
    out = view_and_die.remote(ref)
    with pytest.raises(WorkerCrashedError):
        pygen.get(out, timeout=30)
    del ref, out
    assert store_empty()  # the dead worker's pin does not keep it


def test_arguments_of_failed_crashed_and_cancelled_tasks_are_freed(tmp_path):
    from pygen.exceptions import TaskCancelledError

    @pygen.remote(max_retries=0)
    def fails(a, refs):
        raise ValueError("no")

    @pygen.remote(max_retries=0)
    def dies(a, refs):
        os._exit(1)

    @pygen.remote
    def gate(path):
        while not os.path.exists(path):
            time.sleep(0.005)

    release = str(tmp_path / "release")
    gates = [gate.remote(release) for _ in range(2)]
    queued = total.remote(big(3))  # queued behind the gates: cancelled before it runs
    waiting = pygen.remote(lambda g, a: 0).remote(gates[0], big(4))  # waits for its argument
    pygen.cancel(queued)
    pygen.cancel(waiting)
    open(release, "w").close()
    refs = [fails.remote(big(1), [pygen.put(big(5))]), dies.remote(big(2), [pygen.put(big(6))])]
    for r, exc in zip(refs + [queued, waiting],
                      [ValueError, WorkerCrashedError, TaskCancelledError, TaskCancelledError]):
        with pytest.raises(exc):
            pygen.get(r, timeout=30)
    pygen.get(gates, timeout=30)
    del refs, r, queued, waiting, gates
    assert store_empty(), pygen.state.list_objects()


def test_failed_task_error_objects_are_freed():
    @pygen.remote(num_returns=3)
    def fails(x):
        raise ValueError("x" * 200_000)  # a large error message

    refs = fails.remote(big())
    for r in refs:
        with pytest.raises(ValueError):
            pygen.get(r, timeout=30)
    del refs, r
    assert store_empty()


def test_refs_made_and_dropped_by_many_driver_threads():
    import threading

    errors = []
    shared = []

    def churn(seed):
        try:
            for i in range(150):
                r = pygen.put(big(seed, 256 * 1024) if i % 3 == 0 else (seed, i))
                t = total.remote(r) if i % 10 == 0 else None
                shared.append(r)  # another thread may drop this one
                if len(shared) > 8:
                    shared.pop(0)
                if t is not None:
                    pygen.get(t, timeout=30)
                del r, t
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread is still churning"
    assert not errors, errors[:3]
    shared.clear()
    assert store_empty()


# -- introspection ------------------------------------------------------------------------------

def test_store_stats_has_the_documented_fields():
    stats = pygen.state.store_stats()
    for key in ("capacity", "used", "objects", "spilled_objects", "spilled_bytes"):
        assert key in stats and isinstance(stats[key], int), key
    assert stats["capacity"] >= 256 * MiB * 0.9
    ref = pygen.put(big())
    stats2 = pygen.state.store_stats()
    assert stats2["objects"] == stats["objects"] + 1
    assert stats2["used"] >= stats["used"] + BIG
    del ref


def test_list_objects_describes_each_object():
    ref = pygen.put(big(2))
    small = pygen.put("tiny")
    objs = {o["id"]: o for o in pygen.state.list_objects()}
    assert set(objs) >= {ref.hex(), small.hex()}
    o = objs[ref.hex()]
    assert o["size"] >= BIG
    assert o["state"] == "ready"
    assert o["spilled"] is False
    assert 0 in o["holders"]  # the driver
    assert "zero_copy_views" in o and "internal_refs" in o
    arr = pygen.get(ref)
    assert obj(ref)["zero_copy_views"] == 1
    del arr
    assert wait_until(lambda: (gc.collect(), obj(ref)["zero_copy_views"])[1] == 0)


def test_list_objects_shows_pending_task_results_and_what_keeps_args(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def gate(path):
        while not os.path.exists(path):
            time.sleep(0.005)
        return 1

    g = gate.remote(release)
    arg = pygen.put(big())
    out = total.remote(arg)
    _ = pygen.remote(lambda a, b: 0).remote(g, arg)  # pending behind the gate
    assert obj(g)["state"] == "pending"
    assert obj(arg)["internal_refs"] >= 1
    open(release, "w").close()
    pygen.get([g, out, _], timeout=30)


def test_list_tasks_shows_running_and_finished_tasks(tmp_path):
    release = str(tmp_path / "release")

    @pygen.remote
    def named_gate(path):
        while not os.path.exists(path):
            time.sleep(0.005)
        return 1

    @pygen.remote
    def named_failure():
        raise RuntimeError("listed failure")

    ref = named_gate.remote(release)
    assert wait_until(lambda: any(t["name"] == "named_gate" and t["state"] == "running"
                                  for t in pygen.state.list_tasks()), 5), \
        pygen.state.list_tasks()[-5:]
    running = [t for t in pygen.state.list_tasks() if t["name"] == "named_gate"][-1]
    assert running["task_id"] == ref.task_id().hex() or ref.hex().startswith(running["task_id"])
    assert running["worker_pid"] in child_pids()
    open(release, "w").close()
    pygen.get(ref, timeout=30)
    bad = named_failure.remote()
    with pytest.raises(RuntimeError):
        pygen.get(bad, timeout=30)
    tasks = pygen.state.list_tasks()
    done = [t for t in tasks if t["name"] == "named_gate"][-1]
    assert done["state"] == "finished"
    failed = [t for t in tasks if t["name"] == "named_failure"][-1]
    assert "RuntimeError" in (failed["error"] or "") and "listed failure" in failed["error"]
    del ref, bad


def test_list_tasks_marks_a_failed_task_failed():
    @pygen.remote
    def task_that_fails():
        raise RuntimeError("listed failure")

    bad = task_that_fails.remote()
    with pytest.raises(RuntimeError):
        pygen.get(bad, timeout=30)
    failed = [t for t in pygen.state.list_tasks() if t["name"] == "task_that_fails"][-1]
    assert failed["state"] == "failed", failed


def test_list_actors_is_a_list():
    assert isinstance(pygen.state.list_actors(), list)


# -- the leak test ------------------------------------------------------------------------------

@pygen.remote
def one_mb(i):
    return np.full(MiB // 8, i, dtype=np.int64)


@pygen.remote
def worker_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return os.getpid(), int(line.split()[1]) * 1024


def run_batches(start: int, n: int, batch: int = 100) -> None:
    for lo in range(start, start + n, batch):
        refs = [one_mb.remote(i) for i in range(lo, lo + batch)]
        values = pygen.get(refs, timeout=60)
        assert int(values[0][0]) == lo and int(values[-1][-1]) == lo + batch - 1
        del refs, values


def test_leak_10000_tasks_returning_1mb_arrays():
    me = os.getpid()
    run_batches(0, 1000)  # warm-up: caches, arena pages, worker imports
    gc.collect()
    assert store_empty()
    driver_before = rss_anon(me)
    workers_before = {p: rss_anon(p) for p in child_pids()}
    run_batches(1000, 9000)
    gc.collect()
    assert store_empty(), pygen.state.store_stats()
    stats = pygen.state.store_stats()
    assert stats["used"] == 0 and stats["objects"] == 0, stats
    driver_growth = rss_anon(me) - driver_before
    assert driver_growth < 32 * MiB, f"driver RssAnon grew by {driver_growth / MiB:.1f} MiB"
    for pid, before in workers_before.items():
        try:
            growth = rss_anon(pid) - before
        except (OSError, RuntimeError):
            continue  # an extra worker that was reaped
        assert growth < 32 * MiB, f"worker {pid} RssAnon grew by {growth / MiB:.1f} MiB"
    assert len(pygen.state.list_tasks()) <= 1100  # history is bounded
