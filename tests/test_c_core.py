"""The C core's own unit tests (tests/c, under ctest), run from pytest so that the
project's single test command covers them: configure and build with CMake in a temporary
directory, run ctest, fail if any C test fails.

Set PYGEN_CTEST_SANITIZE=1 to build with AddressSanitizer + UBSan (and the debug
checks) instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(600)


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    return r


def test_c_core_ctest(tmp_path):
    cmake, ctest = shutil.which("cmake"), shutil.which("ctest")
    assert cmake and ctest, "cmake/ctest not found: install CMake (pip install cmake) to run the C tests"
    build = tmp_path / "cbuild"
    options = []
    if os.environ.get("PYGEN_CTEST_SANITIZE") == "1":
        options = ["-DPYGEN_SANITIZE=ON", "-DPYGEN_DEBUG=ON"]
    _run([cmake, "-S", str(ROOT), "-B", str(build), *options], timeout=300)
    _run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], timeout=600)
    r = _run([ctest, "--test-dir", str(build), "--output-on-failure", "--timeout", "300"],
             timeout=600)
    print(r.stdout)
    assert "100% tests passed" in r.stdout
