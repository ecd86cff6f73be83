"""Spilling: sealed objects nobody is reading move to a file when the arena is full.

One append-only file per node, opened ``O_TMPFILE`` (or created and unlinked at once),
so it has no name from the start: whatever happens to the driver, no spill file is left
behind.  An object is written as its metadata then its data, and read back into a
fresh arena block (``preadv`` straight into the block: one copy) when someone needs it.
The file is truncated to zero whenever it holds no live object; until then the space
of restored or freed objects is only reclaimed at shutdown.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional


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
        self.live -= 1
        self.live_bytes -= location[1] + location[2]
        if self.live == 0 and self.fd is not None:
            os.ftruncate(self.fd, 0)
            self.end = 0

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
