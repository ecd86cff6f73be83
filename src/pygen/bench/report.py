"""A benchmark run as data (the JSON), and its faces: the text table, the Markdown, the
chart of the ratios, and the comparison of two runs.

Ratios are pygen's advantage over the other side: how many times more per second, or
sooner, or smaller pygen is; above 1 pygen does better, below 1 worse.  Against a floor
(numpy's copy, a pipe round trip, a bare interpreter) it says how close pygen comes to
what no runtime can beat.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .measure import describe_machine
from .runner import Measurement
from .workloads import (COLUMNS, FLOORS, FRESH_SHM_1, FRESH_SHM_2, JOBLIB, MP, NUMPY_COPY, PIPE,
                        PYGEN, PYTHON_START, RAY, SOCKET, WORKLOADS, Case, Workload)

SCHEMA = "pygen-bench/1"
TABLE_COLUMNS = (PYGEN, RAY, MP, JOBLIB, "floors")
CHART_NOTE = ("chart not drawn: matplotlib is not installed "
              "(pip install matplotlib, or pip install 'pygen[bench]')")


# == the run as data =========================================================================
def build(cases: Sequence[Case], measurements: Sequence[Measurement], *, quick: bool,
          started: datetime.datetime, duration_s: float, load_start: Sequence[float],
          load_end: Sequence[float], machine: Dict[str, Any], command: str) -> Dict[str, Any]:
    """The JSON document of a run: the machine, the load, and per workload every side's
    figure (or why it is missing) and pygen's ratio to each."""
    workloads: List[Workload] = []
    for c in cases:
        if c.workload not in workloads:
            workloads.append(c.workload)
    order = {w.key: i for i, w in enumerate(WORKLOADS)}   # the table in definition order
    workloads.sort(key=lambda w: order.get(w.key, len(order)))
    by_key: Dict[str, Dict[str, Measurement]] = {}
    for m in measurements:
        by_key.setdefault(m.workload, {})[m.column] = m
    metrics = []
    for w in workloads:
        size = w.size(quick)
        results, skipped, errors = {}, {}, {}
        for column, m in by_key.get(w.key, {}).items():
            if m.value is not None:
                results[column] = {"value": m.value, "median_round_s": m.median_round_s,
                                   "rounds": m.rounds, "load1": m.load1, "wall_s": m.wall_s,
                                   "info": m.info}
            elif m.skipped:
                skipped[column] = m.skipped
            elif m.error:
                errors[column] = m.error
        metrics.append({
            "key": w.key, "title": w.label(quick), "unit": w.unit,
            "higher_is_better": w.higher_is_better, "goal": w.goal, "note": w.note,
            "size": asdict(size), "results": results, "skipped": skipped, "errors": errors,
            "ratios": _ratios(w.higher_is_better, results),
        })
    return {
        "schema": SCHEMA,
        "date": started.astimezone(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "quick": quick,
        "duration_s": round(duration_s, 1),
        "machine": machine,
        "load": {"start": [round(x, 2) for x in load_start],
                 "end": [round(x, 2) for x in load_end]},
        "metrics": metrics,
    }


def _ratios(higher_is_better: bool, results: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    mine = results.get(PYGEN, {}).get("value")
    out: Dict[str, float] = {}
    if not mine:
        return out
    for column, r in results.items():
        other = r["value"]
        if column == PYGEN or not other:
            continue
        out[column] = round(mine / other if higher_is_better else other / mine, 3)
    return out


def load(path: str) -> Dict[str, Any]:
    """A run written by ``pygen bench`` (checks it is one)."""
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path} is not a pygen bench result (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a pygen bench result (no \"schema\": \"{SCHEMA}\")")
    return data


def write_json(report: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


# == formatting ==============================================================================
def value_text(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        if value < 1e-4:
            return f"{value * 1e6:.1f} us"
        if value < 1e-3:
            return f"{value * 1e6:.0f} us"
        if value < 1:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.2f} s"
    if unit == "GB/s":
        return f"{value:.2f} GB/s"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:g} {unit}"


def ratio_text(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def _cell(metric: Dict[str, Any], column: str) -> str:
    r = metric["results"].get(column)
    if r is None:
        if column in metric["errors"]:
            return "FAILED"
        return "skipped" if column in metric["skipped"] else ""
    text = value_text(r["value"], metric["unit"])
    if column != PYGEN and column in metric["ratios"]:
        text += f" ({ratio_text(metric['ratios'][column])})"
    if column in FLOORS:
        text = f"{column} {text}"
    return text


def _floors(metric: Dict[str, Any]) -> List[str]:
    """The floors of a metric (its table cell shows each, in FLOORS order)."""
    return [c for c in FLOORS
            if c in metric["results"] or c in metric["skipped"] or c in metric["errors"]]


def rows(report: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of the side-by-side table; columns nobody measured are left out."""
    present = [c for c in TABLE_COLUMNS
               if any(bool(_floors(m)) if c == "floors" else
                      (c in m["results"] or c in m["skipped"] or c in m["errors"])
                      for m in report["metrics"])]
    header = ["metric"] + present + ["load"]
    out = []
    for m in report["metrics"]:
        row = [m["title"]]
        for c in present:
            if c == "floors":
                row.append("; ".join(_cell(m, f) for f in _floors(m)))
            else:
                row.append(_cell(m, c))
        loads = [r["load1"] for r in m["results"].values() if r.get("load1") is not None]
        row.append(f"{min(loads):.1f}-{max(loads):.1f}" if len(loads) > 1 and
                   min(loads) != max(loads) else f"{loads[0]:.1f}" if loads else "")
        out.append(row)
    return header, out


def _skip_notes(report: Dict[str, Any]) -> List[str]:
    """One line per column and reason; the rows are named unless it is all of them."""
    rows_of: Dict[Tuple[str, str], List[str]] = {}
    for m in report["metrics"]:
        for column, reason in m["skipped"].items():
            rows_of.setdefault((column, reason), []).append(m["title"])
    out = []
    for (column, reason), titles in rows_of.items():
        every = sum(1 for m in report["metrics"]
                    if column in m["skipped"] or column in m["results"] or column in m["errors"])
        where = "" if len(titles) == every else f" ({'; '.join(titles)})"
        out.append(f"{column}: skipped{where}, {reason}")
    for m in report["metrics"]:
        for column, error in m["errors"].items():
            out.append(f"{m['title']}, {column}: FAILED: {error}")
    return out


def heading(report: Dict[str, Any]) -> List[str]:
    m = report["machine"]
    ray = m.get("ray")
    load = report["load"]
    return [
        f"pygen {m.get('pygen')} benchmark, {report['date']}"
        f"{' (--quick)' if report['quick'] else ''}, {report['duration_s']:.0f} s",
        f"machine: {describe_machine(m)}",
        f"Ray: {ray if ray else 'not installed'}; joblib: {m.get('joblib') or 'not installed'}; "
        f"numpy {m.get('numpy')}",
        f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load['start'])} at the "
        f"start, {', '.join(f'{x:.2f}' for x in load['end'])} at the end",
    ]


RATIO_LEGEND = ("(x): pygen's advantage, how many times faster, sooner or smaller pygen is "
                "(above 1: pygen better); against a floor, how close pygen comes to it. "
                "Medians; load: the 1-minute load average while measured.")


def text_table(report: Dict[str, Any]) -> str:
    header, body = rows(report)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = heading(report) + [""]
    lines += [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r).rstrip() for r in body]
    lines += ["", RATIO_LEGEND] + _skip_notes(report)
    return "\n".join(lines) + "\n"


def markdown(report: Dict[str, Any]) -> str:
    header, body = rows(report)
    esc = [[c.replace("|", "\\|") for c in r] for r in [header] + body]
    lines = [f"- {line}" for line in heading(report)] + [""]
    lines.append("| " + " | ".join(esc[0]) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    lines += ["", RATIO_LEGEND]
    notes = [f"- {m['title']}: {m['note']}" for m in report["metrics"] if m["note"]]
    notes += [f"- {n}" for n in _skip_notes(report)]
    if notes:
        lines += [""] + notes
    lines += ["", f"Reproduce: `{report['command']}`"]
    return "\n".join(lines) + "\n"


# == the chart =================================================================================
def chart(report: Dict[str, Any], path: str) -> Optional[str]:
    """A PNG of pygen's ratio to each other side, one group of bars per metric (log scale,
    1 marked); the path written, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in report["metrics"] if m["ratios"]]
    others = [c for c in COLUMNS if c != PYGEN and any(c in m["ratios"] for m in metrics)]
    colors = {RAY: "#d62728", MP: "#1f77b4", JOBLIB: "#9467bd", NUMPY_COPY: "#7f7f7f",
              PIPE: "#8c564b", SOCKET: "#e377c2", PYTHON_START: "#bcbd22",
              FRESH_SHM_2: "#17becf", FRESH_SHM_1: "#aec7e8"}
    # one bar per (metric, other side) measured, grouped by metric, groups apart
    bars: List[Tuple[float, float, str]] = []
    ticks: List[Tuple[float, str]] = []
    y = 0.0
    for m in metrics:
        present = [c for c in others if c in m["ratios"]]
        first = y
        for c in present:
            bars.append((y, m["ratios"][c], c))
            y += 1.0
        ticks.append(((first + y - 1.0) / 2, m["title"]))
        y += 0.7
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.24 * y))
    for column in others:
        mine = [(b[0], b[1]) for b in bars if b[2] == column]
        ax.barh([b[0] for b in mine], [b[1] for b in mine], height=0.85,
                label=f"vs {column}", color=colors.get(column))
        for yy, r in mine:
            ax.annotate(ratio_text(r), (r, yy), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([t[0] for t in ticks])
    ax.set_yticklabels([t[1] for t in ticks], fontsize=8)
    ax.set_ylim(y - 0.3, -0.8)   # the first metric at the top
    ax.set_xlabel("pygen's advantage (x, log scale; right of 1: pygen better)")
    m = report["machine"]
    ax.set_title(f"pygen {m.get('pygen')} vs Ray {m.get('ray') or '(not installed)'} and "
                 f"references, {report['date'][:10]}, {m.get('cpus')} CPUs", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# == two runs ===================================================================================
def compare(a: Dict[str, Any], b: Dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """pygen's figure in run A and in run B for each metric both have, the change from A to
    B (positive: B better), and pygen's ratio to Ray in each; sizes that differ are said."""
    am = {m["key"]: m for m in a["metrics"]}
    header = ["metric", f"pygen {a_name}", f"pygen {b_name}", "change", f"vs Ray {a_name}",
              f"vs Ray {b_name}"]
    body = []
    notes = []
    for mb in b["metrics"]:
        ma = am.get(mb["key"])
        if ma is None:
            continue
        ra, rb = ma["results"].get(PYGEN), mb["results"].get(PYGEN)
        row = [mb["title"], value_text(ra["value"], ma["unit"]) if ra else "",
               value_text(rb["value"], mb["unit"]) if rb else ""]
        if ra and rb and ra["value"] and rb["value"]:
            gain = rb["value"] / ra["value"] if mb["higher_is_better"] else ra["value"] / rb["value"]
            row.append(f"{(gain - 1) * 100:+.0f}%")
        else:
            row.append("")
        for m in (ma, mb):
            r = m["ratios"].get(RAY)
            row.append(ratio_text(r) if r else "")
        body.append(row)
        if ma["size"] != mb["size"]:
            notes.append(f"{mb['key']}: not the same size in both runs ({ma['size']} / {mb['size']})")
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"{a_name}: {a['date']}, {describe_machine(a['machine'])}, load "
             f"{a['load']['start'][0]:.2f}-{a['load']['end'][0]:.2f}"
             f"{', --quick' if a['quick'] else ''}",
             f"{b_name}: {b['date']}, {describe_machine(b['machine'])}, load "
             f"{b['load']['start'][0]:.2f}-{b['load']['end'][0]:.2f}"
             f"{', --quick' if b['quick'] else ''}", ""]
    lines += [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r).rstrip() for r in body]
    lines += ["", "change: pygen in B against pygen in A (positive: B better)."]
    only_a = sorted(set(am) - {m["key"] for m in b["metrics"]})
    if only_a:
        notes.append(f"only in {a_name}: {', '.join(only_a)}")
    return "\n".join(lines + notes) + "\n"


def output_paths(directory: str, started: datetime.datetime, quick: bool) -> Dict[str, str]:
    stem = f"pygen-bench{'-quick' if quick else ''}-{started.strftime('%Y%m%d-%H%M%S')}"
    return {ext: os.path.join(directory, f"{stem}.{ext}") for ext in ("json", "md", "png")}
