"""The documentation is true to the code: every public name has a docstring, docs/api.md
is what docs/gen_api.py writes from them, and the guides name only what exists."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, DOCS)

import gen_api  # noqa: E402

import pygen  # noqa: E402


def test_every_public_name_has_a_docstring():
    """Names come from pygen.__all__ (and the modules and classes in it): a name added
    there later (actors) is checked too."""
    missing = [name for name, obj in gen_api.public_names() if not gen_api.doc(obj).strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_public_names_cover_all_of_pygen_all():
    names = {name for name, _ in gen_api.public_names()}
    assert {f"pygen.{n}" for n in pygen.__all__} <= names
    # the methods a user calls are in the reference
    for expected in ("pygen.ObjectRefGenerator.completed", "pygen.ObjectRefGenerator.close",
                     "pygen.remote_function.RemoteFunction.options",
                     "pygen.remote_function.RemoteFunction.remote",
                     "pygen.exceptions.TaskError", "pygen.state.store_stats"):
        assert expected in names, expected


def test_a_name_without_a_docstring_is_caught(monkeypatch):
    """The check above catches a new public name that has no docstring."""
    def undocumented():
        pass

    monkeypatch.setattr(pygen, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(pygen, "__all__", pygen.__all__ + ["undocumented"])
    missing = [name for name, obj in gen_api.public_names() if not gen_api.doc(obj).strip()]
    assert missing == ["pygen.undocumented"]


def test_api_reference_is_up_to_date():
    with open(os.path.join(DOCS, "api.md")) as f:
        written = f.read()
    assert written == gen_api.render(), (
        "docs/api.md is not what the docstrings say: run `python docs/gen_api.py > docs/api.md`")


def _links(path: str) -> list:
    with open(path) as f:
        text = f.read()
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)


@pytest.mark.parametrize("name", ["api.md", "porting-from-ray.md", "generators.md",
                                  "../README.md"])
def test_relative_links_resolve(name):
    path = os.path.normpath(os.path.join(DOCS, name))
    for link in _links(path):
        if "://" in link:
            continue
        target = os.path.normpath(os.path.join(os.path.dirname(path), link))
        assert os.path.exists(target), f"{name} links to {link}, which does not exist"


def test_porting_guide_names_exceptions_that_exist():
    """Every `pygen.exceptions.X` or `exceptions.X` the porting guide names exists."""
    with open(os.path.join(DOCS, "porting-from-ray.md")) as f:
        text = f.read()
    named = set(re.findall(r"exceptions\.([A-Z][A-Za-z]+)", text))
    assert named, "the guide names no exception"
    missing = [n for n in named if not hasattr(pygen.exceptions, n)]
    assert not missing, missing


def test_gen_api_runs_as_documented(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(DOCS, "gen_api.py")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("# pygen API reference")
