"""The bench document as files: results.json (raw records + figures) and a Markdown report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .metrics import COMPONENT_HELP, COMPONENTS, STARTUP_HELP, STARTUP_PARTS

logger = logging.getLogger(__name__)


def write_json(bench: dict, path: Path) -> None:
    """Write atomically, so a reader never sees half a file even if the bench is interrupted."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(bench, indent=1))
    os.replace(tmp, path)


def _f(value, digits: int = 3, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{suffix}"


def _status(run: dict) -> str:
    if run["status"] == "ok":
        return "ok"
    if run["status"] == "not applicable":
        return run["reason"]
    return f"{run['status']}: {run['reason']}".replace("|", "/").replace("\n", " ")[:160]


def render_markdown(bench: dict) -> str:
    site, v = bench["site"], bench["versions"]
    lines = [
        "# fluxmpi bench",
        "",
        f"- command: `{bench['command']}`" if bench.get("command") else "- command: (library call)",
        f"- when: {bench['time']} on {bench['host']} ({bench['cpus']} cpus)",
        f"- site: {site['name']}, partition {site['partition']}, {site['nodes']} nodes x "
        f"{site['cores_per_node']} cores",
        f"- versions: fluxmpi {v['fluxmpi']}, parsl {v['parsl']}, flux-core {v['flux-core'] or '-'}, "
        f"python {v['python']}",
        "",
        "Times in seconds. overhead = (returned - ready) - (ended - started) per task, ready = max(submitted, "
        "when its nodes were freed); see docs/benchmarks.md.",
    ]
    for entry in bench["workloads"]:
        lines += ["", f"## {entry['description']}", "",
                  "| run | status | ok | start-up | overhead median | p95 | vs baseline | makespan | lower bound "
                  "| ratio | packing ratio | utilization | tasks/s | slope ms/task | placement |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["runs"]:
            s = r.get("summary") or {}
            base = f" ({r['baseline']})" if s.get("overhead_vs_baseline") is not None else ""
            placed = {True: "verified", False: "PROBLEMS", None: "-"}[r.get("placement_ok")]
            lines.append(
                f"| {r['name']} | {_status(r)} | {s.get('ok', '-')}/{s.get('tasks', '-')} | {_f(s.get('startup'), 1)}"
                f" | {_f(s.get('overhead_median'))} | {_f(s.get('overhead_p95'))}"
                f" | {_f(s.get('overhead_vs_baseline'), 2, suffix='x')}{base} | {_f(s.get('makespan'), 1)}"
                f" | {_f(s.get('lower_bound'), 1)} | {_f(s.get('makespan_ratio'), 2)}"
                f" | {_f(s.get('packing_ratio'), 2)} | {_f(s.get('utilization'), 0, 100, '%')}"
                f" | {_f(s.get('throughput'), 2)} | {_f(s.get('overhead_slope'), 2, 1000)} | {placed} |")
        ran = [r for r in entry["runs"] if (r.get("summary") or {}).get("components_mean")]
        if ran:
            lines += ["", "Where the overhead goes (mean seconds per task; '-' = the run has no usable "
                      "timestamp there, so the next column includes it):", "",
                      "| run | " + " | ".join(COMPONENTS) + " | total (mean overhead) |",
                      "|---|" + "---|" * (len(COMPONENTS) + 1)]
            for r in ran:
                c = r["summary"]["components_mean"]
                lines.append(f"| {r['name']} | " + " | ".join(_f(c.get(k)) for k in COMPONENTS)
                             + f" | {_f(r['summary'].get('overhead_mean'))} |")
        lines += render_startup(entry)
        lines += render_startup_medians(entry)
        lines += render_warmth(entry)
        lines += render_wrapper_cost(entry)
        lines += render_container_cost(entry)
    lines += ["", "Components: " + "; ".join(f"**{k}** {COMPONENT_HELP[k]}" for k in COMPONENTS) + "."]
    lines += ["", "Start-up parts: " + "; ".join(f"**{k}** {STARTUP_HELP[k]}" for k in STARTUP_PARTS) + "."]
    lines += ["", "## Targets", ""] + render_targets(bench.get("targets", []))
    return "\n".join(lines) + "\n"


def render_startup(entry: dict) -> list[str]:
    """Where each run's start-up (start to first result) went, beside its baseline's."""
    rows = [r for r in entry["runs"] if (r.get("summary") or {}).get("startup") is not None]
    if not rows:
        return []
    lines = ["", "Where the start-up goes (seconds from the run's start to its first result; '-' = no stamp there, "
             "so the next column includes it):", "",
             "| run | " + " | ".join(STARTUP_PARTS) + " | start-up | vs baseline |",
             "|---|" + "---|" * (len(STARTUP_PARTS) + 2)]
    for r in rows:
        s = r["summary"]
        parts = s.get("startup_parts") or {}
        base = f" ({r['baseline']})" if s.get("startup_vs_baseline") is not None else ""
        lines.append(f"| {r['name']} | " + " | ".join(_f(parts.get(k), 1) for k in STARTUP_PARTS)
                     + f" | {_f(s['startup'], 1)} | {_f(s.get('startup_vs_baseline'), 2, suffix='x')}{base} |")
    return lines


def render_startup_medians(entry: dict) -> list[str]:
    """With --rounds N: each run's start-up and its parts as medians over the rounds, with their range."""
    medians = entry.get("startup_median") or {}
    if not medians:
        return []
    lines = ["", "Start-up over the rounds (--rounds): the median of each part and of the start-up, the range of "
             "the start-up, and the median's ratio to its baseline's median:", "",
             "| run | rounds | " + " | ".join(STARTUP_PARTS) + " | start-up median | min-max | vs baseline |",
             "|---|---|" + "---|" * (len(STARTUP_PARTS) + 3)]
    for name, m in medians.items():
        base = f" ({m['baseline']})" if m.get("vs_baseline") is not None else ""
        lines.append(f"| {name} | {m['rounds']} | " + " | ".join(_f(m["parts"].get(k), 1) for k in STARTUP_PARTS)
                     + f" | {_f(m['startup'], 1)} | {_f(m['min'], 1)}-{_f(m['max'], 1)}"
                     + f" | {_f(m.get('vs_baseline'), 2, suffix='x')}{base} |")
    return lines


def render_wrapper_cost(entry: dict) -> list[str]:
    """The user-app rows (+wrap): each task's launcher run, start to end, beside the same path without the rank
    wrapper; the difference is what the wrapper costs a task (its ranks start in parallel)."""
    rows = [r for r in entry["runs"] if (r.get("summary") or {}).get("wrapper_cost") is not None]
    if not rows:
        return []
    lines = ["", "The rank wrapper (user-app rows): median seconds from a task's launch to its launcher's end, with "
             "and without the wrapper in front of every rank:", "",
             "| run | without | with | wrapper cost per task |", "|---|---|---|---|"]
    by_name = {r["name"]: r for r in entry["runs"]}
    for r in rows:
        plain = by_name[r["name"].rsplit("+", 1)[0]]["summary"]
        s = r["summary"]
        lines.append(f"| {r['name']} | {_f(plain['launch_to_done_median'])} | {_f(s['launch_to_done_median'])} "
                     f"| {_f(s['wrapper_cost'], 1, 1000, ' ms')} |")
    return lines


def render_container_cost(entry: dict) -> list[str]:
    """The +ctr rows: each rank's run inside the image beside the same command on the host (+wrap), and the
    overhead a task pays with the image's start counted in."""
    rows = [r for r in entry["runs"] if (r.get("summary") or {}).get("container_cost") is not None]
    if not rows:
        return []
    lines = ["", "The container (+ctr rows, the +wrap command inside the image): median seconds of a task's ranks "
             "as the rank wrapper times them, without and with the image, and the overhead with the image's cost "
             "counted in:", "",
             "| run | run without | run with | image cost per task | overhead without | overhead with image "
             "| ratio |", "|---|---|---|---|---|---|---|"]
    by_name = {r["name"]: r for r in entry["runs"]}
    for r in rows:
        bare = by_name[r["name"].removesuffix("+ctr") + "+wrap"]["summary"]
        s = r["summary"]
        lines.append(f"| {r['name']} | {_f(bare['run_median'])} | {_f(s['run_median'])} "
                     f"| {_f(s['container_cost'], 1, 1000, ' ms')} | {_f(bare.get('overhead_median'))} "
                     f"| {_f(s.get('overhead_with_image'))} | {_f(s.get('container_overhead_ratio'), 2, suffix='x')} |")
    return lines


def render_warmth(entry: dict) -> list[str]:
    """With --warm / --compare-warm: each run's time to first result beside its warm hold, and what warm saved."""
    runs = [r for r in entry["runs"] if r.get("warm")]
    if not runs:
        return []
    lines = ["", "Time to first result, cold and warm (seconds from the workflow's start, which for a warm run is "
             "the hold's submission; the hold is released right before the blocks are submitted):", "",
             "| run | warm hold | nodes powered down at start | hold's nodes up after | released after "
             "| time to first result |", "|---|---|---|---|---|---|"]
    first = {}
    for r in runs:
        w, s = r["warm"], r.get("summary") or {}
        first[r["name"]] = s.get("startup")
        hold = "none (cold)" if not w.get("nodes") else (
            f"{w['nodes']} node(s), job {w['hold_job']}" + ("" if w.get("warm") else f": FAILED ({w.get('problem')})"))
        down = {True: "yes", False: "NO", None: "-"}[w.get("powered_down_at_start")]
        lines.append(f"| {r['name']} | {hold} | {down} | {_f(w.get('warm_after'), 1)}"
                     f" | {_f(w.get('released_after'), 1)} | {_f(s.get('startup'), 1)} |")
    pairs = [(name, first[name], first[name + "+warm"]) for name in first
             if name + "+warm" in first and first[name] is not None and first[name + "+warm"] is not None]
    if pairs:
        lines += [""] + [f"- {name}: warm {w:.1f} s vs cold {c:.1f} s: {c - w:+.1f} s saved ({(c - w) / c:.0%})"
                         for name, c, w in pairs]
    return lines


def render_targets(targets: list[dict]) -> list[str]:
    if not targets:
        return ["(no target applies to these workloads and paths)"]
    what = {"overhead": "median overhead vs its bare baseline", "makespan": "makespan / lower bound",
            "growth": "overhead rise over the run / median overhead",
            "container": "overhead with the image / without",
            "packing": "makespan ratio / htex's",
            "startup": "start-up vs its bare baseline's"}
    lines = ["| target | workload | path | value | limit | met |", "|---|---|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "NO", None: f"n/a ({t['note']})"}[t["met"]]
        value = _f(t["value"], 2, 100, "%") if t["target"] == "growth" else _f(t["value"], 2, suffix="x")
        limit = _f(t["limit"], 0, 100, "%") if t["target"] == "growth" else _f(t["limit"], 2, suffix="x")
        if t["target"] == "growth" and t.get("slope") is not None:
            ci = "" if t.get("slope_se") is None else f" ± {1.96 * t['slope_se'] * 1000:.2f}"
            value += f" (slope {t['slope'] * 1000:.2f}{ci} ms/task, 95%)"
        if t.get("rounds"):
            value += f" (median of {t['rounds']} rounds)"
        lines.append(f"| {what[t['target']]} | {t['workload']} | {t['path']} | {value} | {limit} | {met} |")
    return lines
