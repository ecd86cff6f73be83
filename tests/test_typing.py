"""pygen is typed: its package says so (py.typed), the compiled store has a stub that names
what the module has, every public function and method is annotated, the typed example
passes ``mypy --strict``, the remote decorator keeps a function's parameters (mypy
rejects ``f.remote`` with the wrong arguments), and a class made remote is an
``ActorClass`` of it whose ``.remote()`` gives an ``ActorHandle`` of it."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

import pygen
import pygen._store
from test_examples import ROOT

sys.path.insert(0, os.path.join(ROOT, "docs"))
import gen_api  # noqa: E402

PACKAGE = os.path.dirname(pygen.__file__)
HAS_MYPY = importlib.util.find_spec("mypy") is not None


def test_the_installed_package_is_marked_typed():
    assert os.path.exists(os.path.join(PACKAGE, "py.typed"))
    assert os.path.exists(os.path.join(PACKAGE, "_store.pyi"))


def _stub_names():
    with open(os.path.join(PACKAGE, "_store.pyi")) as f:
        tree = ast.parse(f.read())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return top, members


def test_store_stub_names_what_the_module_has():
    """A name added to (or removed from) the Cython module must be in (out of) the stub."""
    top, members = _stub_names()
    module = {n for n, v in vars(pygen._store).items()
              if not n.startswith("__") and n != "os" and n != "_Region"
              and getattr(v, "__module__", "pygen._store") == "pygen._store"}
    assert module == top, (f"in the module, not in _store.pyi: {sorted(module - top)}; "
                           f"in _store.pyi, not in the module: {sorted(top - module)}")
    for cls in ("Store", "_Pinned"):
        real = {n for n in vars(getattr(pygen._store, cls)) if not n.startswith("__")}
        assert real == members[cls] - {n for n in members[cls] if n.startswith("__")}, cls


def test_every_public_function_and_method_is_annotated():
    missing = []
    for name, obj in gen_api.public_names():
        if isinstance(obj, property):
            obj = obj.fget
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        params = list(sig.parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        for p in params:
            if p.annotation is p.empty:
                missing.append(f"{name}({p.name})")
        if sig.return_annotation is sig.empty:
            missing.append(f"{name} -> ?")
    assert not missing, f"not annotated: {missing}"


def _mypy(path, cache):
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
                           "--no-error-summary", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.skipif(not HAS_MYPY, reason="mypy is not installed (it is in the [test] extra)")
@pytest.mark.timeout(320)
def test_typed_example_passes_mypy_strict(tmp_path):
    out = _mypy(os.path.join(ROOT, "examples", "typed_usage.py"), tmp_path / "cache")
    assert out.returncode == 0, out.stdout + out.stderr


WRONG = '''
from typing import Iterator
import pygen

@pygen.remote
def double(x: int) -> int:
    return 2 * x

@pygen.remote(max_retries=1)
def words(n: int) -> Iterator[str]:
    yield "a"

double.remote("not an int")                   # line 12: wrong argument type
words.remote()                                # line 13: missing argument
s: str = pygen.get(double.remote(1))          # line 14: get gives an int
n: int = pygen.get(next(words.remote(1)))     # line 15: the items are str
r: pygen.ObjectRef[int] = pygen.put("text")   # line 16: a ref to a str

class Plain:
    def incr(self) -> int:
        return 1

Actor = pygen.remote(Plain)
ok: pygen.ActorHandle[Plain] = pygen.remote(max_restarts=1)(Plain).options(name="p").remote()
fine: pygen.ActorHandle[Plain] = Actor.options(max_concurrency=2).remote()
h: pygen.ActorHandle[str] = Actor.remote()    # line 25: a handle to a Plain
pygen.kill(double)                            # line 26: not an actor handle
c: pygen.ActorClass[int] = pygen.remote(max_restarts=1)(Plain)   # line 27: of Plain
'''


@pytest.mark.skipif(not HAS_MYPY, reason="mypy is not installed (it is in the [test] extra)")
@pytest.mark.timeout(320)
def test_mypy_sees_the_parameters_and_results_of_remote_functions_and_actors(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text(WRONG.lstrip("\n"))
    out = _mypy(path, tmp_path / "cache")
    lines = sorted({int(line.split(":")[1]) for line in out.stdout.splitlines()
                    if ": error:" in line})
    assert lines == [12, 13, 14, 15, 16, 25, 26, 27], out.stdout
