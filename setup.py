"""Declares the one compiled extension, pygen._store; metadata lives in pyproject.toml."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

STORE_DIR = os.path.join("src", "_store")
C_SOURCES = ["status.c", "fault.c", "shm.c", "reserve.c", "wait.c", "copy.c", "arena.c", "table.c",
             "commit.c", "footprint.c", "store.c"]
DEBUG = os.environ.get("PYGEN_DEBUG") == "1"
SANITIZE = os.environ.get("PYGEN_SANITIZE") == "1"

compile_args = ["-std=c11", "-Wall", "-Wextra", "-O2" if not DEBUG else "-O0", "-g"]
link_args = []
if DEBUG:
    compile_args.append("-DPYGEN_DEBUG=1")
if SANITIZE:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]

store = Extension(
    "pygen._store",
    sources=[os.path.join(STORE_DIR, "_store.pyx")] + [os.path.join(STORE_DIR, f) for f in C_SOURCES],
    include_dirs=[STORE_DIR],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    libraries=["pthread"],
    define_macros=[("_GNU_SOURCE", "1")],
)

setup(ext_modules=cythonize([store], language_level=3, include_path=[STORE_DIR],
                            compiler_directives={"binding": False}))
