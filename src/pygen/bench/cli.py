"""``pygen bench``: run the benchmark workloads, print the side-by-side table, write it as
JSON and Markdown, draw the chart; or compare two runs (``--compare A.json B.json``)."""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import List, Optional

from . import report
from .measure import machine
from .runner import Measurement, Progress, run_plan
from .workloads import WORKLOADS, find, plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smaller workloads and fewer rounds: under a minute (every metric "
                             "still measured, with more noise)")
    parser.add_argument("--out", metavar="DIR", default=".",
                        help="where to write the JSON, Markdown and PNG (default: .)")
    parser.add_argument("--only", metavar="KEY", action="append", default=[],
                        help="run only this workload (repeatable; see --list)")
    parser.add_argument("--no-ray", action="store_true",
                        help="do not measure Ray even when it is installed")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="compare two runs written by pygen bench, and exit")


def main(args: argparse.Namespace, argv: Optional[List[str]] = None) -> int:
    if args.compare:
        try:
            a, b = (report.load(p) for p in args.compare)
        except (OSError, ValueError) as exc:   # a missing file, not JSON, not a bench run
            sys.stderr.write(f"pygen bench --compare: {exc}\n")
            return 2
        sys.stdout.write(report.compare(a, b, os.path.basename(args.compare[0]),
                                        os.path.basename(args.compare[1])))
        return 0
    if args.list:
        for w in WORKLOADS:
            sides = ", ".join(s.column for s in w.sides)
            sys.stdout.write(f"{w.key:<26} {w.label(args.quick)}  [{sides}]\n")
        return 0
    if args.no_ray:
        os.environ["BENCH_NO_RAY"] = "1"
    try:
        cases = plan(quick=args.quick, only=args.only or None)
    except KeyError as exc:
        sys.stderr.write(f"pygen bench --only: {exc.args[0]}\n")
        return 2
    os.makedirs(args.out, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    paths = report.output_paths(args.out, started, args.quick)
    load_start = os.getloadavg()
    t0 = time.monotonic()

    def describe(m: Measurement) -> str:
        return report.value_text(m.value, find(m.workload).unit) if m.value is not None else "-"

    measurements = run_plan(cases, Progress(len(cases)), describe)
    command = " ".join(["pygen"] + (argv if argv is not None else sys.argv[1:]))
    data = report.build(cases, measurements, quick=args.quick, started=started,
                        duration_s=time.monotonic() - t0, load_start=load_start,
                        load_end=os.getloadavg(), machine=machine(), command=command)
    report.write_json(data, paths["json"])
    with open(paths["md"], "w") as f:
        f.write(report.markdown(data))
    drawn = report.chart(data, paths["png"])
    sys.stdout.write("\n" + report.text_table(data) + "\n")
    sys.stdout.write(f"wrote {paths['json']} and {paths['md']}\n")
    sys.stdout.write(f"chart: {drawn}\n" if drawn else report.CHART_NOTE + "\n")
    sys.stdout.flush()
    failed = [m for m in measurements if m.error]
    return 1 if failed else 0
