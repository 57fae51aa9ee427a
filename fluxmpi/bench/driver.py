"""Run every selected launch path and baseline on every workload, on the same nodes, one after the other.

A path that cannot run here is kept as a row with its reason (unavailable / not applicable), never dropped;
a run that breaks is kept with what broke. Results go to OUT/results.json, OUT/results.md and OUT/*.png.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .. import __version__
from .. import warm as holds
from ..container import COMMANDS, Container, ContainerError
from ..errors import FluxmpiError
from ..launch.paths import PATHS
from ..mpi_apps import app_command, compile_c_app
from ..mpiapp import MPICommand
from ..runner import RunError, RunResult, run_tasks
from ..site import Site
from ..spec import MPITaskSpec, SpecError
from . import metrics, plots, report, targets, warmth
from .baselines import (
    BASELINES,
    BaselineError,
    flux_unavailable_reason,
    run_bare_flux,
    run_bare_mpirun,
    run_bare_srun,
)
from .records import RawRun, fill_from_records, new_task
from .workload import Workload

logger = logging.getLogger(__name__)

BENCH_PATHS = ("htex", "htex-mpiexec", "static", "flux", "flux-jobs")
# The user-app path: the same app run as a user's own command (`fluxmpi run -- CMD`), each rank behind the rank
# wrapper that records its placement, so the wrapper's cost shows against the path and its bare baseline.
WRAP_SUFFIX = "+wrap"
WRAPPED = ("htex" + WRAP_SUFFIX, "flux-jobs" + WRAP_SUFFIX)
# The same user-app rows with every rank inside the image of `--container RUNTIME:IMAGE` (ch-run after the
# launcher and the rank wrapper): set against their +wrap row, the image's cost per task.
CTR_SUFFIX = "+ctr"
CONTAINED = ("htex" + CTR_SUFFIX, "flux-jobs" + CTR_SUFFIX)
NAMES = BENCH_PATHS + WRAPPED + CONTAINED + BASELINES
BASELINE_OF = {"htex": "bare-srun", "htex-mpiexec": "bare-mpirun", "static": "bare-srun", "flux": "bare-flux",
               "flux-jobs": "bare-flux", "htex+wrap": "bare-srun", "flux-jobs+wrap": "bare-flux",
               "htex+ctr": "bare-srun", "flux-jobs+ctr": "bare-flux"}
# Each path runs right after its baseline, so both see the same machine load.
ORDER = ("bare-srun", "htex", "htex+wrap", "htex+ctr", "static", "bare-mpirun", "htex-mpiexec", "bare-flux",
         "flux-jobs", "flux-jobs+wrap", "flux-jobs+ctr", "flux")
IDLE_TIMEOUT = 60.0


class BenchError(FluxmpiError, ValueError):
    """Bad bench input (unknown path name, no nodes); the message names the value and the fix."""


def parse_names(text: str | None, container: bool = False) -> list[str]:
    """`--paths htex,flux,bare-srun` -> names in run order; None or "all" -> every path and baseline (the +ctr
    rows only when the bench has an image: `container`)."""
    if text is None or text.strip() == "all":
        return [n for n in ORDER if container or not n.endswith(CTR_SUFFIX)]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise BenchError(f"--paths {text!r}: {', '.join(unknown) or 'empty'} not known; choose from "
                         f"{', '.join(ORDER)} (comma separated) or 'all'")
    boxed = [n for n in names if n.endswith(CTR_SUFFIX)]
    if boxed and not container:
        raise BenchError(f"--paths {','.join(boxed)}: these rows run inside an image: give --container "
                         "RUNTIME:IMAGE (e.g. charliecloud:/var/tmp/bookworm-openmpi)")
    return [n for n in ORDER if n in names]


def _path_of(name: str) -> str:
    """The launch path a row runs: htex+wrap and htex+ctr run htex."""
    return name.removesuffix(WRAP_SUFFIX).removesuffix(CTR_SUFFIX)


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run on this machine at all, or None."""
    name = _path_of(name)
    if name == "flux" and "flux" not in PATHS:
        return "flux path not implemented"
    if name in ("flux", "flux-jobs", "bare-flux"):
        return flux_unavailable_reason()
    if name in ("htex", "static", "bare-srun") and not _which("srun"):
        return "srun is not on PATH: not a Slurm login node"
    if name in ("htex-mpiexec", "bare-mpirun") and not _which("mpirun"):
        return "mpirun (Open MPI) is not on PATH"
    return None


def not_applicable_reason(name: str, workload: Workload) -> str | None:
    if _path_of(name) == "static" and workload.mixed_sizes:
        return "not applicable: mixed sizes (static blocks run one task size)"
    return None


def _which(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def run_bench(site: Site, workloads: list[Workload], names: list[str], out_dir: Path, *,
              task_timeout: float = 600, run_timeout: float = 3600, progress: bool = True,
              command: str = "", log: Callable[[str], None] = print, warm: int | None = None,
              compare_warm: bool = False, container: Container | None = None, rounds: int = 1) -> dict:
    """Run everything, write the outputs, return the bench document (what results.json holds).

    warm: each launch path run gets its own warm hold on this many nodes, handed over right before its blocks
    are submitted (rows "PATH+warm"). compare_warm: each path runs cold, then warm, both from powered-down
    nodes (bench/warmth.py), so their time to first result compares. container: the image the +ctr rows run
    their ranks in. rounds: every run is made this many times, in rounds (each path right after its baseline in
    every round); the rows, plots and targets are the first round's, except start-up, taken as the median of the
    rounds (entry["startup_rounds"], entry["startup_median"])."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BenchError(f"--rounds {rounds!r} must be a whole number of at least 1")
    if not workloads:
        raise BenchError("no workloads to run")
    boxed = [n for n in names if n.endswith(CTR_SUFFIX)]
    if boxed and container is None:
        raise BenchError(f"{', '.join(boxed)} run inside an image: give container=Container(...) "
                         "(--container RUNTIME:IMAGE)")
    for wl in workloads:
        wl.check_fits(site.nodes, site.cores_per_node)
    if compare_warm and warm is None:
        raise BenchError("--compare-warm compares runs with and without --warm N: give --warm N too")
    if warm is not None:
        holds.check_warm_nodes(warm, site.nodes, f"the bench's node count ({site.name})")
    # Before anything runs: a cold start needs nodes that power down, and a bound on waiting for that.
    power_timeout = sum(warmth.power_saving(site)) + warmth.POWER_DOWN_SLACK if compare_warm else None
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    site.apply_env()
    bench = {
        "fluxmpi_bench": 1, "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "cpus": os.cpu_count(), "versions": _versions(),
        "site": {"name": site.name, "partition": site.partition, "nodes": site.nodes,
                 "cores_per_node": site.cores_per_node},
        "names": names, "workloads": [],
        "warm": {"nodes": warm, "compare": compare_warm},
        "container": container.to_dict() if container is not None else None, "rounds": rounds,
    }
    for wl in workloads:
        log(f"fluxmpi: workload {wl.describe()}")
        entry = {"workload": wl.to_dict(), "description": wl.describe(), "runs": []}
        bench["workloads"].append(entry)
        for round_no in range(1, rounds + 1):
            if rounds > 1:
                log(f"fluxmpi: {wl.name}: round {round_no} of {rounds}")
            for name in names:
                kind = "baseline" if name in BASELINES else "path"
                for hold_nodes in warmth.variants(name, kind, warm, compare_warm):
                    row = name + (warmth.WARM_SUFFIX if hold_nodes else "")
                    where = out_dir / "runs" / wl.name / (row if round_no == 1 else f"{row}.round{round_no}")
                    raw = _run_one(name, site, wl, where, task_timeout=task_timeout, run_timeout=run_timeout,
                                   progress=progress, log=log, warm=hold_nodes,
                                   cold_start=power_timeout if kind == "path" else None,
                                   container=container if name.endswith(CTR_SUFFIX) else None)
                    raw.name = row
                    if round_no == 1:
                        entry["runs"].append(raw.to_json())
                    if rounds > 1:
                        s = raw.summary or {}
                        entry.setdefault("startup_rounds", {}).setdefault(row, []).append(
                            {"round": round_no, "status": raw.status, "startup": s.get("startup"),
                             "startup_parts": s.get("startup_parts")})
                    report.write_json(bench, out_dir / "results.json")   # keep what finished if a later run breaks
        _compare_with_baselines(entry)
        if rounds > 1:
            entry["startup_median"] = metrics.startup_medians(
                entry["startup_rounds"], {r["name"]: r.get("baseline") for r in entry["runs"]})
    bench["targets"] = targets.evaluate(bench)
    report.write_json(bench, out_dir / "results.json")
    (out_dir / "results.md").write_text(report.render_markdown(bench))
    bench["plots"] = [str(p) for p in plots.write_all(bench, out_dir)]
    report.write_json(bench, out_dir / "results.json")
    return bench


def _run_one(name: str, site: Site, wl: Workload, workdir: Path, *, task_timeout: float, run_timeout: float,
             progress: bool, log, warm: int | None = None, cold_start: float | None = None,
             container: Container | None = None) -> RawRun:
    kind = "baseline" if name in BASELINES else "path"
    reason = unavailable_reason(name)
    if not reason and container is not None and not _which(COMMANDS[container.runtime]):
        reason = f"{COMMANDS[container.runtime]} ({container.runtime}) is not on PATH"
    if reason:
        log(f"fluxmpi: {wl.name}/{name}: unavailable: {reason}")
        return RawRun(name, kind, "unavailable", reason=reason, baseline=BASELINE_OF.get(name))
    reason = not_applicable_reason(name, wl)
    if reason:
        log(f"fluxmpi: {wl.name}/{name}: {reason}")
        return RawRun(name, kind, "not applicable", reason=reason, baseline=BASELINE_OF.get(name))
    # cold_start: wait (at most that many seconds) for powered-down nodes, so warm and cold runs compare.
    powered_down = warmth.wait_powered_down(site, log, cold_start) if cold_start is not None else None
    _wait_for_idle_nodes(site, log)
    workdir.mkdir(parents=True, exist_ok=True)
    t_begin = time.time()
    cpu_before = _cpu_now()
    hold = None
    with tqdm(total=wl.tasks, desc=f"{wl.name}/{name}", unit="task", file=sys.stderr,
              disable=not progress, leave=True) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
        try:
            if name == "bare-srun":
                raw = run_bare_srun(site, wl, workdir, task_timeout=task_timeout, run_timeout=run_timeout,
                                    on_progress=on_progress)
            elif name == "bare-mpirun":
                raw = run_bare_mpirun(site, wl, workdir, task_timeout=task_timeout, run_timeout=run_timeout,
                                      on_progress=on_progress)
            elif name == "bare-flux":
                raw = run_bare_flux(site, wl, workdir, task_timeout=task_timeout, run_timeout=run_timeout,
                                    on_progress=on_progress)
            else:
                own = user_commands(wl, workdir) if name.endswith((WRAP_SUFFIX, CTR_SUFFIX)) else {}
                specs = [replace(s, container=container) for s in wl.specs()] if container else wl.specs()
                with warmth.holding(warm, site, log) as hold:
                    result = run_tasks(_path_of(name), site, specs, app="c", workdir=workdir,
                                       task_timeout=task_timeout, run_timeout=run_timeout, on_progress=on_progress,
                                       before_load=(lambda: hold.hand_over(log=log)) if hold else None,
                                       **(own or wl.app_work()))
                raw = from_run_result(result)
                if warm is not None or cold_start is not None:
                    raw.warm = warmth.describe(hold, powered_down, raw.t_start)
                if hold:   # the workflow started when its hold was submitted: time to first result counts from there
                    raw.t_start = min(raw.t_start, hold.submitted)
        except (RunError, BaselineError, SpecError, ContainerError) as err:
            return _broken(name, kind, str(err), workdir, t_begin, wl, log)
        except Exception as err:  # noqa: BLE001 - one broken path must not lose the other paths' results
            return _broken(name, kind, f"{type(err).__name__}: {err}", workdir, t_begin, wl, log)
    raw.baseline = BASELINE_OF.get(name)
    now = _cpu_now()
    raw.cpu = {"self": now[0] - cpu_before[0], "children": now[1] - cpu_before[1]}
    raw.summary = metrics.summarize(raw.tasks, site.nodes, raw.t_start, raw.t_first_result)
    raw.summary["startup_parts"] = metrics.startup_parts(raw.t_start, raw.startup, raw.t_first_result)
    s = raw.summary
    log(f"fluxmpi: {wl.name}/{name}{warmth.WARM_SUFFIX if warm else ''}: {raw.status}, {s['ok']}/{s['tasks']} ok, "
        f"start-up {_fmt(s.get('startup'))} s, overhead median "
        f"{_fmt(s.get('overhead_median'))} s, makespan {_fmt(s.get('makespan'))} s"
        + (f" ({raw.reason})" if raw.reason else ""))
    return raw


def user_commands(wl: Workload, workdir: Path) -> dict:
    """run_tasks' arguments that run the bench's C app as a user's own command (behind the rank wrapper).

    Built here, before the run, as a user's program is: so a +wrap row's start-up has no compile task in it."""
    binary = compile_c_app(workdir / "bin")
    # The app prints its own record on stdout (into the task's .out file); the wrapper's records are the proof.
    argv = app_command("c", task="user-app", out_dir=None, c_binary=binary, **wl.app_work())
    return {"commands": [MPICommand(tuple(argv))] * len(wl.specs())}


def _broken(name: str, kind: str, reason: str, workdir: Path, t_begin: float, wl: Workload, log) -> RawRun:
    log(f"fluxmpi: {wl.name}/{name}: failed: {reason}")
    return RawRun(name, kind, "failed", reason=reason, baseline=BASELINE_OF.get(name), workdir=str(workdir),
                  t_start=t_begin, t_end=time.time())


def from_run_result(result: RunResult) -> RawRun:
    """A launch path's RunResult as a RawRun: the runner's timestamps plus the ranks' own."""
    tasks = []
    for i, o in enumerate(result.tasks):
        t = new_task(i, o.task, MPITaskSpec.from_dict(o.spec), o.submitted)
        info = o.result if isinstance(o.result, dict) else {}
        t.update(admitted=o.admitted, launched=info.get("t_launch"), done=info.get("t_done"),
                 returned=o.returned, ok=o.ok, error=o.error)
        tasks.append(t)
    fill_from_records(tasks, Path(result.workdir) / "records")
    launched = [t["launched"] for t in tasks if t.get("launched") is not None]
    startup = {"granted": result.t_block_started, "ready": result.t_compile_began, "compiled": result.t_compiled,
               "first_launch": min(launched) if launched else None}
    status = "ok" if result.ok else "failed"
    reason = ""
    if not result.ok:
        failed = result.failed
        reason = (f"{len(failed)} task(s) failed, first: {failed[0].error}" if failed
                  else "placement check failed")
    return RawRun(result.path, "path", status, reason=reason, workdir=result.workdir, t_start=result.t_start,
                  t_ready=result.t_loaded, t_first_result=result.t_first_result, t_end=result.t_end, tasks=tasks,
                  placement_ok=result.placement_ok, placement_report=result.placement_report, startup=startup)


def _compare_with_baselines(entry: dict) -> None:
    runs = {r["name"]: r for r in entry["runs"]}
    for r in entry["runs"]:
        base = runs.get(r.get("baseline") or "")
        if r["summary"] and base and base["summary"]:
            r["summary"]["overhead_vs_baseline"] = metrics.ratio(r["summary"].get("overhead_median"),
                                                                 base["summary"].get("overhead_median"))
            r["summary"]["startup_vs_baseline"] = metrics.ratio(r["summary"].get("startup"),
                                                                base["summary"].get("startup"))
        # A user-app row against its path on the same workload: the rank wrapper's cost per task.
        plain = runs.get(r["name"].removesuffix(WRAP_SUFFIX)) if r["name"].endswith(WRAP_SUFFIX) else None
        mine, theirs = (r.get("summary") or {}), ((plain or {}).get("summary") or {})
        if mine.get("launch_to_done_median") is not None and theirs.get("launch_to_done_median") is not None:
            mine["wrapper_cost"] = mine["launch_to_done_median"] - theirs["launch_to_done_median"]
        if r["name"].endswith(CTR_SUFFIX):
            container_cost(r.get("summary"), (runs.get(_path_of(r["name"]) + WRAP_SUFFIX) or {}).get("summary"))


def container_cost(boxed: dict | None, bare: dict | None) -> None:
    """Set a +ctr row's image cost against its +wrap row (the same user command, no image).

    The rank wrapper stays on the host and times the command it starts, so the runtime's start and end fall in
    each rank's run (ended - started) rather than in the path's overhead: the cost per task is the difference
    of the median runs, and the overhead with the image counts it in: overhead + cost, against the +wrap
    row's overhead (the target: within 10% for Charliecloud)."""
    if not boxed or not bare or boxed.get("run_median") is None or bare.get("run_median") is None:
        return
    boxed["container_cost"] = boxed["run_median"] - bare["run_median"]
    if boxed.get("overhead_median") is not None:
        boxed["overhead_with_image"] = boxed["overhead_median"] + boxed["container_cost"]
        boxed["container_overhead_ratio"] = metrics.ratio(boxed["overhead_with_image"], bare.get("overhead_median"))


def _wait_for_idle_nodes(site: Site, log) -> None:
    """Start each run on idle nodes: the previous run's blocks may still be completing in Slurm."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(["sinfo", "-h", "-p", site.partition, "-t", "idle", "-o", "%D"],
                                 capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return
        if sum(int(x) for x in out.split() if x.isdigit()) >= site.nodes:
            return
        time.sleep(0.5)
    log(f"fluxmpi: fewer than {site.nodes} nodes of {site.partition!r} idle after {IDLE_TIMEOUT:.0f}s; "
        "starting anyway (the run's start-up will include the wait)")


def _versions() -> dict:
    import parsl

    flux = None
    try:
        out = subprocess.run(["flux", "version"], capture_output=True, text=True, timeout=20).stdout
        flux = next((line.split()[-1] for line in out.splitlines() if line.startswith("libflux-core")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"fluxmpi": __version__, "parsl": parsl.__version__, "flux-core": flux, "python": platform.python_version()}


def _cpu_now() -> tuple[float, float]:
    """(CPU s of this process's threads, CPU s of its children reaped so far: Parsl's interchange, srun, ssh)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), kids.ru_utime + kids.ru_stime


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def bench_site(site: Site, nodes: int | None) -> Site:
    """The site restricted to the `nodes` the benchmark uses (all of them when None)."""
    if nodes is None:
        return site
    if nodes < 1 or nodes > site.nodes:
        raise BenchError(f"--cluster-nodes {nodes} must be within 1..{site.nodes} (the nodes of {site.name})")
    return replace(site, nodes=nodes)
