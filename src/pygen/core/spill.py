"""Spilling: sealed objects nobody is reading move to a file when the arena is full.

One append-only file per node, opened ``O_TMPFILE`` (or created and unlinked at once),
so it has no name from the start: whatever happens to the driver, no spill file is left
behind.  An object is written as its metadata then its data, and read back into a
fresh arena block (``preadv`` straight into the block: one copy) when someone needs it.
An object restored or freed gives its blocks back at once (a hole punched over its
record), so the file's disk use follows the bytes still spilled; a record at the end
also gives back its offsets, and an empty file is truncated to zero.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from .. import _store


class SpillFile:
    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory or tempfile.gettempdir()
        self.fd: Optional[int] = None
        self.end = 0
        self.live = 0          # objects in the file
        self.live_bytes = 0

    def _open(self) -> int:
        if self.fd is None:
            try:
                self.fd = os.open(self.directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except (AttributeError, OSError):
                fd, path = tempfile.mkstemp(prefix="pygen-spill-", dir=self.directory)
                os.unlink(path)
                os.set_inheritable(fd, False)
                self.fd = fd
        return self.fd

    def write(self, buf: Any) -> tuple:
        """Append the object in pinned buffer ``buf``; returns its location."""
        fd = self._open()
        meta, data = buf.metadata, buf.data
        offset = self.end
        _pwrite_all(fd, meta, offset)
        _pwrite_all(fd, data, offset + meta.nbytes)
        self.end = offset + meta.nbytes + data.nbytes
        self.live += 1
        self.live_bytes += meta.nbytes + data.nbytes
        return (offset, meta.nbytes, data.nbytes)

    def read_into(self, location: tuple, writer: Any) -> None:
        offset, meta_size, data_size = location
        assert self.fd is not None
        _pread_all(self.fd, writer.metadata, offset)
        _pread_all(self.fd, writer.data, offset + meta_size)

    def release(self, location: tuple) -> None:
        offset, meta_size, data_size = location
        self.live -= 1
        self.live_bytes -= meta_size + data_size
        if self.fd is None:
            return
        if self.live == 0:
            os.ftruncate(self.fd, 0)
            self.end = 0
            return
        try:
            _store.punch_hole(self.fd, offset, meta_size + data_size)
        except OSError:
            pass  # the blocks stay allocated until the file empties: space, not data, is lost
        if offset + meta_size + data_size == self.end:
            self.end = offset

    def allocated_bytes(self) -> int:
        """Disk space the file holds now (its blocks, holes excluded)."""
        return 0 if self.fd is None else os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _pwrite_all(fd: int, view: Any, offset: int) -> None:
    view = memoryview(view).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_all(fd: int, view: Any, offset: int) -> None:
    view = memoryview(view).cast("B")
    while view.nbytes:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise OSError("spill file is shorter than expected")
        view = view[n:]
        offset += n
