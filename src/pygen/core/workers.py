"""Worker processes as the node sees them: spawn, watch, measure, kill.

A worker is a fresh interpreter (``posix_spawn`` of ``sys.executable``; never a fork of
the driver, whose threads and locks a child must not inherit) in its own process group
(a Ctrl-C at the terminal reaches the driver only).  It gets exactly four descriptors:

    0 /dev/null   1, 2 pipes to the node (output forwarding)   3 its control socket (SOCK_FD)
    4 the object store segment (STORE_FD) (already unlinked: only descriptors keep it alive)
    5 its status page (STATUS_FD: which stage of its call it is in, see ``stages``); the
      worker maps it and closes the descriptor

and sets PR_SET_PDEATHSIG itself, so it dies with the thread that spawned it: the
node's I/O thread, which lives exactly as long as the node.  That is what leaves no
worker behind when the driver is SIGKILLed.  A pidfd tells the node the moment a
worker exits.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import signal
import sys
from typing import Any, Deque, Optional

from . import stages
from .transport import Connection, socket_pair

SOCK_FD = 3
STORE_FD = 4
STATUS_FD = 5

IDLE, BUSY, STARTING, EXITING, DEAD = "idle", "busy", "starting", "exiting", "dead"


class WorkerHandle:
    """The node's view of one worker process."""

    def __init__(self, wid: int, pid: int, conn: Connection, pidfd: int,
                 out_fds: "list[int]", default_memory_limit: Optional[int] = None) -> None:
        self.id = wid
        self.pid = pid
        self.conn = conn
        self.pidfd = pidfd
        self.out_fds = out_fds
        self.slot: Optional[int] = None     # its process slot in the store, from HELLO
        self.state = STARTING
        # tasks assigned to it, in order: the first runs, the others wait in its inbox
        # (pipelined: sent ahead so that a short task follows the previous one at once)
        self.tasks: Deque[Any] = collections.deque()
        self.blocked = False                # waiting in get/wait/next: its CPUs are lent out
        self.running_since = 0.0            # when its current task started (as far as we know)
        self.reclaiming = False             # a RECLAIM is out, its answer not yet in
        self.sent_functions: set = set()
        self.actor: Any = None              # the actor it hosts, for the actor's life
        self.default_memory_limit = default_memory_limit  # init(worker_memory_limit=...)
        self.oom: Optional[tuple] = None    # (limit, peak) when the memory monitor killed it
        self.peak_rss = 0
        self.exit_status: Optional[int] = None
        self.idle_since = 0.0
        self.fds_closed = False
        self.flushed_at = 0.0                # when the node last wrote to it (Outbox)
        self.status: Any = None             # its status page (stages): what it is doing

    def stage(self) -> str:
        """What its running call was doing, as a phrase (" while pickling item 3")."""
        return stages.describe(self.status)

    @property
    def task(self) -> Any:
        """The task it is running now, if any."""
        return self.tasks[0] if self.tasks else None

    @property
    def memory_limit(self) -> Optional[int]:
        """The private memory it may use now: its actor's, or its running task's limit."""
        if self.actor is not None:
            return self.actor.memory_limit
        task = self.task
        if task is None:
            return None
        return task.spec.memory or self.default_memory_limit

    def describe_exit(self) -> str:
        status = self.exit_status
        if status is None:
            return "exited"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"was killed by signal {name}"
        if os.WIFEXITED(status):
            return f"exited with code {os.WEXITSTATUS(status)}"
        return "exited"

    def killed_by(self, sig: int) -> bool:
        status = self.exit_status
        return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig

    def try_reap(self) -> bool:
        """Whether the process has exited (reaping it if it just did)."""
        if self.exit_status is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        self.exit_status = status
        return True

    def rss_anon(self) -> int:
        """Private resident memory (RssAnon): pages of the shared arena never count."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"RssAnon:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0


def spawn(wid: int, store_fd: int, log_to_driver: bool,
          default_memory_limit: Optional[int] = None) -> WorkerHandle:
    """Start worker ``wid``.  Must run on the node's I/O thread (see PR_SET_PDEATHSIG)."""
    parent, child = socket_pair()
    if log_to_driver:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        out_fds = [out_r, err_r]
    else:
        out_w = err_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        out_fds = []
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    env = dict(os.environ)
    env["PYGEN_WORKER_ID"] = str(wid)
    env["PYGEN_PARENT_PID"] = str(os.getpid())
    env["PYGEN_SYS_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
    env["PYGEN_LOG_TO_DRIVER"] = "1" if log_to_driver else "0"
    env["PYTHONUNBUFFERED"] = "1"
    # The dup2 actions run in order, so a source must not sit on a later target (the
    # driver's own store fd is often 3): move every source above the target range first.
    status_fd, status = stages.new_page()
    sources = [null, out_w, err_w, child.fileno(), store_fd, status_fd]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in sources]
    actions = [(os.POSIX_SPAWN_DUP2, src, target) for target, src in enumerate(high)]
    argv = [sys.executable, "-c", "from pygen.core.worker import main; main()"]
    try:
        pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setpgroup=0)
    finally:
        for fd in high:
            os.close(fd)
        child.close()
        os.close(null)
        os.close(status_fd)
        os.close(out_w)
        if err_w != out_w:
            os.close(err_w)
    pidfd = os.pidfd_open(pid)
    os.set_inheritable(pidfd, False)
    w = WorkerHandle(wid, pid, Connection(parent), pidfd, out_fds, default_memory_limit)
    w.status = status
    return w


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_pid(pid: int) -> "tuple[int, Optional[int]]":
    try:
        return os.waitpid(pid, 0)
    except ChildProcessError:
        return pid, None
