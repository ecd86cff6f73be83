"""pygen's notices go through ``logging.getLogger("pygen")``, as a library's should: shown on
stderr while the program configures no logging, routed wherever it says once it does, and
never printed past it."""
from __future__ import annotations

import logging
import subprocess
import sys

from test_examples import ROOT, environment

RAISES_AFTER_ALL = '''
import logging, sys, time
import pygen
if len(sys.argv) > 1:
    logging.basicConfig(filename=sys.argv[1], level=logging.WARNING,
                        format="%(name)s %(levelname)s %(message)s")

@pygen.remote(num_returns=2)
def two_then_raise():
    yield 1
    yield 2
    raise ValueError("late error")

pygen.init(num_cpus=1, object_store_memory=32 * 2**20)
print(pygen.get(two_then_raise.remote()))
# ref 2 is readable once the generator stopped; its end (the error) is reported just after
while [t for t in pygen.state.list_tasks() if t["state"] != "failed"]:
    time.sleep(0.01)
pygen.shutdown()
'''


def _run(*args):
    return subprocess.run([sys.executable, "-c", RAISES_AFTER_ALL, *args], capture_output=True,
                          text=True, timeout=120, env=environment(""), cwd=ROOT)


def test_a_notice_is_on_stderr_when_logging_is_not_configured():
    out = _run()
    assert out.returncode == 0 and out.stdout.strip() == "[1, 2]", out
    assert "task two_then_raise raised after it had yielded all its num_returns=2" in out.stderr
    assert "late error" in out.stderr


def test_a_notice_goes_where_the_program_configured_logging(tmp_path):
    log = tmp_path / "app.log"
    out = _run(str(log))
    assert out.returncode == 0, out
    assert "raised after it had yielded" not in out.stderr, out.stderr   # not printed past it
    text = log.read_text()
    assert text.startswith("pygen WARNING task two_then_raise raised after it had yielded"), text


def test_an_internal_error_is_logged_with_its_traceback(caplog):
    from pygen.core import worker_events

    try:
        raise KeyError("a bug")
    except KeyError:
        worker_events._internal_error("while handling a test message")
    records = [r for r in caplog.records if r.name == "pygen"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].getMessage() == "pygen internal error while handling a test message"
    assert records[0].exc_info and records[0].exc_info[0] is KeyError
