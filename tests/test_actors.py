"""Actors (SPEC §5): classes whose instances live in processes of their own.

One test per sentence of §5, parametrised over the three execution models where it
applies: sync (one call at a time), threaded (``max_concurrency > 1``) and async (a
class with an ``async def`` method).  Interleavings are made deterministic with files
and barriers; nothing here asserts a duration.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
import time

import pytest

import pygen
from conftest import touch, wait_file, wait_until
from pygen.exceptions import ActorDiedError, GetTimeoutError, TaskCancelledError

T = 60  # liveness bound of every get: generous, never a speed target

MODELS = ["sync", "threaded", "async"]


pytestmark = pytest.mark.usefixtures("session")


@pytest.fixture
def one_cpu():
    pygen.shutdown()
    pygen.init(num_cpus=1, object_store_memory=64 * 2**20)
    yield
    pygen.shutdown()
    pygen.init(num_cpus=2, object_store_memory=256 * 2**20)


# -- one class per execution model, with the same methods ---------------------------------

class _Counter:
    def __init__(self, start=0):
        self.value = start
        self.log = []

    def pid(self):
        return os.getpid()

    def get(self):
        return self.value

    def record(self, tag, i):
        self.log.append((tag, i))

    def history(self):
        return list(self.log)

    def wait_then_record(self, path, tag):
        wait_file(path, T)
        self.log.append(tag)
        return tag


@pygen.remote
class SyncCounter(_Counter):
    def incr(self, by=1):
        self.value += by
        return self.value


@pygen.remote(max_concurrency=4)
class ThreadedCounter(_Counter):
    def __init__(self, start=0):
        super().__init__(start)
        self.lock = threading.Lock()

    def incr(self, by=1):
        with self.lock:
            self.value += by
            return self.value


@pygen.remote
class AsyncCounter(_Counter):
    async def incr(self, by=1):
        self.value += by
        return self.value


COUNTERS = {"sync": SyncCounter, "threaded": ThreadedCounter, "async": AsyncCounter}


# -- state, processes, handles ---------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_an_actor_keeps_its_state_across_calls(model):
    c = COUNTERS[model].remote(10)
    assert pygen.get(c.incr.remote(), timeout=T) == 11
    assert pygen.get(c.incr.remote(5), timeout=T) == 16
    assert pygen.get(c.get.remote(), timeout=T) == 16


def test_each_actor_is_one_process_of_its_own():
    a, b = SyncCounter.remote(), SyncCounter.remote()
    pa = pygen.get([a.pid.remote() for _ in range(5)], timeout=T)
    pb = pygen.get(b.pid.remote(), timeout=T)
    assert len(set(pa)) == 1 and pa[0] != pb != os.getpid()
    workers = {w.pid for w in pygen.state._node().workers.values() if w.actor is None}
    assert pa[0] not in workers and pb not in workers


def test_calling_the_class_or_a_method_directly_says_what_to_write():
    with pytest.raises(TypeError, match=r"SyncCounter\.remote\(\.\.\.\)"):
        SyncCounter(1)
    c = SyncCounter.remote()
    with pytest.raises(TypeError, match=r"handle\.incr\.remote\(\.\.\.\)"):
        c.incr(1)
    with pytest.raises(AttributeError, match="SyncCounter has no method 'nope'"):
        c.nope


@pytest.mark.parametrize("opts,exc,words", [
    ({"max_concurency": 2}, ValueError, "'max_concurency'"),
    ({"max_concurrency": 0}, ValueError, "'max_concurrency'"),
    ({"max_concurrency": "4"}, TypeError, "'max_concurrency'"),
    ({"max_restarts": -2}, ValueError, "'max_restarts'"),
    ({"max_task_retries": 1.5}, TypeError, "'max_task_retries'"),
    ({"num_cpus": -1}, ValueError, "'num_cpus'"),
    ({"memory": 0}, ValueError, "'memory'"),
    ({"name": 3}, TypeError, "'name'"),
    ({"get_if_exists": 1}, TypeError, "'get_if_exists'"),
    ({"lifetime": "forever"}, ValueError, "'lifetime'"),
    ({"num_returns": 2}, ValueError, "'num_returns'"),   # a method option, not an actor's
])
def test_bad_actor_options_are_refused_naming_the_option(opts, exc, words):
    with pytest.raises(exc, match=words):
        SyncCounter.options(**opts)
    with pytest.raises(exc, match=words):
        pygen.remote(**opts)(type("Fresh", (), {"f": lambda self: 1}))


@pytest.mark.parametrize("opts,exc,words", [
    ({"num_returns": -1}, ValueError, "'num_returns'"),
    ({"num_returns": "lots"}, ValueError, "'num_returns'"),
    ({"generator_backpressure": 0}, ValueError, "'generator_backpressure'"),
    ({"max_retries": 2}, ValueError, "'max_retries'"),   # actors retry with max_task_retries
])
def test_bad_method_options_are_refused_naming_the_option(opts, exc, words):
    c = SyncCounter.remote()
    with pytest.raises(exc, match=words):
        c.incr.options(**opts)


def test_method_options_num_returns():
    @pygen.remote
    class Pair:
        def two(self):
            return 1, 2

        @pygen.method(num_returns=3)
        def three(self):
            return "a", "b", "c"

    p = Pair.remote()
    r1, r2 = p.two.options(num_returns=2).remote()
    assert pygen.get([r1, r2], timeout=T) == [1, 2]
    assert pygen.get(p.three.remote(), timeout=T) == ["a", "b", "c"]
    assert p.two.options(num_returns=0).remote() is None


@pygen.remote
def use_handle(counter, n):
    return pygen.get([counter.incr.remote() for _ in range(n)])[-1]


@pygen.remote
class Relay:
    def __init__(self, counter):
        self.counter = counter

    def bump(self, n):
        return pygen.get([self.counter.incr.remote() for _ in range(n)])[-1]


def test_handles_pickle_and_work_from_tasks_and_other_actors():
    c = SyncCounter.remote()
    assert pygen.get(use_handle.remote(c, 3), timeout=T) == 3
    relay = Relay.remote(c)
    assert pygen.get(relay.bump.remote(2), timeout=T) == 5
    again = pygen.get(pygen.put([c]), timeout=T)[0]   # a handle inside a stored value
    assert again == c and hash(again) == hash(c)
    assert pygen.get(again.incr.remote(), timeout=T) == 6
    clone = pickle.loads(pickle.dumps(c))
    assert pygen.get(clone.get.remote(), timeout=T) == 6
    assert "SyncCounter" in repr(c)


# -- names --------------------------------------------------------------------------------------

def test_get_actor_finds_a_named_actor():
    c = SyncCounter.options(name="named-counter").remote(5)
    same = pygen.get_actor("named-counter")
    assert same == c
    assert pygen.get(same.incr.remote(), timeout=T) == 6
    assert pygen.get(c.get.remote(), timeout=T) == 6


def test_get_actor_of_an_unknown_name_raises_valueerror_naming_it():
    with pytest.raises(ValueError, match="'no-such-actor'"):
        pygen.get_actor("no-such-actor")
    with pytest.raises(TypeError):
        pygen.get_actor(7)


def test_a_taken_name_is_refused_unless_get_if_exists():
    c = SyncCounter.options(name="taken").remote(1)
    with pytest.raises(ValueError, match="'taken'"):
        SyncCounter.options(name="taken").remote(2)
    same = SyncCounter.options(name="taken", get_if_exists=True).remote(3)
    assert same == c
    assert pygen.get(same.get.remote(), timeout=T) == 1   # the existing one, not a new one


def test_a_killed_actors_name_is_free_again():
    c = SyncCounter.options(name="reused").remote(1)
    pygen.kill(c)
    with pytest.raises(ValueError, match="'reused'"):
        pygen.get_actor("reused")
    d = SyncCounter.options(name="reused").remote(2)
    assert pygen.get(pygen.get_actor("reused").get.remote(), timeout=T) == 2
    del d


def test_get_actor_from_a_task():
    # the handle is kept: an actor whose every handle is gone ends (the unassigned handle
    # of the first version made the test fail when the node dropped it before get_actor)
    keep = SyncCounter.options(name="seen-from-task").remote(41)

    @pygen.remote
    def bump():
        return pygen.get(pygen.get_actor("seen-from-task").incr.remote())

    assert pygen.get_actor("seen-from-task") is not None
    assert pygen.get(bump.remote(), timeout=T) == 42
    del keep


# -- order ---------------------------------------------------------------------------------------

@pygen.remote
def record_many(counter, tag, n):
    return pygen.get([counter.record.remote(tag, i) for i in range(n)][-1])


def test_calls_from_one_caller_run_in_submission_order_with_two_callers():
    c = SyncCounter.remote()
    other = record_many.remote(c, "task", 1000)
    refs = [c.record.remote("driver", i) for i in range(1000)]
    pygen.get(refs + [other], timeout=T)
    log = pygen.get(c.history.remote(), timeout=T)
    for tag in ("driver", "task"):
        assert [i for t, i in log if t == tag] == list(range(1000))


@pygen.remote
def gated_value(path, value):
    wait_file(path, T)
    return value


@pygen.remote
def history_of(counter):
    return pygen.get(counter.history.remote())


def test_order_is_kept_when_an_earlier_calls_argument_is_not_ready(tmp_path):
    gate = str(tmp_path / "gate")
    c = SyncCounter.remote()
    first = c.record.remote("first", gated_value.remote(gate, 1))
    second = c.record.remote("second", 2)
    # other callers (tasks) are not held up by this caller's slow argument
    assert pygen.get(record_many.remote(c, "other", 1), timeout=T) is None
    assert pygen.get(history_of.remote(c), timeout=T) == [("other", 0)]
    touch(gate)
    pygen.get([first, second], timeout=T)
    assert pygen.get(c.history.remote(), timeout=T) == [("other", 0), ("first", 1),
                                                         ("second", 2)]


def test_a_failed_argument_fails_that_call_only():
    @pygen.remote
    def broken():
        raise KeyError("no")

    c = SyncCounter.remote()
    bad = c.incr.remote(broken.remote())
    with pytest.raises(KeyError):
        pygen.get(bad, timeout=T)
    assert pygen.get(c.incr.remote(), timeout=T) == 1


# -- concurrency -----------------------------------------------------------------------------------

@pygen.remote(max_concurrency=4)
class Meeting:
    def __init__(self, parties):
        self.barrier = threading.Barrier(parties, timeout=T)

    def meet(self, i):
        self.barrier.wait()   # returns only when `parties` calls are in here at once
        return i


def test_a_threaded_actor_runs_four_calls_at_once():
    m = Meeting.remote(4)
    assert sorted(pygen.get([m.meet.remote(i) for i in range(4)], timeout=T)) == [0, 1, 2, 3]


@pygen.remote
class AsyncMeeting:
    def __init__(self, parties):
        self.parties = parties
        self.arrived = 0
        self.all_here = None

    async def meet(self, i):
        if self.all_here is None:
            self.all_here = asyncio.Event()
        self.arrived += 1
        if self.arrived == self.parties:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), T)
        return i


def test_an_async_actor_runs_a_hundred_calls_at_once():
    m = AsyncMeeting.remote(100)
    assert pygen.get([m.meet.remote(i) for i in range(100)], timeout=T) == list(range(100))


def test_an_async_actors_max_concurrency_bounds_calls_in_progress():
    @pygen.remote(max_concurrency=3)
    class Bounded:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.01)
            self.now -= 1

        async def peak_seen(self):
            return self.peak

    b = Bounded.remote()
    pygen.get([b.work.remote() for _ in range(30)], timeout=T)
    assert pygen.get(b.peak_seen.remote(), timeout=T) == 3


def test_a_sync_actor_runs_one_call_at_a_time(tmp_path):
    gate = str(tmp_path / "gate")
    c = SyncCounter.remote()
    slow = c.wait_then_record.remote(gate, "slow")
    fast = c.incr.remote()
    with pytest.raises(GetTimeoutError):
        pygen.get(fast, timeout=0.5)   # behind the slow call
    touch(gate)
    assert pygen.get([slow, fast], timeout=T) == ["slow", 1]


@pygen.remote
class Producer:
    def stream(self, n, gate):
        for i in range(n):
            if i == n // 2:
                wait_file(gate, T)
            yield i


@pygen.remote
class AsyncConsumer:
    def __init__(self):
        self.seen = []

    async def consume(self, gen):
        total = 0
        async for ref in gen:
            value = await ref
            self.seen.append(value)
            total += value
        return total

    async def ping(self):
        return list(self.seen)


def test_an_async_actor_consumes_another_actors_generator_while_serving_calls(tmp_path):
    gate = str(tmp_path / "gate")
    producer, consumer = Producer.remote(), AsyncConsumer.remote()
    total = consumer.consume.remote(producer.stream.remote(10, gate))
    # the consumer is in the middle of its async for (the producer waits at item 5)
    assert wait_until(lambda: pygen.get(consumer.ping.remote(), timeout=T) == [0, 1, 2, 3, 4],
                      T)
    touch(gate)
    assert pygen.get(total, timeout=T) == sum(range(10))


@pygen.remote
class Stage:
    def __init__(self, k):
        self.k = k

    def run(self, upstream):
        for ref in upstream:
            yield pygen.get(ref) * 10 + self.k


@pygen.remote
class Source:
    def run(self, n):
        yield from range(n)


def test_a_chain_of_four_actors_each_streaming_what_the_previous_yields():
    gen = Source.remote().run.remote(5)
    stages = [Stage.remote(k) for k in range(1, 4)]
    for stage in stages:
        gen = stage.run.remote(gen)
    assert pygen.get(list(gen), timeout=T) == [i * 1000 + 123 for i in range(5)]


# -- nested work from actors ---------------------------------------------------------------------------

@pygen.remote
def square(x):
    return x * x


@pygen.remote(num_cpus=1)
class Boss:
    def fan_out(self, n):
        return sum(pygen.get([square.remote(i) for i in range(n)]))


def test_an_actor_holding_the_only_cpu_lends_it_while_it_waits(one_cpu):
    boss = Boss.remote()
    assert pygen.get(boss.fan_out.remote(5), timeout=T) == 30
    assert pygen.get(boss.fan_out.remote(3), timeout=T) == 5


def test_an_actor_needing_more_cpus_than_exist_is_refused(one_cpu):
    big = SyncCounter.options(num_cpus=2).remote()
    with pytest.raises(ActorDiedError, match="num_cpus=2"):
        pygen.get(big.incr.remote(), timeout=T)


# -- introspection and lifetime ----------------------------------------------------------------------

def test_list_actors_shows_each_actor_and_why_it_died():
    c = SyncCounter.options(name="listed").remote()
    pid = pygen.get(c.pid.remote(), timeout=T)
    mine = [a for a in pygen.state.list_actors() if a["name"] == "listed"]
    assert len(mine) == 1
    assert mine[0]["state"] == "alive" and mine[0]["pid"] == pid
    assert mine[0]["class_name"] == "SyncCounter" and mine[0]["death_cause"] is None
    pygen.kill(c)
    dead = [a for a in pygen.state.list_actors() if a["actor_id"] == mine[0]["actor_id"]]
    assert dead[0]["state"] == "dead"
    assert "killed by pygen.kill" in dead[0]["death_cause"]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_actor_whose_handles_are_all_gone_ends():
    import gc

    c = SyncCounter.remote()
    pid = pygen.get(c.pid.remote(), timeout=T)
    actor_id = c.actor_id.hex()
    del c
    gc.collect()
    dead = [a for a in pygen.state.list_actors() if a["actor_id"] == actor_id]
    assert dead[0]["state"] == "dead" and "garbage-collected" in dead[0]["death_cause"]
    assert wait_until(lambda: not _pid_alive(pid), T)


def test_an_actor_lives_while_a_task_holds_its_handle(tmp_path):
    import gc

    gate = str(tmp_path / "gate")

    @pygen.remote
    def later(counter, gate):
        wait_file(gate, T)
        return pygen.get(counter.incr.remote())

    c = SyncCounter.remote(1)
    ref = later.remote(c, gate)
    del c
    gc.collect()
    touch(gate)
    assert pygen.get(ref, timeout=T) == 2


def test_a_detached_actor_outlives_its_handles():
    import gc

    c = SyncCounter.options(name="detached", lifetime="detached").remote(7)
    pid = pygen.get(c.pid.remote(), timeout=T)
    actor_id = c.actor_id.hex()
    del c
    gc.collect()
    # list_actors first takes in the refs dropped so far: a non-detached actor would be
    # dead in this very answer
    assert [a["state"] for a in pygen.state.list_actors()
            if a["actor_id"] == actor_id] == ["alive"]
    assert _pid_alive(pid)
    again = pygen.get_actor("detached")
    assert pygen.get(again.get.remote(), timeout=T) == 7
    pygen.kill(again)


# -- failure ------------------------------------------------------------------------------------------------

@pygen.remote
class Fragile:
    def __init__(self, directory=None):
        self.calls = 0
        if directory is not None:
            with open(os.path.join(directory, f"init-{os.getpid()}"), "w"):
                pass

    def pid(self):
        return os.getpid()

    def bump(self):
        self.calls += 1
        return self.calls

    def exit(self, code):
        os._exit(code)

    def sleep(self, seconds):
        time.sleep(seconds)

    def stream(self, n, gate):
        for i in range(n):
            if i == 2:
                wait_file(gate, T)
            yield i


def test_kill_is_synchronous_and_every_later_call_raises():
    a = Fragile.remote()
    pid = pygen.get(a.pid.remote(), timeout=T)
    pygen.kill(a)
    assert not _pid_alive(pid)
    for _ in range(2):
        with pytest.raises(ActorDiedError, match="killed by pygen.kill"):
            pygen.get(a.bump.remote(), timeout=T)
    with pytest.raises(TypeError, match="actor handle"):
        pygen.kill("not a handle")


def test_kill_fails_calls_in_flight_and_queued():
    a = Fragile.remote()
    pygen.get(a.pid.remote(), timeout=T)
    running = a.sleep.remote(300)
    queued = a.bump.remote()
    pygen.kill(a)
    with pytest.raises(ActorDiedError, match="may or may not have run"):
        pygen.get(running, timeout=T)
    with pytest.raises(ActorDiedError, match="killed by pygen.kill"):
        pygen.get(queued, timeout=T)


def test_kill_before_the_actor_started():
    @pygen.remote
    def slow_arg(path):
        wait_file(path, T)
        return 1

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a = Fragile.remote(slow_arg.remote(os.path.join(d, "never")))
        pygen.kill(a)
        with pytest.raises(ActorDiedError, match="killed by pygen.kill"):
            pygen.get(a.bump.remote(), timeout=T)
        touch(os.path.join(d, "never"))


def test_an_actor_that_exits_says_its_exit_code():
    a = Fragile.remote()
    with pytest.raises(ActorDiedError, match=r"exited with code 3.*may or may not have run"):
        pygen.get(a.exit.remote(3), timeout=T)
    with pytest.raises(ActorDiedError, match="exited with code 3"):
        pygen.get(a.bump.remote(), timeout=T)


def test_an_actor_killed_by_a_signal_says_which():
    a = Fragile.remote()
    pid = pygen.get(a.pid.remote(), timeout=T)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="killed by signal SIGKILL"):
        pygen.get(a.bump.remote(), timeout=T)


def test_an_actor_whose_init_raises_is_dead_with_that_error():
    @pygen.remote
    class Broken:
        def __init__(self):
            raise ValueError("no config")

        def f(self):
            return 1

    b = Broken.remote()
    for _ in range(2):
        with pytest.raises(ActorDiedError, match=r"died in __init__: ValueError: no config"):
            pygen.get(b.f.remote(), timeout=T)


def test_max_restarts_runs_init_again_and_calls_succeed(tmp_path):
    a = Fragile.options(max_restarts=1).remote(str(tmp_path))
    assert pygen.get([a.bump.remote(), a.bump.remote()], timeout=T) == [1, 2]
    first = pygen.get(a.pid.remote(), timeout=T)
    with pytest.raises(ActorDiedError, match="may or may not have run"):
        pygen.get(a.exit.remote(1), timeout=T)   # not retried: max_task_retries=0
    assert pygen.get(a.bump.remote(), timeout=T) == 1   # a fresh instance: __init__ ran again
    second = pygen.get(a.pid.remote(), timeout=T)
    assert second != first
    assert sorted(os.listdir(tmp_path)) == sorted([f"init-{first}", f"init-{second}"])
    state = [s for s in pygen.state.list_actors() if s["pid"] == second][0]
    assert state["restarts"] == 1 and state["state"] == "alive"
    with pytest.raises(ActorDiedError, match=r"exited with code 1 \(after 1 restart\)"):
        pygen.get(a.exit.remote(1), timeout=T)   # no restart left
    with pytest.raises(ActorDiedError):
        pygen.get(a.bump.remote(), timeout=T)


@pygen.remote(max_restarts=1, max_task_retries=1)
class CrashOnce:
    def __init__(self, directory):
        self.directory = directory

    def work(self, value):
        marker = os.path.join(self.directory, "crashed")
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
            os._exit(1)
        return value * 2


def test_max_task_retries_runs_the_call_in_flight_again(tmp_path):
    a = CrashOnce.remote(str(tmp_path))
    assert pygen.get(a.work.remote(21), timeout=T) == 42


def test_kill_with_no_restart_false_restarts_an_actor_with_restarts_left(tmp_path):
    a = Fragile.options(max_restarts=1).remote(str(tmp_path))
    first = pygen.get(a.pid.remote(), timeout=T)
    pygen.kill(a, no_restart=False)
    assert not _pid_alive(first)
    assert pygen.get(a.bump.remote(), timeout=T) == 1
    assert pygen.get(a.pid.remote(), timeout=T) != first


def test_kill_with_no_restart_ends_an_actor_that_had_restarts_left():
    a = Fragile.options(max_restarts=5).remote()
    pygen.get(a.pid.remote(), timeout=T)
    pygen.kill(a)
    with pytest.raises(ActorDiedError, match="killed by pygen.kill"):
        pygen.get(a.bump.remote(), timeout=T)


def test_an_actor_over_its_memory_limit_dies_saying_so():
    @pygen.remote(memory=200 * 2**20)
    class Hog:
        def grow(self):
            blocks = []
            while True:
                blocks.append(bytearray(16 * 2**20))

    h = Hog.remote()
    with pytest.raises(ActorDiedError, match="too much memory"):
        pygen.get(h.grow.remote(), timeout=T)


@pytest.mark.parametrize("model", MODELS)
def test_killing_an_actor_ends_its_streaming_generator_with_one_error(model, tmp_path):
    gate = str(tmp_path / "gate")
    cls = {"sync": Fragile, "threaded": Fragile.options(max_concurrency=2),
           "async": AsyncStreamer}[model]
    a = cls.remote()
    gen = a.stream.remote(5, gate)
    assert pygen.get([next(gen), next(gen)], timeout=T) == [0, 1]
    pygen.kill(a)
    with pytest.raises(ActorDiedError, match="killed by pygen.kill"):
        pygen.get(next(gen), timeout=T)
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(ActorDiedError):
        pygen.get(gen.completed(), timeout=T)


@pygen.remote
class AsyncStreamer:
    async def stream(self, n, gate):
        for i in range(n):
            if i == 2:
                while not os.path.exists(gate):
                    await asyncio.sleep(0.01)
            yield i


# -- cancellation ----------------------------------------------------------------------------------------------

def test_cancelling_a_queued_call_drops_it(tmp_path):
    gate = str(tmp_path / "gate")
    c = SyncCounter.remote()
    busy = c.wait_then_record.remote(gate, "busy")
    dropped = c.record.remote("dropped", 0)
    after = c.record.remote("after", 1)
    pygen.cancel(dropped)
    touch(gate)
    with pytest.raises(TaskCancelledError):
        pygen.get(dropped, timeout=T)
    pygen.get([busy, after], timeout=T)
    assert pygen.get(c.history.remote(), timeout=T) == ["busy", ("after", 1)]


@pygen.remote
class Sleeper:
    def __init__(self):
        self.cleaned = 0

    def sleep(self, seconds, started):
        try:
            touch(started)
            time.sleep(seconds)
        finally:
            self.cleaned += 1

    def nap_loop(self, seconds, started):
        try:
            touch(started)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.01)
        finally:
            self.cleaned += 1

    def cleaned_up(self):
        return self.cleaned


@pygen.remote
class AsyncSleeper:
    def __init__(self):
        self.cleaned = 0

    async def sleep(self, seconds, started):
        try:
            touch(started)
            await asyncio.sleep(seconds)
        finally:
            self.cleaned += 1

    async def cleaned_up(self):
        return self.cleaned


@pytest.mark.parametrize("model", MODELS)
def test_cancelling_a_running_call_raises_taskcancellederror_in_it(model, tmp_path):
    """sync: the signal interrupts time.sleep; threaded: raised asynchronously in the
    call's thread at its next Python instruction; async: its asyncio task is cancelled.
    In each the call's finally runs and the actor lives on."""
    started = str(tmp_path / "started")
    cls = {"sync": Sleeper, "threaded": Sleeper.options(max_concurrency=2),
           "async": AsyncSleeper}[model]
    method = "nap_loop" if model == "threaded" else "sleep"
    a = cls.remote()
    ref = getattr(a, method).remote(300, started)
    assert wait_file(started, T)
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=T)
    assert pygen.get(a.cleaned_up.remote(), timeout=T) == 1


def test_force_cancel_of_an_actor_call_is_refused(tmp_path):
    started = str(tmp_path / "started")
    a = Sleeper.remote()
    ref = a.sleep.remote(300, started)
    assert wait_file(started, T)
    with pytest.raises(ValueError, match="pygen.kill"):
        pygen.cancel(ref, force=True)
    pygen.cancel(ref)
    with pytest.raises(TaskCancelledError):
        pygen.get(ref, timeout=T)


# -- output -----------------------------------------------------------------------------------------------

def test_actor_output_is_prefixed_with_its_class_name():
    from conftest import run_python

    proc = run_python("""
import os, pygen
pygen.init(num_cpus=1, object_store_memory=64 * 2**20)

@pygen.remote
class Talker:
    def say(self, text):
        print(text)
        return os.getpid()

t = Talker.remote()
pid = pygen.get(t.say.remote("hello from the actor"))
print("PID", pid)
pygen.shutdown()
""")
    assert proc.returncode == 0, proc.stderr
    pid = proc.stdout.split("PID ")[1].split()[0]
    assert f"(Talker pid={pid}) hello from the actor" in proc.stdout.splitlines()
