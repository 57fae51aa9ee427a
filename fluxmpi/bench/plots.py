"""PNG plots of a bench document (matplotlib's Agg canvas: no display, no global pyplot state).

timeline-<workload>.png  node occupancy per run: nodes on y, seconds since the first submission on x, a bar per
                         task on each of its nodes (grey: start latency from `ready` to the first MPI_Init)
overhead-<workload>.png  per-task overhead per run: box plot, and overhead vs task index (growth)
startup-<workload>.png   each run's start-up (start to first result) as stacked parts (metrics.STARTUP_PARTS)
"""

from __future__ import annotations

import logging
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .metrics import STARTUP_PARTS, ready_times, slope, task_figures

logger = logging.getLogger(__name__)

_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _ran(entry: dict) -> list[dict]:
    return [r for r in entry["runs"] if any(t.get("started") is not None for t in r.get("tasks", []))]


def timeline(entry: dict, path: Path) -> Path | None:
    runs = _ran(entry)
    if not runs:
        return None
    nodes = sorted({n for r in runs for t in r["tasks"] for n in t.get("nodes") or ()})
    row = {n: i for i, n in enumerate(nodes)}
    fig = Figure(figsize=(10, 0.6 + len(runs) * (0.9 + 0.35 * len(nodes))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 1, sharex=True, squeeze=False)[:, 0]
    sizes = sorted({t["nodes_req"] for r in runs for t in r["tasks"]})
    for ax, r in zip(axes, runs):
        tasks = r["tasks"]
        t0 = min(t["submitted"] for t in tasks if t.get("submitted") is not None)
        for t, ready in zip(tasks, ready_times(tasks)):
            if t.get("started") is None or t.get("ended") is None:
                continue
            color = _COLORS[sizes.index(t["nodes_req"]) % len(_COLORS)]
            for n in t["nodes"]:
                if ready is not None:
                    ax.barh(row[n], t["started"] - ready, left=ready - t0, height=0.8, color="#d0d0d0")
                ax.barh(row[n], t["ended"] - t["started"], left=t["started"] - t0, height=0.8, color=color,
                        edgecolor="white", linewidth=0.5)
        s = r.get("summary") or {}
        title = r["name"]
        if s.get("makespan") is not None:
            title += (f": makespan {s['makespan']:.1f} s, {s['makespan_ratio']:.2f}x lower bound, "
                      f"utilization {100 * s['utilization']:.0f}%")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks(range(len(nodes)), nodes, fontsize=8)
        ax.invert_yaxis()
    axes[-1].set_xlabel("seconds since the run's first submission (grey: start latency; colour: task size "
                        + ", ".join(f"{n} node{'s' if n > 1 else ''}" for n in sizes[:len(_COLORS)]) + ")",
                        fontsize=8)
    fig.suptitle(entry["description"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def overhead(entry: dict, path: Path) -> Path | None:
    runs = [(r, task_figures(r["tasks"])) for r in _ran(entry)]
    runs = [(r, rows) for r, rows in runs if rows]
    if not runs:
        return None
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    box, trend = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    box.boxplot([[x["overhead"] for x in rows] for _, rows in runs], whis=(5, 95), showfliers=True)
    box.set_xticks(range(1, len(runs) + 1), [r["name"] for r, _ in runs], rotation=30, fontsize=8)
    box.set_ylabel("per-task overhead (s)")
    box.set_title("overhead per task (whiskers 5-95%)", fontsize=9)
    for k, (r, rows) in enumerate(runs):
        color = _COLORS[k % len(_COLORS)]
        xs = [x["index"] for x in rows]
        ys = [x["overhead"] for x in rows]
        trend.plot(xs, ys, ".", ms=3, color=color, alpha=0.6)
        b = slope(xs, ys)
        label = r["name"] + ("" if b is None else f" ({1000 * b:+.2f} ms/task)")
        if b is not None:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            trend.plot([min(xs), max(xs)], [my + b * (min(xs) - mx), my + b * (max(xs) - mx)], "-", color=color,
                       label=label)
        else:
            trend.plot([], [], ".", color=color, label=label)
    values = [x["overhead"] for _, rows in runs for x in rows if x["overhead"] > 0]
    if values and max(values) > 8 * min(values):    # one slow path would flatten all the others
        box.set_yscale("log")
        trend.set_yscale("log")
    trend.set_xlabel("task index (submission order)")
    trend.set_ylabel("overhead (s)")
    trend.set_title("overhead vs task index, least-squares lines", fontsize=9)
    trend.legend(fontsize=7)
    fig.suptitle(entry["description"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def startup(entry: dict, path: Path) -> Path | None:
    runs = [r for r in entry["runs"] if (r.get("summary") or {}).get("startup") is not None]
    if not runs:
        return None
    fig = Figure(figsize=(10, 1.2 + 0.45 * len(runs)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for y, r in enumerate(runs):
        parts, left = r["summary"].get("startup_parts") or {}, 0.0
        for k, part in enumerate(STARTUP_PARTS):
            width = parts.get(part)
            if width:
                ax.barh(y, width, left=left, height=0.7, color=_COLORS[k % len(_COLORS)])
                left += width
        ax.text(r["summary"]["startup"], y, f" {r['summary']['startup']:.1f} s", va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * max(r["summary"]["startup"] for r in runs) or 1)   # room for the labels
    ax.set_yticks(range(len(runs)), [r["name"] for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the run's start to its first result")
    ax.legend(handles=[Patch(color=_COLORS[k % len(_COLORS)], label=part) for k, part in enumerate(STARTUP_PARTS)],
              fontsize=7, ncol=len(STARTUP_PARTS), loc="lower right")
    ax.set_title(f"start-up, {entry['description']}", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_all(bench: dict, out_dir: Path) -> list[Path]:
    out = []
    for entry in bench["workloads"]:
        name = entry["workload"]["name"]
        for make, stem in ((timeline, "timeline"), (overhead, "overhead"), (startup, "startup")):
            p = make(entry, Path(out_dir) / f"{stem}-{name}.png")
            if p is not None:
                out.append(p)
    return out
