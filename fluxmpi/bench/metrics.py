"""Per-task and per-run figures from raw timestamps. Pure functions: no cluster, no files.

A task's raw record (a dict, epoch seconds, None when unknown):
  submitted  the driver handed the task to the launch path (Parsl app call, srun loop queue, flux submit)
  admitted   the path's own queue let it go (fluxmpi's node gate / the srun loop; None where the executor queues)
  launched   the launcher started on the worker (`run_mpi_task`'s t_launch; srun spawned; Flux t_run)
  rank_started  earliest `t_start` of its ranks (a rank process is running, before MPI_Init)
  started    earliest `t_init` of its ranks (first MPI_Init returned)
  ended      latest `t_end` of its ranks (last rank done, after MPI_Finalize)
  done       the launcher exited (t_done; srun exit; Flux t_cleanup)
  returned   the driver saw the result
plus task, index, nodes_req, ranks_per_node, nodes (hosts its ranks ran on), ok, error.

Derived (see docs/benchmarks.md):
  ready     = max(submitted, the last `ended` of an earlier task on any of its nodes): when it could have started
  wait      = ready - submitted                  (waiting for nodes: the workload's doing, not the path's)
  run       = ended - started                    (the MPI program itself)
  overhead  = (returned - ready) - run           = start latency (started - ready) + return latency (returned - ended)
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Iterable, Sequence

from ..launch.gate import pick_next

logger = logging.getLogger(__name__)

TIME_KEYS = ("submitted", "admitted", "launched", "rank_started", "started", "ended", "done", "returned")
REQUIRED_TIMES = ("submitted", "started", "ended", "returned")
# Components of the overhead, in the order they happen; their sum is the overhead when all are known.
COMPONENTS = ("admit", "dispatch", "spawn", "wireup", "teardown", "result")
COMPONENT_HELP = {
    "admit": "ready -> admitted: the driver's own queue (fluxmpi's node gate waits for the previous result)",
    "dispatch": "admitted -> launched: executor or scheduler hands the task to its launcher",
    "spawn": "launched -> first rank process running: the launcher starts ranks on every node",
    "wireup": "first rank process -> first MPI_Init returned",
    "teardown": "last rank ended -> launcher exited",
    "result": "launcher exited -> the driver has the result",
}


# The start-up, from the run's start to its first result, split at these stamps (each run records what it has):
#   granted       the allocation runs: the first block's Slurm StartTime (whole seconds), or salloc returned
#   ready         a worker pool or Flux instance took the run's first task (the compile task began on a node)
#   compiled      the compile task's result was back with the driver
#   first_launch  the first MPI task's launcher started
STARTUP_MARKS = ("granted", "ready", "compiled", "first_launch")
STARTUP_PARTS = ("allocation", "pool", "compile", "dispatch", "first_task")
STARTUP_HELP = {
    "allocation": "start -> the allocation runs (sbatch/salloc, Slurm scheduling, node boot on an elastic cluster)",
    "pool": "-> a worker pool or Flux instance runs the first task (for the bare loops: nothing to start)",
    "compile": "-> the compile task's result is back (compiling the C app on a compute node)",
    "dispatch": "-> the first MPI task's launcher starts",
    "first_task": "-> the first result (the task's own run and its return)",
}


def startup_parts(t_start: float | None, stamps: dict, t_first_result: float | None) -> dict:
    """Seconds of each start-up part (STARTUP_PARTS); a missing stamp merges its part into the next one (None
    for it), and a stamp earlier than the one before it (Slurm's whole seconds) counts as that one."""
    out: dict = {p: None for p in STARTUP_PARTS}
    if t_start is None or t_first_result is None:
        return out
    prev = t_start
    for part, mark in zip(STARTUP_PARTS, [*STARTUP_MARKS, None]):
        t = t_first_result if mark is None else stamps.get(mark)
        if t is None:
            continue
        t = min(max(t, prev), t_first_result)
        out[part], prev = t - prev, t
    return out


def startup_medians(rounds: dict[str, list[dict]], baseline_of: dict[str, str]) -> dict[str, dict]:
    """{run: its start-up over the rounds}: rounds maps a run's name to one {"startup", "startup_parts"} per round
    (rounds where it had no first result left out); the median start-up and of each part, the range, and the
    median's ratio to its baseline's median."""
    out = {}
    for name, seen in rounds.items():
        ups = [r["startup"] for r in seen if r.get("startup") is not None]
        if not ups:
            continue
        parts = {p: median(v for r in seen if r.get("startup") is not None
                           and (v := (r.get("startup_parts") or {}).get(p)) is not None) for p in STARTUP_PARTS}
        out[name] = {"rounds": len(ups), "startup": median(ups), "min": min(ups), "max": max(ups), "parts": parts}
    for name, m in out.items():
        base = out.get(baseline_of.get(name) or "")
        m["baseline"] = baseline_of.get(name)
        m["vs_baseline"] = ratio(m["startup"], base["startup"]) if base else None
    return out


def complete(task: dict) -> bool:
    """A task that ran: ok, every required timestamp present and in order (submitted <= started <= ended)."""
    if not task.get("ok"):
        return False
    if any(task.get(k) is None for k in REQUIRED_TIMES):
        return False
    return task["submitted"] <= task["started"] <= task["ended"] <= task["returned"]


def timing_problems(task: dict) -> list[str]:
    """What is missing or out of order in one task's timestamps (empty when fine)."""
    problems = [f"no {k}" for k in REQUIRED_TIMES if task.get(k) is None]
    if problems:
        return problems
    order = [k for k in TIME_KEYS if task.get(k) is not None]
    chain = [("submitted", "started"), ("started", "ended"), ("ended", "returned"),
             ("rank_started", "started"), ("submitted", "launched")]
    return [f"{a} {task[a]:.6f} after {b} {task[b]:.6f}" for a, b in chain
            if a in order and b in order and task[a] > task[b]]


def ready_times(tasks: Sequence[dict]) -> list[float | None]:
    """For each task: max(submitted, when its nodes were last freed by another task's ranks before it started)."""
    ends_on: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for i, t in enumerate(tasks):
        if t.get("ended") is not None:
            for node in t.get("nodes") or ():
                ends_on[node].append((t["ended"], i))
    out: list[float | None] = []
    for i, t in enumerate(tasks):
        if t.get("started") is None or t.get("submitted") is None:
            out.append(None)
            continue
        freed = [e for node in t.get("nodes") or () for e, j in ends_on[node] if j != i and e <= t["started"]]
        out.append(max([t["submitted"], *freed]))
    return out


def task_figures(tasks: Sequence[dict]) -> list[dict]:
    """Derived per-task figures (seconds) for the complete tasks, in the input order."""
    ready = ready_times(tasks)
    done = [(t, r) for t, r in zip(tasks, ready) if complete(t)]
    usable = usable_stamps(done)
    rows = []
    for t, r in done:
        row = {"task": t["task"], "index": t["index"], "nodes": t["nodes_req"], "ready": r,
               "wait": r - t["submitted"], "run": t["ended"] - t["started"],
               "start_latency": t["started"] - r, "return_latency": t["returned"] - t["ended"]}
        row["overhead"] = row["start_latency"] + row["return_latency"]
        row.update(_components(t, r, usable))
        rows.append(row)
    return rows


def usable_stamps(done: Sequence[tuple[dict, float]]) -> set[str]:
    """The optional stamps that sit in order for every (task, ready) of a run. One out-of-order task (e.g. the
    Flux path's rank 0 launching after another rank already runs) drops that stamp for the whole run, so each
    overhead component means the same for every task of a run."""
    usable = set()
    if done and all(t.get("rank_started") is not None and r <= t["rank_started"] <= t["started"] for t, r in done):
        usable.add("rank_started")

    def upper(t):
        return t["rank_started"] if "rank_started" in usable else t["started"]
    if done and all(t.get("launched") is not None and r <= t["launched"] <= upper(t) for t, r in done):
        usable.add("launched")

    def after_admit(t):
        return t["launched"] if "launched" in usable else upper(t)
    if done and all(t.get("admitted") is not None and max(t["admitted"], r) <= after_admit(t) for t, r in done):
        usable.add("admitted")
    if done and all(t.get("done") is not None and t["ended"] <= t["done"] <= t["returned"] for t, _ in done):
        usable.add("done")
    return usable


def _components(t: dict, ready: float, usable: set[str]) -> dict:
    """Split the overhead at the stamps the run records; an unusable stamp merges its two neighbours."""
    # Handed over before its nodes were free: the executor held it, so admission cost nothing here.
    marks = [("admit", max(t["admitted"], ready) if "admitted" in usable else None),
             ("dispatch", t["launched"] if "launched" in usable else None),
             ("spawn", t["rank_started"] if "rank_started" in usable else None),
             ("wireup", t["started"])]
    out: dict = {}
    prev = ready
    for name, mark in marks:
        out[name] = None if mark is None else mark - prev
        prev = mark if mark is not None else prev
    done = t["done"] if "done" in usable else None
    out["teardown"] = None if done is None else done - t["ended"]
    out["result"] = t["returned"] - (done if done is not None else t["ended"])
    return out


# ---- statistics ------------------------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q!r} must be within 0..100")
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float | None:
    return percentile(values, 50)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than 3 points or no spread in xs."""
    if len(xs) != len(ys):
        raise ValueError(f"slope needs as many xs as ys, got {len(xs)} and {len(ys)}")
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def slope_stderr(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Standard error of the least-squares slope (how much of a slope is noise); None with fewer than 3 points."""
    b = slope(xs, ys)
    if b is None:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    residual = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return math.sqrt(residual / (n - 2) / sxx)


# ---- schedule bounds -------------------------------------------------------------------------------------

def lower_bound(sizes: Sequence[int], runs: Sequence[float], nodes: int) -> float:
    """No schedule on `nodes` nodes can finish sooner: max(total node-seconds / nodes, the longest task)."""
    if nodes < 1:
        raise ValueError(f"nodes={nodes!r} must be at least 1")
    if not runs:
        return 0.0
    return max(sum(s * r for s, r in zip(sizes, runs)) / nodes, max(runs))


def packed_makespan(sizes: Sequence[int], runs: Sequence[float], nodes: int,
                    policy: str = "largest-first") -> float:
    """Makespan with zero overhead under the node gate's admission policy (fluxmpi.launch.gate.pick_next):
    the packing loss alone."""
    if any(s > nodes for s in sizes):
        raise ValueError(f"a task of {max(sizes)} nodes cannot run on {nodes} nodes")
    waiting = list(range(len(sizes)))
    running: list[tuple[float, int]] = []   # (end time, size)
    now, free = 0.0, nodes
    while waiting or running:
        while (k := pick_next([sizes[i] for i in waiting], free, policy)) is not None:
            i = waiting.pop(k)
            free -= sizes[i]
            running.append((now + runs[i], sizes[i]))
        if not running:
            break
        running.sort()
        now = running[0][0]
        while running and running[0][0] <= now:
            free += running.pop(0)[1]
    return now


# ---- per run -----------------------------------------------------------------------------------------------

def summarize(tasks: Sequence[dict], nodes: int, t_start: float | None = None,
              t_first_result: float | None = None) -> dict:
    """Figures of one run of one workload on `nodes` nodes (see the module docstring and docs/benchmarks.md)."""
    rows = task_figures(tasks)
    ok = [t for t in tasks if complete(t)]
    out: dict = {"tasks": len(tasks), "ok": len(ok), "failed": len(tasks) - len(ok), "nodes": nodes}
    out["startup"] = None if t_start is None or t_first_result is None else t_first_result - t_start
    if not rows:
        return out
    overheads = [r["overhead"] for r in rows]
    out.update({
        "overhead_median": median(overheads),
        "overhead_p95": percentile(overheads, 95),
        "overhead_mean": sum(overheads) / len(overheads),
        "start_latency_median": median(r["start_latency"] for r in rows),
        "return_latency_median": median(r["return_latency"] for r in rows),
        "run_median": median(r["run"] for r in rows),
        "wait_median": median(r["wait"] for r in rows),
    })
    # From the launcher's start to its end (the task body's own stamps): what a rank wrapper adds shows here.
    launched = [t["done"] - t["launched"] for t in ok if t.get("done") is not None and t.get("launched") is not None]
    out["launch_to_done_median"] = median(launched) if launched else None
    # Means, not medians: the means of the components add up to the mean overhead.
    out["components_mean"] = {c: (None if rows[0][c] is None else sum(r[c] for r in rows) / len(rows))
                              for c in COMPONENTS}
    sizes = [r["nodes"] for r in rows]
    runs = [r["run"] for r in rows]
    first = min(t["submitted"] for t in ok)
    makespan = max(t["returned"] for t in ok) - first
    node_seconds = sum(s * r for s, r in zip(sizes, runs))
    bound = lower_bound(sizes, runs, nodes)
    packed = packed_makespan(sizes, runs, nodes)
    slope_s = slope([r["index"] for r in rows], overheads)
    slope_se = slope_stderr([r["index"] for r in rows], overheads)
    out.update({
        "makespan": makespan,
        "lower_bound": bound,
        "makespan_ratio": makespan / bound if bound > 0 else None,
        "packed_makespan": packed,
        "packing_ratio": packed / bound if bound > 0 else None,
        "utilization": node_seconds / (nodes * makespan) if makespan > 0 else None,
        "throughput": len(ok) / makespan if makespan > 0 else None,
        "overhead_slope": slope_s,
        "overhead_slope_se": slope_se,
        # How much the fitted line rises from the first task to the last, relative to the median overhead.
        "overhead_growth": (slope_s * (max(r["index"] for r in rows) - min(r["index"] for r in rows))
                            / out["overhead_median"]) if slope_s is not None and out["overhead_median"] else None,
    })
    return out


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference
