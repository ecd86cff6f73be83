"""The entry point of a worker process (see ``workers.spawn`` for what it inherits)."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the spawning thread of the node exits, whatever kills it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the closed control socket still ends the worker when idle
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main() -> None:
    from .workers import SOCK_FD, STATUS_FD, STORE_FD

    _die_with_parent(int(os.environ["PYGEN_PARENT_PID"]))
    # posix_spawn passes on every inheritable descriptor of the driver (its own parent's
    # pipes, say): keep only ours, so a reader waiting for EOF on such a pipe is not held up
    # by workers.  Nothing a task starts may inherit the control socket or the arena.
    os.closerange(STATUS_FD + 1, os.sysconf("SC_OPEN_MAX"))
    for fd in (SOCK_FD, STORE_FD, STATUS_FD):
        os.set_inheritable(fd, False)
    for path in reversed(json.loads(os.environ.get("PYGEN_SYS_PATH", "[]"))):
        if path not in sys.path:
            sys.path.insert(0, path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver

    from .. import _store, context
    from . import output, protocol, stages
    from .executor import Executor, install_cancel_signal
    from .local_runtime import LocalRuntime
    from .transport import Connection
    from .worker_client import WorkerClient

    if os.environ.get("PYGEN_LOG_TO_DRIVER", "1") == "1":
        output.install_worker_streams()
    worker_id = int(os.environ["PYGEN_WORKER_ID"])
    store = _store.Store.attach_fd(STORE_FD)
    conn = Connection(socket.socket(fileno=SOCK_FD))
    client = WorkerClient(conn, store, worker_id)
    client.status = stages.attach(STATUS_FD)
    context.set_current(LocalRuntime(client))
    executor = Executor(client)
    install_cancel_signal(executor)
    client.send(protocol.Hello(worker_id, os.getpid(), store.slot))
    try:
        executor.serve_forever()
    finally:
        # a child forked by a task that unwound to here (sys.exit, an exception) ends as
        # that exception says, without the worker's connection or store slot
        if not client.forked:
            _leave(client, store)


def _leave(client: Any, store: Any) -> None:
    """The worker's own end: what it queued goes out, its store slot is released."""
    client.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    store.close()
    # skip interpreter teardown: user modules' atexit hooks are not ours to run twice
    os._exit(0)
