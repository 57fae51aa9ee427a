"""The scale workload: how fluxmpi's costs grow with nodes and tasks (`fluxmpi bench --workload scale`).

For each node count N (4, 8, 16, 32 by default) the bench runs, on N nodes, uniform workloads of T tasks (20,
200, 2,000) of S nodes (1, 2) that sleep briefly, through the chosen paths and baselines (htex, flux-jobs,
bare-srun, bare-flux by default), one after the other as every bench does. One local cluster with the largest N
is booted once; each N uses that many of its nodes (bench_site), so no run pays a boot.

Per run it keeps what the issue asks to read off: overhead median and p95, tasks/s, makespan over its lower
bound, the overhead's slope over the task index, and the CPU seconds the driver used per task: the fluxmpi
process itself ("own", what the CPU target is judged on) and with the children it reaped (Parsl's interchange,
srun or flux clients; not the cluster's daemons). The targets are
evaluated here (scale_targets) and the figures plotted (scale.png) and tabled (scale.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import FluxmpiError
from ..site import Site
from . import report
from .workload import Workload

logger = logging.getLogger(__name__)

DEFAULT_NODES = (4, 8, 16, 32)
DEFAULT_TASKS = (20, 200, 2000)
DEFAULT_SIZES = (1, 2)
DEFAULT_PATHS = "bare-srun,htex,bare-flux,flux-jobs"
DEFAULT_SLEEP = 0.2
SLOPE_LIMIT = 0.001          # s/task: the overhead may rise or fall by at most 1 ms per task
THROUGHPUT_LIMIT = 1.25      # flux-jobs within 1.25x of bare-flux's tasks/s at the largest node count
CPU_LIMIT = 0.005            # s of driver CPU per task
SLOPE_MIN_TASKS = 200
_FLUXMPI_PATHS = ("htex", "htex-mpiexec", "static", "flux", "flux-jobs")


class ScaleError(FluxmpiError, ValueError):
    """A scale plan that cannot run; names the bad value and the fix."""


def parse_counts(text: str | None, default: tuple[int, ...], what: str) -> tuple[int, ...]:
    """"4,8,16" -> (4, 8, 16); None -> the default."""
    if text is None:
        return default
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ScaleError(f"{what} {text!r}: give whole numbers separated by commas, e.g. 4,8,16") from None
    if not values or any(v < 1 for v in values):
        raise ScaleError(f"{what} {text!r}: give positive whole numbers separated by commas, e.g. 4,8,16")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class ScalePlan:
    nodes: tuple[int, ...] = DEFAULT_NODES
    tasks: tuple[int, ...] = DEFAULT_TASKS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    sleep: float = DEFAULT_SLEEP

    def __post_init__(self) -> None:
        too_big = [s for s in self.sizes if s > min(self.nodes)]
        if too_big:
            raise ScaleError(f"task sizes {too_big} do not fit the smallest node count {min(self.nodes)}: "
                             f"give --scale-sizes up to {min(self.nodes)} or larger --scale-nodes")
        if not 0 <= self.sleep <= 60:
            raise ScaleError(f"--sleep {self.sleep:g} for the scale workload: give 0 to 60 seconds")

    def workloads(self) -> list[Workload]:
        return [Workload(f"t{t}-n{s}", "uniform", tasks=t, nodes=s, ranks_per_node=1, seconds=self.sleep)
                for t in self.tasks for s in self.sizes]

    def runs(self) -> int:
        return len(self.nodes) * len(self.tasks) * len(self.sizes)


def run_scale(site: Site, plan: ScalePlan, names: list[str], out_dir: Path, *, run_bench: Callable,
              log: Callable[[str], None] = print, **bench_kwargs) -> dict:
    """Run the plan on `site` (which has at least max(plan.nodes) nodes); writes OUT/scale.json, scale.md,
    scale.png and each node count's full bench output in OUT/nodes-N/. Returns the scale document."""
    from .driver import bench_site
    if site.nodes < max(plan.nodes):
        raise ScaleError(f"the scale plan needs {max(plan.nodes)} nodes but {site.name} has {site.nodes}: "
                         f"give --scale-nodes up to {site.nodes} or a larger cluster (--cluster-nodes)")
    out_dir = Path(out_dir).resolve()
    doc: dict = {"fluxmpi_scale": 1, "plan": {"nodes": plan.nodes, "tasks": plan.tasks, "sizes": plan.sizes,
                                              "sleep": plan.sleep}, "names": names, "rows": []}
    for n in plan.nodes:
        log(f"fluxmpi: scale: {n} nodes ({len(plan.workloads())} workloads x {len(names)} runs)")
        bench = run_bench(bench_site(site, n), plan.workloads(), names, out_dir / f"nodes-{n}", log=log,
                          **bench_kwargs)
        doc.setdefault("benches", []).append(str(out_dir / f"nodes-{n}" / "results.json"))
        doc["rows"] = with_marginal_cpu(doc["rows"] + scale_rows(bench, n))
        doc["targets"] = scale_targets(doc["rows"])
        report.write_json(doc, out_dir / "scale.json")      # keep what finished if a later node count breaks
    (out_dir / "scale.md").write_text(render(doc))
    doc["plots"] = [str(p) for p in [plot(doc, out_dir / "scale.png")] if p]
    report.write_json(doc, out_dir / "scale.json")
    return doc


def scale_rows(bench: dict, nodes: int) -> list[dict]:
    """One row per (workload, run) of a bench on `nodes` nodes, with the figures the scale table shows."""
    rows = []
    for entry in bench["workloads"]:
        wl = entry["workload"]
        for r in entry["runs"]:
            s = r.get("summary") or {}
            cpu = r.get("cpu") or {}
            used = (cpu.get("self") or 0.0) + (cpu.get("children") or 0.0) if cpu else None
            own = cpu.get("self") if cpu else None
            rows.append({
                "nodes": nodes, "tasks": wl["tasks"], "size": wl["nodes"], "name": r["name"], "status": r["status"],
                "ok": s.get("ok"), "overhead_median": s.get("overhead_median"), "overhead_p95": s.get("overhead_p95"),
                "throughput": s.get("throughput"), "makespan_ratio": s.get("makespan_ratio"),
                "overhead_slope": s.get("overhead_slope"), "startup": s.get("startup"),
                "cpu": used, "cpu_per_task": used / wl["tasks"] if used is not None and wl["tasks"] else None,
                "cpu_own": own,
                "placement_ok": r.get("placement_ok"), "reason": r.get("reason", ""),
            })
    return rows


def with_marginal_cpu(rows: list[dict]) -> list[dict]:
    """Give each row the driver CPU one more task costs (with its children: cpu_marginal; the process itself:
    cpu_own_marginal): the CPU difference to the same run with the next smaller task count (same nodes and task
    size) over the difference in tasks. A run's total also holds its fixed start (parsl.load, the compile task,
    the instance's connection), which this leaves out."""
    for r in rows:
        smaller = [b for b in rows if (b["nodes"], b["size"], b["name"]) == (r["nodes"], r["size"], r["name"])
                   and b["tasks"] < r["tasks"] and b.get("cpu") is not None]
        prev = max(smaller, key=lambda b: b["tasks"], default=None)
        for key, out in (("cpu", "cpu_marginal"), ("cpu_own", "cpu_own_marginal")):
            r[out] = (None if prev is None or r.get(key) is None or prev.get(key) is None
                      else (r[key] - prev[key]) / (r["tasks"] - prev["tasks"]))
    return rows


def scale_targets(rows: list[dict]) -> list[dict]:
    """The issue's three scale targets on the rows measured so far (each a bench target dict)."""
    out = []
    for r in rows:
        if r["name"] not in _FLUXMPI_PATHS or r["status"] != "ok":
            continue
        where = f"{r['nodes']} nodes, {r['tasks']} x {r['size']}-node"
        if r["tasks"] >= SLOPE_MIN_TASKS and r["overhead_slope"] is not None:
            out.append(_target("slope", where, r["name"], abs(r["overhead_slope"]), SLOPE_LIMIT,
                               f"overhead slope {r['overhead_slope'] * 1000:+.2f} ms/task (limit ±1 ms/task)"))
        if r.get("cpu_own_marginal") is not None:
            with_children = (f"; {r['cpu_marginal'] * 1000:.1f} ms with its children"
                             if r.get("cpu_marginal") is not None else "")
            out.append(_target("driver cpu", where, r["name"], r["cpu_own_marginal"], CPU_LIMIT,
                               f"{r['cpu_own_marginal'] * 1000:.1f} ms of the fluxmpi process's CPU per added task "
                               f"(limit 5 ms){with_children}"))
    top = max((r["nodes"] for r in rows), default=None)
    for r in rows:
        if r["name"] != "flux-jobs" or r["nodes"] != top:
            continue
        base = next((b for b in rows if b["name"] == "bare-flux" and (b["nodes"], b["tasks"], b["size"])
                     == (r["nodes"], r["tasks"], r["size"])), None)
        if base and base.get("throughput") and r.get("throughput"):
            value = base["throughput"] / r["throughput"]
            out.append(_target("tasks/s", f"{top} nodes, {r['tasks']} x {r['size']}-node", "flux-jobs", value,
                               THROUGHPUT_LIMIT, f"bare-flux {base['throughput']:.2f} / flux-jobs "
                               f"{r['throughput']:.2f} tasks/s = {value:.2f}x (limit 1.25x)"))
    return out


def _target(kind: str, where: str, name: str, value: float, limit: float, detail: str) -> dict:
    return {"target": kind, "workload": where, "name": name, "value": value, "limit": limit,
            "met": value <= limit, "detail": detail}


def render(doc: dict) -> str:
    plan = doc["plan"]
    lines = ["# fluxmpi bench: scale", "",
             f"Nodes {', '.join(map(str, plan['nodes']))}; tasks {', '.join(map(str, plan['tasks']))}; task sizes "
             f"{', '.join(map(str, plan['sizes']))} nodes x 1 rank; each rank sleeps {plan['sleep']:g} s. Times in "
             "seconds; driver CPU = this process and the children it reaped (Parsl's interchange, srun, flux "
             "clients): per task (the run's total over its tasks, start-up included) and per added task (against "
             "the next smaller task count); own = this process alone.", "",
             "| nodes | tasks | size | run | status | ok | overhead median | p95 | tasks/s | makespan ratio | "
             "slope ms/task | driver CPU ms/task | per added task | own per added task | placement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = report._f
    for r in doc["rows"]:
        placed = {True: "verified", False: "PROBLEMS", None: "-"}[r.get("placement_ok")]
        lines.append(f"| {r['nodes']} | {r['tasks']} | {r['size']} | {r['name']} | {r['status']} | {r['ok'] or '-'} | "
                     f"{f(r['overhead_median'])} | {f(r['overhead_p95'])} | {f(r['throughput'], 2)} | "
                     f"{f(r['makespan_ratio'], 2)} | {f(r['overhead_slope'], 2, 1000)} | "
                     f"{f(r['cpu_per_task'], 1, 1000)} | {f(r.get('cpu_marginal'), 1, 1000)} | "
                     f"{f(r.get('cpu_own_marginal'), 1, 1000)} | {placed} |")
    lines += ["", "## Targets", "", "| target | where | run | value | met |", "|---|---|---|---|---|"]
    for t in doc.get("targets", []):
        lines.append(f"| {t['target']} | {t['workload']} | {t['name']} | {t['detail']} | "
                     f"{'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


_COLORS = {"htex": "#4c72b0", "flux-jobs": "#dd8452", "bare-srun": "#55a868", "bare-flux": "#c44e52",
           "htex-mpiexec": "#8172b3", "static": "#937860", "flux": "#da8bc3", "bare-mpirun": "#8c8c8c"}
_STYLES = ("-", "--", ":", "-.")


def plot(doc: dict, path: Path) -> Path | None:
    """Four panels against the node count: overhead median, p95, tasks/s, driver CPU per task; a line per run
    and task count (colour: run, line style: task count), for the smallest task size."""
    rows = [r for r in doc["rows"] if r["status"] == "ok" and r["size"] == min(doc["plan"]["sizes"])]
    if not rows:
        return None
    fig = Figure(figsize=(12, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    panels = (("overhead_median", "overhead median (s)", 1), ("overhead_p95", "overhead p95 (s)", 1),
              ("throughput", "tasks/s", 1), ("cpu_own_marginal", "fluxmpi process CPU per added task (ms)", 1000))
    tasks = sorted({r["tasks"] for r in rows})
    for ax, (key, label, factor) in zip(axes, panels):
        for name in dict.fromkeys(r["name"] for r in rows):
            for i, t in enumerate(tasks):
                pts = sorted((r["nodes"], r[key] * factor) for r in rows
                             if r["name"] == name and r["tasks"] == t and r.get(key) is not None)
                if pts:
                    ax.plot(*zip(*pts), _STYLES[i % len(_STYLES)], marker="o", color=_COLORS.get(name, "#333333"),
                            label=f"{name}, {t} tasks")
        ax.set_xscale("log", base=2)
        ax.set_xticks(doc["plan"]["nodes"], [str(n) for n in doc["plan"]["nodes"]])
        ax.set_xlabel("nodes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"fluxmpi bench, scale: {min(doc['plan']['sizes'])}-node tasks sleeping {doc['plan']['sleep']:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
