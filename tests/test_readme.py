"""Every code block of the README marked runnable runs as a user would run it: a fresh
interpreter, the block as its program.  It must exit with 0 and leave nothing behind.

A block is runnable when the line before its opening ```python fence is
``<!-- runnable -->`` (an HTML comment: invisible on the rendered page).
"""
from __future__ import annotations

import os
import re
import sys

import pytest

from test_examples import ROOT, check_common, run_command

MARKER = "<!-- runnable -->"


def runnable_blocks(text: str) -> list:
    """(line number, code) of each ```python block right after the marker line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
            raise AssertionError(f"README line {i + 1}: {MARKER} is not followed by ```python")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        blocks.append((i + 3, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


def readme_blocks() -> list:
    with open(os.path.join(ROOT, "README.md")) as f:
        return runnable_blocks(f.read())


def test_the_readme_has_runnable_blocks():
    assert readme_blocks(), f"no block of README.md is marked {MARKER}"


def test_a_marker_finds_exactly_its_block():
    text = "\n".join(["intro", "```python", "not marked", "```", MARKER, "```python",
                      "print(1)", "print(2)", "```", "```python", "also not", "```"])
    assert runnable_blocks(text) == [(7, "print(1)\nprint(2)\n")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("line,code", readme_blocks(), ids=lambda v: f"line{v}" if
                         isinstance(v, int) else "")
def test_readme_block_runs(tmp_path, line, code):
    path = tmp_path / f"readme_line{line}.py"
    path.write_text(code)
    run = run_command(f"README.md line {line}", [sys.executable, str(path)], 120)
    check_common(run)
    # the README's first block says what it prints
    expected = re.findall(r"print\(.*\)\s+#\s*(\S+)\s*$", code, re.M)
    for value in expected:
        assert value in run.stdout.split(), (value, run.stdout)
