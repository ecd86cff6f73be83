"""The ``pygen`` command: --version, info, and bench (its JSON, Markdown, chart, progress,
--compare), plus the benchmark plan's own rules (one definition per workload, the same
size on pygen's and Ray's side, failures reported, never dropped).

``pygen bench --quick`` runs once here (Ray left out: it would double the run, and its side is
the same code as pygen's); its figures are not asserted, only that each is there.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import pygen
from pygen.bench import report, runner, workloads
from pygen.bench.runner import Measurement, Progress, run_plan
from pygen.bench.workloads import PYGEN, RAY, Side, Size, Trial, Workload
from test_examples import ROOT, check_common, environment, run_command

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACTOR_METRICS = ["actor_serial", "actor_bulk", "async_actor_bulk", "actor_stream_items",
                 "async_actor_stream_items"]
FOOTPRINT_METRICS = ["first_put", "first_put_settled", "repeated_put", "held_idle", "held_full",
                     "held_freed", "shutdown_full"]


def pygen_command(*args: str) -> list:
    """``pygen ARGS`` through the console script installed beside this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "pygen")
    assert os.path.exists(script), f"the pygen console script is not installed at {script}"
    return [script, *args]


def test_version_from_the_console_script_and_python_m():
    for cmd in (pygen_command("--version"), [sys.executable, "-m", "pygen", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env=environment(""), cwd=ROOT)
        assert out.returncode == 0, out
        assert out.stdout.strip() == f"pygen {pygen.__version__}", out


def test_info_names_the_machine_and_the_optional_libraries():
    out = subprocess.run(pygen_command("info"), capture_output=True, text=True, timeout=60,
                         env=environment(""), cwd=ROOT)
    assert out.returncode == 0, out
    assert out.stdout.startswith(f"pygen {pygen.__version__}"), out.stdout
    assert f"{os.cpu_count()} CPUs" in out.stdout
    for name in ("/dev/shm", "load average", "ray", "joblib", "matplotlib"):
        assert name in out.stdout, out.stdout


# == pygen bench --quick, run once ===========================================================
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = run_command("pygen bench --quick", pygen_command(
        "bench", "--quick", "--no-ray", "--out", str(out)), 240)
    check_common(run)   # exit 0, nothing left behind (no segment, no worker)
    files = {p.rsplit(".", 1)[-1]: os.path.join(out, p) for p in os.listdir(out)}
    with open(files["json"]) as f:
        data = json.load(f)
    return run, data, files


@pytest.mark.timeout(300)
def test_quick_json_has_every_metric(quick_run):
    run, data, files = quick_run
    assert data["schema"] == report.SCHEMA and data["quick"] is True
    keys = [m["key"] for m in data["metrics"]]
    assert keys == [w.key for w in workloads.WORKLOADS]   # every metric, in their order
    for metric, w in zip(data["metrics"], workloads.WORKLOADS):
        pygen_result = metric["results"].get(PYGEN)
        assert pygen_result and pygen_result["value"] > 0, metric
        assert pygen_result["rounds"] == w.quick.rounds
        for side in w.sides:   # each side measured, or skipped with the reason
            col = side.column
            assert col in metric["results"] or col in metric["skipped"], (metric["key"], col)
            if col in metric["results"] and col != PYGEN:
                assert metric["ratios"][col] > 0, metric
        assert metric["errors"] == {}, metric
    assert data["metrics"][keys.index("tasks_serial")]["skipped"][RAY].startswith("BENCH_NO_RAY")
    by_key = {m["key"]: m for m in data["metrics"]}
    # the actors' (issue 8) and the footprint's (issue 9) metrics, by name: a workload that
    # goes away must go away here too
    for key in ACTOR_METRICS + FOOTPRINT_METRICS:
        assert by_key[key]["results"][PYGEN]["value"] > 0, key
    for key in ("tasks_serial", "actor_serial"):   # beside the round trips they are read with
        assert set(by_key[key]["ratios"]) >= {workloads.PIPE, workloads.SOCKET}, key
    assert set(by_key["first_put"]["ratios"]) >= {workloads.NUMPY_COPY, workloads.FRESH_SHM_1,
                                                  workloads.FRESH_SHM_2}
    assert workloads.NUMPY_COPY in by_key["repeated_put"]["ratios"]
    idle = by_key["held_idle"]["results"][PYGEN]
    assert idle["info"]["tables_MiB"] > 0 and "rss_shmem_MiB" in idle["info"], idle
    assert "memory_back_s" in by_key["shutdown_full"]["results"][PYGEN]["info"]
    assert data["machine"]["cpus"] == os.cpu_count() and data["machine"]["pygen"]
    assert len(data["load"]["start"]) == 3 and len(data["load"]["end"]) == 3


@pytest.mark.timeout(300)
def test_quick_prints_progress_and_the_table_and_writes_markdown(quick_run):
    run, data, files = quick_run
    n = len(workloads.plan(quick=True))
    # not a terminal: one line per case as it starts, its figure when it ends
    assert f"[ 1/{n}]" in run.stderr and f"[{n}/{n}]" in run.stderr, run.stderr
    for m in data["metrics"]:
        assert m["title"] in run.stdout, m["title"]
    assert "load average (1, 5, 15 min)" in run.stdout
    with open(files["md"]) as f:
        md = f.read()
    assert "| metric | pygen |" in md and "Reproduce: `pygen bench --quick" in md
    assert sum(1 for line in md.splitlines() if line.startswith("| ")) == len(data["metrics"]) + 1


@pytest.mark.timeout(300)
def test_quick_draws_the_chart_when_matplotlib_is_there(quick_run):
    run, data, files = quick_run
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "png" not in files and report.CHART_NOTE in run.stdout
        return
    with open(files["png"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert f"chart: {files['png']}" in run.stdout


@pytest.mark.timeout(120)
def test_without_matplotlib_a_one_line_note_says_how_to_get_the_chart(tmp_path):
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is hidden by the test')\n")
    out = tmp_path / "out"
    env = environment("")
    env["PYTHONPATH"] = str(tmp_path / "block") + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run(pygen_command("bench", "--quick", "--no-ray", "--only", "first_item",
                                        "--out", str(out)),
                          capture_output=True, text=True, timeout=110, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc
    assert report.CHART_NOTE in proc.stdout.splitlines(), proc.stdout
    assert sorted(p.rsplit(".", 1)[-1] for p in os.listdir(out)) == ["json", "md"]


@pytest.mark.timeout(300)
def test_compare_two_runs(quick_run, tmp_path):
    run, data, files = quick_run
    better = json.loads(json.dumps(data))
    for m in better["metrics"]:
        if m["key"] == "tasks_serial":     # twice the rate: +100%
            m["results"][PYGEN]["value"] *= 2
        if m["key"] == "first_item":       # half the time: +100% too (lower is better)
            m["results"][PYGEN]["value"] /= 2
    better["metrics"] = [m for m in better["metrics"] if m["key"] != "shutdown"]
    b = tmp_path / "b.json"
    b.write_text(json.dumps(better))
    proc = subprocess.run(pygen_command("bench", "--compare", files["json"], str(b)),
                          capture_output=True, text=True, timeout=60, env=environment(""))
    assert proc.returncode == 0, proc
    rows = {line.split("  ")[0]: line for line in proc.stdout.splitlines()}
    title = {m["key"]: m["title"] for m in data["metrics"]}
    assert "+100%" in rows[title["tasks_serial"]], proc.stdout
    assert "+100%" in rows[title["first_item"]], proc.stdout
    assert "+0%" in rows[title["large_items"]], proc.stdout
    assert "only in" in proc.stdout and "shutdown" in proc.stdout


def test_compare_refuses_what_is_not_a_bench_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    proc = subprocess.run(pygen_command("bench", "--compare", str(bad), str(bad)),
                          capture_output=True, text=True, timeout=60, env=environment(""))
    assert proc.returncode == 2 and "is not a pygen bench result" in proc.stderr, proc
    proc = subprocess.run(pygen_command("bench", "--only", "no_such_workload"),
                          capture_output=True, text=True, timeout=60, env=environment(""))
    assert proc.returncode == 2 and "no benchmark workload" in proc.stderr, proc


# == the plan's rules, in process =============================================================
def test_pygen_and_ray_run_the_same_workload():
    """The ratio is a ratio: for every workload measured on both, Ray's side gets the same
    size (n, bytes) as pygen's, in full and quick runs; only the number of rounds differs."""
    for quick in (False, True):
        cases = workloads.plan(quick=quick)
        by_key = {}
        for c in cases:
            by_key.setdefault(c.workload.key, {})[c.side.column] = c
        both = [k for k, sides in by_key.items() if PYGEN in sides and RAY in sides]
        assert len(both) >= 20, both
        assert set(ACTOR_METRICS) <= set(both), both
        for key in both:
            p, r = by_key[key][PYGEN], by_key[key][RAY]
            assert ((p.size.n, p.size.nbytes, p.size.seconds)
                    == (r.size.n, r.size.nbytes, r.size.seconds)), key
            assert p.side.make is r.side.make, key   # the very same code on both sides


def _plain_workload(key, run, figure=lambda m: 1.0 / m):
    return Workload(key, f"a test workload {key}", "/s", True, Size(1, 3, 1, warmup=0),
                    Size(1, 2, 1, warmup=0),
                    (Side(PYGEN, "plain", lambda env, size: Trial(run, figure)),
                     Side("numpy copy", "plain",
                          lambda env, size: Trial(lambda: None, lambda m: 2.0 / max(m, 1e-9)))))


def test_adding_a_workload_is_one_definition(monkeypatch):
    calls = []
    extra = _plain_workload("one_more", lambda: calls.append(1))
    monkeypatch.setattr(workloads, "WORKLOADS", workloads.WORKLOADS + [extra])
    cases = workloads.plan(quick=True, only=["one_more"])
    assert [c.side.column for c in cases] == [PYGEN, "numpy copy"]
    measured = run_plan(cases)
    assert len(calls) == 2 and all(m.value for m in measured)   # 2 quick rounds, no warm-up
    import datetime
    data = report.build(cases, measured, quick=True, started=datetime.datetime.now(),
                        duration_s=1.0, load_start=[0, 0, 0], load_end=[0, 0, 0],
                        machine={"cpus": 2}, command="test")
    assert [m["key"] for m in data["metrics"]] == ["one_more"]
    assert "a test workload one_more" in report.text_table(data)
    assert "numpy copy" in data["metrics"][0]["ratios"]


def test_quick_skips_what_is_too_slow_for_it_and_the_table_says_which_rows(monkeypatch):
    """A side marked full-run only is skipped by --quick with the reason, and run by the
    full plan; the note under the table names the rows it was skipped in; a row shows each
    of its floors."""
    calls = []

    def side(column, value, **kw):
        def make(env, size):
            return Trial(lambda: calls.append(column), lambda m: value)
        return Side(column, "plain", make, **kw)

    w = Workload("two_floors", "a test workload with two floors", "/s", True,
                 Size(1, 1, 1, warmup=0), Size(1, 1, 1, warmup=0),
                 (side(PYGEN, 4.0), side("pipe round trip", 8.0),
                  side("socket round trip", 16.0, in_quick=False)))
    monkeypatch.setattr(workloads, "WORKLOADS", workloads.WORKLOADS + [w])
    import datetime
    for quick in (True, False):
        calls.clear()
        cases = workloads.plan(quick=quick, only=["two_floors"])
        measured = run_plan(cases)
        data = report.build(cases, measured, quick=quick, started=datetime.datetime.now(),
                            duration_s=1.0, load_start=[0, 0, 0], load_end=[0, 0, 0],
                            machine={"cpus": 2}, command="test")
        table = report.text_table(data)
        assert "pipe round trip 8/s (0.50x)" in table
        if quick:
            assert calls == [PYGEN, "pipe round trip"]
            assert measured[2].skipped == runner.QUICK_SKIP
            assert (f"socket round trip: skipped ({w.title}), {runner.QUICK_SKIP}"
                    not in table)   # every row of that column: no row list
            assert f"socket round trip: skipped, {runner.QUICK_SKIP}" in table
        else:
            assert calls == [PYGEN, "pipe round trip", "socket round trip"]
            assert "pipe round trip 8/s (0.50x); socket round trip 16/s (0.25x)" in table


def test_a_failing_trial_is_reported_not_dropped(monkeypatch):
    def boom():
        raise RuntimeError("the trial broke")

    extra = _plain_workload("breaks", boom)
    monkeypatch.setattr(workloads, "WORKLOADS", workloads.WORKLOADS + [extra])
    cases = workloads.plan(quick=True, only=["breaks"])
    measured = run_plan(cases)
    assert measured[0].error == "RuntimeError: the trial broke" and measured[0].value is None
    assert measured[1].value is not None   # the next case still ran
    import datetime
    data = report.build(cases, measured, quick=True, started=datetime.datetime.now(),
                        duration_s=1.0, load_start=[0, 0, 0], load_end=[0, 0, 0],
                        machine={"cpus": 2}, command="test")
    table = report.text_table(data)
    assert "FAILED" in table and "the trial broke" in table


def test_progress_on_a_terminal_rewrites_one_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    case = workloads.plan(quick=True, only=["tasks_serial"])[0]
    p = Progress(3, stream)
    p.start(case)
    for done in range(5):      # updates within 0.1 s of the last one are skipped
        p.round(done, 4)
    p.result(Measurement("tasks_serial", PYGEN, value=1.0), "1/s")
    text = stream.getvalue()
    assert "\r\033[K[1/3] pygen: tasks one at a time" in text
    assert "round 0/4" in text and "round 4/4" in text   # the first and the last always
    assert text.endswith("1/s\n") and text.count("\n") == 1


def test_the_chart_is_none_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails
    data = {"metrics": [], "machine": {}, "date": "x"}
    assert report.chart(data, str(tmp_path / "c.png")) is None
    assert not (tmp_path / "c.png").exists()


def test_value_and_ratio_text():
    assert report.value_text(12014.4, "/s") == "12,014/s"
    assert report.value_text(0.000210, "s") == "210 us"
    assert report.value_text(0.0000034, "s") == "3.4 us"
    assert report.value_text(0.106, "s") == "106.0 ms"
    assert report.value_text(2.46, "s") == "2.46 s"
    assert report.ratio_text(21.64) == "21.6x" and report.ratio_text(0.854) == "0.85x"
