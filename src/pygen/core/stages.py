"""Where a worker is in the call it runs, for the error that says how it ended.

A worker that dies (exit, signal, the memory monitor) cannot say what it was doing, and
a cancel reaches it at any point; yet the error its caller gets should say whether it
died reading its arguments, in the task's own code, pickling or storing its result, or
reporting it.  So each worker writes its stage into a tiny shared page (a memfd the node
maps too, passed as STATUS_FD): one store into a memoryview per stage (~30 ns), nothing
sent, and the node reads it when the worker dies or a cancel comes.

    word 0       the stage (below)                                  (native uint32s)
    word 1       what is being pickled/stored/reported: 0 the return value, i + 1 item i

Only the calls of a worker's main thread write it (tasks and sync actors' calls): a
threaded or async actor runs several calls at once, and its death is described per
call as "in flight" instead.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Optional

IDLE, LOADING, ARGS, RUNNING, PICKLING, STORING, REPORTING = range(7)
SIZE = 8
_WORDS = struct.Struct("=II")


def new_page() -> "tuple[int, mmap.mmap]":
    """(fd, mapping) of a fresh page for one worker (the fd is for the spawn only)."""
    fd = os.memfd_create("pygen-status", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    return fd, mmap.mmap(fd, SIZE)


def attach(fd: int) -> Optional[memoryview]:
    """In the worker: the page as two words (``page[0] = stage``, ``page[1] = index``);
    the descriptor is closed (nothing the worker starts may inherit it)."""
    try:
        return memoryview(mmap.mmap(fd, SIZE)).cast("I")
    except (OSError, ValueError):
        return None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def describe(page: Optional[Any]) -> str:
    """The stage as a phrase for a message (" while reading its arguments"), or ""."""
    if page is None:
        return ""
    try:
        stage, index = _WORDS.unpack_from(page, 0)
    except (ValueError, IndexError):  # the page is closed
        return ""
    what = "its return value" if index == 0 else f"item {index - 1}"
    return {
        IDLE: " before it started",
        LOADING: " while loading its function",
        ARGS: " while reading its arguments",
        RUNNING: " while running",
        PICKLING: f" while pickling {what}",
        STORING: f" while storing {what} in the object store",
        REPORTING: f" while reporting {what}",
    }.get(stage, "")
