"""Shared fixtures: a pygen session per module, fresh sessions, and leak checks.

Every test that starts pygen ends with the same check: after ``shutdown`` no worker
process of this driver is alive and nothing of pygen is left in /dev/shm.
"""
from __future__ import annotations

import gc
import os
import sys
import time

import pytest

import pygen

MiB = 2**20
STORE = 256 * MiB


def attempt(directory: str) -> int:
    """Inside a task: record one attempt in ``directory``; returns its number (1, 2...)."""
    n = len([x for x in os.listdir(directory) if x.startswith("attempt-")]) + 1
    with open(os.path.join(directory, f"attempt-{n}"), "w"):
        pass
    return n


def child_pids() -> "list[int]":
    """Live (non-zombie) pygen worker processes among this test process's children.

    Other children (e.g. the multiprocessing fork server that tests/store keeps for the
    whole session) are not pygen's and are not counted.
    """
    out = []
    try:
        names = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        names = []
    for tid in names:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    alive = []
    for pid in out:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                is_worker = b"pygen.core.worker" in f.read()
            if state != "Z" and is_worker:
                alive.append(pid)
        except OSError:
            pass
    return alive


def shm_entries(pid: "int | None" = None) -> "list[str]":
    names = [n for n in os.listdir("/dev/shm") if n.startswith("pygen")]
    if pid is not None:
        names = [n for n in names if n.startswith(f"pygen-{pid}-")]
    return names


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Whether ``predicate`` holds within ``timeout`` (a liveness bound: generous, never a
    measure of speed, which lives in bench/)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_clean_after_shutdown() -> None:
    assert not pygen.is_initialized()
    assert wait_until(lambda: not child_pids()), f"workers left: {child_pids()}"
    assert shm_entries(os.getpid()) == [], shm_entries(os.getpid())


def store_empty(timeout: float = 30.0) -> bool:
    """Whether every object is gone (refs dropped a moment ago included)."""
    def empty() -> bool:
        gc.collect()
        stats = pygen.state.store_stats()
        return stats["objects"] == 0 and stats["tracked_objects"] == 0
    return wait_until(empty, timeout)


@pytest.fixture(scope="module")
def session():
    """One pygen (2 CPUs, 256 MiB store) for a whole test module."""
    if pygen.is_initialized():
        pygen.shutdown()
    pygen.init(num_cpus=2, object_store_memory=STORE)
    yield
    pygen.shutdown()
    assert_clean_after_shutdown()


@pytest.fixture
def fresh():
    """A factory for a pygen started with the test's own options; shut down afterwards."""
    if pygen.is_initialized():
        pygen.shutdown()

    def start(**kwargs):
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("object_store_memory", STORE)
        pygen.init(**kwargs)

    yield start
    pygen.shutdown()
    assert_clean_after_shutdown()


def run_python(code: str, timeout: float = 60, env: "dict | None" = None):
    """Run ``code`` in a fresh interpreter (with the tests' sys.path); returns CompletedProcess."""
    import subprocess

    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def touch(path: str, text: str = "") -> None:
    """Create ``path`` with ``text`` atomically: whoever sees it sees all of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_file(path: str, timeout: float = 20.0) -> bool:
    """Wait for ``path`` to exist (a signal between a test and its tasks)."""
    return wait_until(lambda: os.path.exists(path), timeout, 0.002)


# -- a Ray cluster on this machine (tests/test_backends.py, examples on both runtimes) ------

def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayCluster:
    """Ray's test-support cluster: a head with 2 CPUs and a second node with 1 CPU and the
    custom resource ``node2``, so that a test can prove where a task or an actor ran."""

    def __init__(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # the nodes' workers import the tests' modules (functions are pickled by name)
        here = os.path.dirname(os.path.abspath(__file__))
        paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        from ray.cluster_utils import Cluster

        store = 200 * MiB  # each node's own store: a guest's share of the machine
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "object_store_memory": store, "include_dashboard": False})
        self.node2 = self.cluster.add_node(num_cpus=1, resources={"node2": 1},
                                           object_store_memory=store)
        self.address = self.cluster.address
        self.node2_id = self.node2.node_id

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster for the whole session (skips when Ray is not installed)."""
    if not ray_available():
        pytest.skip("Ray is not installed: pip install '.[test]' brings it (the [ray] extra)")
    if pygen.is_initialized():
        pygen.shutdown()
    cluster = RayCluster()
    yield cluster
    if pygen.is_initialized():
        pygen.shutdown()
    cluster.shutdown()
