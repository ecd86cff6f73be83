"""The store when /dev/shm fills up under it (a private 64 MiB tmpfs, its own mount
namespace): a create that cannot reserve its memory fails with ObjectStoreFullError and
leaves nothing behind -- no object, no lying commit map, no half-taken memory; free
memory the store itself holds is given up to make room; writes never meet a hole (a
SIGBUS would kill the child: exit code -7)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import errno, os, sys
    from pygen import _store
    from pygen.exceptions import ObjectStoreFullError
    MiB = 2**20

    def oid(n):
        return b"FULL" + n.to_bytes(16, "big")

    def put(s, n, size):
        w = s.create_object(oid(n), size)
        w.data[:] = bytes([n % 251]) * size    # every byte: a hole here would be a SIGBUS
        del w
        s.seal(oid(n))

    def intact(s, n, size):
        b = s.get(oid(n))
        ok = b is not None and len(b) == size and b.data[0] == b.data[-1] == n % 251
        del b
        return ok

    def sound(s):
        s.check()
        assert _store._debug_commit_lies(s) == 0, "a committed chunk is a hole"

    s = _store.Store.create(48 * MiB, prefault=False, window_min=4 * MiB)
    put(s, 1, 1 * MiB)                          # kept throughout
    put(s, 2, 12 * MiB)
    s.delete(oid(2))                            # 12 MiB free, still reserved
    fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_WRONLY)
    try:                                        # someone takes the rest, to the last byte
        while os.write(fd, b"x" * MiB) == MiB:
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    for size in (30 * MiB, 20 * MiB):           # mapped with both CPUs, then fallocate
        try:
            put(s, 3, size)
            print("NOT REFUSED", size)
        except ObjectStoreFullError as e:
            assert "/dev/shm" in str(e), e
        assert s.get(oid(3)) is None            # nothing left of it
        sound(s)
    put(s, 4, 6 * MiB)                          # fits in the memory the store gave up
    assert intact(s, 1, 1 * MiB) and intact(s, 4, 6 * MiB)
    sound(s)
    os.close(fd)
    os.unlink("/dev/shm/filler")
    put(s, 5, 30 * MiB)                         # room again
    assert intact(s, 5, 30 * MiB)
    sound(s)
    s.unlink()
    s.close()
    print("DONE")
""")


def test_a_full_dev_shm_is_an_error_that_leaves_nothing(tmp_path):
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here (unshare -m)")
    script = tmp_path / "full.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "NOT REFUSED" not in proc.stdout and "DONE" in proc.stdout, proc.stdout
