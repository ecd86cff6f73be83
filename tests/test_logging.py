"""pygen's notices go through ``logging.getLogger("pygen")``, as a library's should: shown on
stderr while the program configures no logging, routed wherever it says once it does, and
never printed past it.

The notice used here is the one pygen gives when it meets a bug of its own while handling
a worker's message (a message it does not know): the node logs it, with its traceback, and
keeps serving.
"""
from __future__ import annotations

import logging
import subprocess
import sys

from test_examples import ROOT, environment

UNKNOWN_MESSAGE = '''
import logging, sys
import pygen
if len(sys.argv) > 1:
    logging.basicConfig(filename=sys.argv[1], level=logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")

@pygen.remote
def f():
    return 7

pygen.init(num_cpus=1, object_store_memory=32 * 2**20)
assert pygen.get(f.remote()) == 7
node = pygen.state._node()
worker = next(iter(node.workers.values()))
with node.lock:
    node.handle(worker, ("not", "a", "message"))   # a bug's stand-in: logged, not raised
print(pygen.get(f.remote()))                       # and the node serves on
pygen.shutdown()
'''


def _run(*args):
    return subprocess.run([sys.executable, "-c", UNKNOWN_MESSAGE, *args], capture_output=True,
                          text=True, timeout=120, env=environment(""), cwd=ROOT)


def test_a_notice_is_on_stderr_when_logging_is_not_configured():
    out = _run()
    assert out.returncode == 0 and out.stdout.strip() == "7", out
    assert "pygen internal error unknown message tuple from worker pid" in out.stderr


def test_a_notice_goes_where_the_program_configured_logging(tmp_path):
    log = tmp_path / "app.log"
    out = _run(str(log))
    assert out.returncode == 0 and out.stdout.strip() == "7", out
    assert "internal error" not in out.stderr, out.stderr   # not printed past it
    text = log.read_text()
    assert text.startswith("pygen ERROR pygen internal error unknown message tuple"), text


def test_an_internal_error_is_logged_with_its_traceback(caplog):
    from pygen.core import node

    try:
        raise KeyError("a bug")
    except KeyError:
        node._internal_error("while handling a test message")
    records = [r for r in caplog.records if r.name == "pygen"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].getMessage() == "pygen internal error while handling a test message"
    assert records[0].exc_info and records[0].exc_info[0] is KeyError
