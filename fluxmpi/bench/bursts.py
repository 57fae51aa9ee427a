"""The bursts workload: what idle blocks cost on an elastic cluster (`fluxmpi bench --workload bursts`).

A campaign rarely keeps its nodes busy: tasks come in bursts (a forecast cycle, a batch of images) with quiet
gaps between them. The bench runs the same bursts (BURSTS x TASKS one-size tasks that sleep, GAP seconds between
the end of one burst and the next) through the flux-jobs path twice:

- held: one block of all the nodes, kept for the whole campaign (flux-jobs' default, and what a hand-written
  allocation does);
- elastic: blocks of one task's nodes, up to as many as the nodes hold, each given back after IDLE_RELEASE
  idle seconds (fluxmpi.launch.scaling), so between bursts the nodes power down; the next burst brings blocks
  back.

Per variant it keeps the node-seconds the blocks held (paid, from the batch system: fluxmpi.usage), those the
tasks used, the idle share (target: under IDLE_TARGET for elastic), the node-seconds the nodes were powered up
(sinfo sampled every second: what a cloud bills, resume and SuspendTime included), and the makespan. Before
each variant it waits (bounded, with progress) for the nodes to power down, so both start cold. Files:
bursts.json, bursts.md, bursts.png (per variant: nodes held by blocks, busy with tasks, and powered up).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import slurm, usage
from ..errors import FluxmpiError
from ..mpiapp import mpi_app
from ..schedulers import client_for
from ..site import Site
from ..spec import MPITaskSpec
from . import report
from .warmth import POWER_DOWN_SLACK, power_saving, wait_powered_down

logger = logging.getLogger(__name__)

DEFAULT_BURSTS = 3
DEFAULT_TASKS = 8
DEFAULT_SLEEP = 60.0
DEFAULT_GAP = 60.0
DEFAULT_IDLE_RELEASE = 10.0
IDLE_TARGET = 0.15            # elastic: idle node-seconds under 15 % of those paid
SAMPLE_PERIOD = 1.0           # seconds between sinfo looks at which nodes are powered up
BURST_SLACK = 600.0           # seconds a burst may take beyond its own work (block start-up, resume delays)
LABEL = "flux_jobs"


class BurstsError(FluxmpiError, ValueError):
    """A bursts setting that cannot work: the message names the value and the fix."""


@dataclass(frozen=True)
class BurstPlan:
    bursts: int = DEFAULT_BURSTS
    tasks: int = DEFAULT_TASKS           # per burst
    task_nodes: int = 1
    sleep: float = DEFAULT_SLEEP
    gap: float = DEFAULT_GAP             # quiet seconds between bursts
    idle_release: float = DEFAULT_IDLE_RELEASE

    def check(self, nodes: int) -> None:
        for name, value in (("--bursts", self.bursts), ("--tasks", self.tasks), ("--nodes", self.task_nodes)):
            if value < 1:
                raise BurstsError(f"{name} {value} must be at least 1")
        for name, value in (("--sleep", self.sleep), ("--burst-gap", self.gap), ("--idle-release", self.idle_release)):
            if value <= 0:
                raise BurstsError(f"{name} {value:g} must be positive seconds")
        if self.task_nodes > nodes:
            raise BurstsError(f"--nodes {self.task_nodes}: a task would span more than the {nodes} nodes benchmarked")

    def waves(self, nodes: int) -> int:
        """Rounds of tasks a burst takes when every node is busy."""
        per_wave = max(1, nodes // self.task_nodes)
        return -(-self.tasks // per_wave)

    def walltime(self, nodes: int) -> int:
        """A block walltime that holds the whole campaign (the held variant keeps one block throughout)."""
        busy = self.bursts * (self.waves(nodes) * self.sleep + BURST_SLACK) + (self.bursts - 1) * self.gap
        return int(busy + 300)


def variants(site: Site, plan: BurstPlan) -> dict[str, dict]:
    """The flux-jobs options of each variant."""
    return {"held": {"nodes_per_block": site.nodes},
            "elastic": {"nodes_per_block": plan.task_nodes, "max_blocks": max(1, site.nodes // plan.task_nodes),
                        "idle_release": plan.idle_release}}


@mpi_app
def nap(seconds):
    return ["sleep", f"{seconds:g}"]


class PowerSampler:
    """Samples which of the partition's nodes are powered up (sinfo: not '~') every SAMPLE_PERIOD seconds, and
    keeps the blocks' spans (fluxmpi.usage.BlockSpans) of the job ids `job_ids()` gives."""

    def __init__(self, site: Site, job_ids: Callable[[], list[str]]):
        self.site, self.samples = site, []          # [(epoch, nodes powered up)]
        self.job_ids, self.spans = job_ids, usage.BlockSpans(client_for(site.scheduler))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fluxmpi-power-sampler")

    def __enter__(self) -> "PowerSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                proc = slurm.run_slurm(["sinfo", "-h", "-N", "-p", self.site.partition, "-o", "%N %T"],
                                       env=self.site.env, check=False)
                states = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
                self.samples.append((time.time(), sum(1 for s in states.values() if not s.endswith("~"))))
            except slurm.SlurmError as err:      # one slow sinfo: a gap in the samples, not a failed bench
                logger.info("power sampler: %s", err)
            self.spans.look(self.job_ids())
            self._stop.wait(SAMPLE_PERIOD)

    def node_seconds(self) -> float:
        return sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(self.samples, self.samples[1:]))


def run_variant(site: Site, plan: BurstPlan, name: str, options: dict, workdir: Path,
                log: Callable[[str], None]) -> dict:
    """One variant's campaign through flux-jobs; its node-seconds and timeline."""
    import parsl

    from ..configs import config

    spec = MPITaskSpec(nodes=plan.task_nodes, ranks_per_node=1)
    tasks, failed, job_ids, spans = [], [], [], []
    t0 = time.time()
    dfk = parsl.load(config("flux-jobs", site=site, run_dir=str(workdir / "runinfo"),
                            walltime=plan.walltime(site.nodes), **options))
    ex = dfk.executors[LABEL]
    with PowerSampler(site, lambda: [str(j) for j in list(ex.blocks_to_job_id.values())]) as sampler:
        try:
            bound = plan.waves(site.nodes) * plan.sleep + BURST_SLACK
            for burst in range(plan.bursts):
                began = time.time()
                futures = {nap(plan.sleep, spec=spec, name=f"b{burst}-{i}"): f"b{burst}-{i}"
                           for i in range(plan.tasks)}
                done, not_done = wait(futures, timeout=bound)
                for fut in done:
                    if fut.exception() is not None:
                        failed.append(f"{futures[fut]}: {fut.exception()}")
                    else:
                        r = fut.result()
                        tasks.append({"task": futures[fut], "nodes": plan.task_nodes, "t_launch": r["t_launch"],
                                      "t_done": r["t_done"]})
                failed += [f"{futures[f]}: not finished within {bound:.0f}s" for f in not_done]
                log(f"fluxmpi: bursts/{name}: burst {burst + 1}/{plan.bursts}: {len(done)}/{plan.tasks} tasks in "
                    f"{time.time() - began:.0f}s; {len(dfk.executors[LABEL].block_spans())} block(s) so far")
                if not_done:
                    break
                if burst + 1 < plan.bursts:
                    log(f"fluxmpi: bursts/{name}: quiet for {plan.gap:g}s")
                    time.sleep(plan.gap)
        finally:
            spans = ex.block_spans()
            job_ids = [str(j) for j in ex.blocks_to_job_id.values()]
            dfk.cleanup()
            parsl.clear()
    t_end = time.time()
    u = sampler.spans.usage(job_ids, [(t["nodes"], t["t_launch"], t["t_done"]) for t in tasks])
    return {"name": name, "options": options, "status": "failed" if failed else "ok", "failed": failed,
            "t_start": t0, "t_end": t_end, "makespan": t_end - t0, "tasks": tasks, "block_spans": spans,
            "usage": u.to_json(), "powered": sampler.samples, "powered_node_seconds": sampler.node_seconds()}


def run_bursts(site: Site, plan: BurstPlan, out: Path, log: Callable[[str], None], command: str = "") -> dict:
    """Both variants, one after the other, each from powered-down nodes; writes bursts.json, .md and .png."""
    plan.check(site.nodes)
    # A cluster whose nodes never power down is refused here: there would be nothing to give back to.
    suspend, suspend_timeout = power_saving(site, "--workload bursts")
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "site": site.name, "nodes": site.nodes,
           "plan": asdict(plan), "suspend_time": suspend, "runs": []}
    for name, options in variants(site, plan).items():
        wait_powered_down(site, log, suspend + suspend_timeout + POWER_DOWN_SLACK)
        log(f"fluxmpi: bursts/{name}: {plan.bursts} bursts of {plan.tasks} x {plan.task_nodes}-node tasks of "
            f"{plan.sleep:g}s, {plan.gap:g}s apart")
        try:
            run = run_variant(site, plan, name, options, out / name, log)
        except FluxmpiError as err:
            run = {"name": name, "options": options, "status": "failed", "failed": [str(err)]}
        doc["runs"].append(run)
        report.write_json(doc, out / "bursts.json")
    doc["target"] = check_target(doc)
    report.write_json(doc, out / "bursts.json")
    (out / "bursts.md").write_text(render(doc))
    plot(doc, out / "bursts.png")
    return doc


def check_target(doc: dict) -> dict:
    """Whether the elastic variant's idle share is under IDLE_TARGET."""
    elastic = next((r for r in doc["runs"] if r["name"] == "elastic" and r["status"] == "ok"), None)
    share = elastic["usage"]["idle_fraction"] if elastic else None
    return {"idle_limit": IDLE_TARGET, "elastic_idle_fraction": share,
            "met": share is not None and share < IDLE_TARGET}


def render(doc: dict) -> str:
    p = doc["plan"]
    lines = ["# fluxmpi bench: bursts", "",
             f"- command: `{doc['command']}`" if doc.get("command") else "- command: (library call)",
             f"- when: {doc['time']}; site {doc['site']}, {doc['nodes']} nodes, SuspendTime {doc['suspend_time']}s",
             f"- workload: {p['bursts']} bursts of {p['tasks']} x {p['task_nodes']}-node tasks of {p['sleep']:g}s, "
             f"{p['gap']:g}s apart; elastic blocks given back after {p['idle_release']:g}s idle",
             "", "| variant | status | blocks | paid node-s | used node-s | idle node-s | idle | powered-up node-s "
             "| makespan s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        u = r.get("usage") or {}
        ran = sum(1 for s in (u.get("blocks") or {}).values() if s["start"] is not None)
        share = u.get("idle_fraction")
        lines.append(f"| {r['name']} | {r['status']} | {ran} | {u.get('paid', 0):.0f} | {u.get('used', 0):.0f} | "
                     f"{u.get('idle', 0):.0f} | {'-' if share is None else f'{100 * share:.1f}%'} | "
                     f"{r.get('powered_node_seconds', 0):.0f} | {r.get('makespan', 0):.0f} |")
    t = doc.get("target") or {}
    if t:
        share = t["elastic_idle_fraction"]
        lines += ["", f"Target: elastic idle under {100 * t['idle_limit']:.0f}% of paid: "
                      f"{'-' if share is None else f'{100 * share:.1f}%'}, {'met' if t['met'] else 'NOT met'}."]
    for r in doc["runs"]:
        lines += [f"- {r['name']}: {f}" for f in r.get("failed", [])[:5]]
        missing = (r.get("usage") or {}).get("unaccounted")
        if missing:
            lines.append(f"- {r['name']}: blocks the batch system never listed (not in paid): {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def _steps(intervals: list[tuple[float, float, int]], t0: float) -> tuple[list[float], list[int]]:
    """A step curve of how many nodes the (start, end, nodes) intervals hold over time."""
    edges = sorted([(s, n) for s, _, n in intervals] + [(e, -n) for _, e, n in intervals])
    xs, ys, level = [0.0], [0], 0
    for t, dn in edges:
        xs.append(t - t0)
        ys.append(level)
        level += dn
        xs.append(t - t0)
        ys.append(level)
    return xs, ys


def plot(doc: dict, path: Path) -> Path | None:
    runs = [r for r in doc["runs"] if r.get("usage")]
    if not runs:
        return None
    fig = Figure(figsize=(10, 2.8 * len(runs)))
    FigureCanvasAgg(fig)
    for i, r in enumerate(runs, 1):
        ax = fig.add_subplot(len(runs), 1, i)
        t0, now = r["t_start"], r["t_end"]
        blocks = [(s["start"], s["end"] or now, s["nodes"]) for s in r["usage"]["blocks"].values()
                  if s["start"] is not None]
        busy = [(t["t_launch"], t["t_done"], t["nodes"]) for t in r["tasks"]]
        if r.get("powered"):
            ax.step([t - t0 for t, _ in r["powered"]], [n for _, n in r["powered"]], where="post",
                    color="0.6", label="nodes powered up")
        ax.plot(*_steps(blocks, t0), color="tab:red", label="nodes held by blocks (paid)")
        ax.fill_between(*_steps(busy, t0), step=None, color="tab:green", alpha=0.4, label="nodes busy with tasks")
        share = r["usage"]["idle_fraction"]
        ax.set_title(f"{r['name']}: paid {r['usage']['paid']:.0f} node-s, used {r['usage']['used']:.0f}, idle "
                     f"{'-' if share is None else f'{100 * share:.0f}%'}", fontsize=9)
        ax.set_ylabel("nodes")
        ax.set_ylim(0, doc["nodes"] + 0.5)
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("seconds since the variant started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
