"""One run: load a launch path's Parsl config, compile the app on the cluster, run the tasks, check placements.

Every wait is bounded and says what it waited for; finished tasks' records are kept whatever happens after.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import parsl

from . import placement
from .apps import compile_app, run_mpi_task
from .launch.gate import NodeGate
from .launch.paths import LaunchPath, get_path
from .mpi_apps import app_command
from .site import Site
from .spec import MPITaskSpec

COMPILE_TIMEOUT = 300.0
CLEANUP_TIMEOUT = 60.0


class RunError(RuntimeError):
    """The run could not proceed (blocks never started, compile failed); the message says what and where."""


@dataclass
class TaskOutcome:
    task: str
    spec: dict
    submitted: float
    returned: float | None = None
    ok: bool = False
    error: str | None = None
    result: dict | None = None
    admitted: float | None = None       # handed to the executor (after the node gate, if the path has one)


@dataclass
class RunResult:
    path: str
    site: str
    workdir: str
    t_start: float
    t_loaded: float
    t_compiled: float | None
    t_first_result: float | None
    t_end: float
    tasks: list[TaskOutcome] = field(default_factory=list)
    placement_ok: bool = False
    placement_report: str = ""

    @property
    def failed(self) -> list[TaskOutcome]:
        return [t for t in self.tasks if not t.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and self.placement_ok

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def default_workdir(path: str) -> Path:
    return Path.cwd() / "fluxmpi-runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{path}"


def _python_app(fn: Callable, label: str):
    return parsl.python_app(fn, executors=[label])


def _cleanup_parsl(dfk, timeout: float = CLEANUP_TIMEOUT) -> list[str]:
    """Shut Parsl down within `timeout`; if it hangs, cancel its Slurm jobs directly. Returns jobs cancelled."""
    job_ids = []
    for ex in dfk.executors.values():
        provider = getattr(ex, "provider", None)
        job_ids += list(getattr(provider, "resources", {}) or {})
    done = threading.Event()

    def shut():
        try:
            dfk.cleanup()
        finally:
            done.set()
    threading.Thread(target=shut, name="fluxmpi-cleanup", daemon=True).start()
    if not done.wait(timeout):
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)
    parsl.clear()
    return job_ids


def run_tasks(path: str | LaunchPath, site: Site, specs: list[MPITaskSpec], *, app: str = "c",
              workdir: Path | None = None, sleep: float | None = None, busy: float | None = None,
              nodes_per_block: int | None = None, walltime: int | str = 1800, worker_init: str = "",
              task_timeout: float = 600, run_timeout: float = 3600,
              on_progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run `specs` concurrently through `path` on `site`; returns timings, outcomes and the placement check."""
    lp = get_path(path) if isinstance(path, str) else path
    plan = lp.check(site, specs, nodes_per_block)          # bad input stops here, before any job exists
    workdir = Path(workdir or default_workdir(lp.name)).resolve()
    records_dir, bin_dir = workdir / "records", workdir / "bin"
    for d in (records_dir, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    _write_manifest(workdir, [records_dir, bin_dir, workdir / "runinfo", workdir / "run.json"])
    task_ids = [f"t{i}" for i in range(len(specs))]
    app_argvs = [app_command(app, task=tid, out_dir=records_dir, sleep=sleep, busy=busy,
                             c_binary=bin_dir / "mpi_hello" if app == "c" else None) for tid in task_ids]

    site.apply_env()
    plan = type(plan)(**{**asdict(plan), "walltime": walltime, "worker_init": worker_init,
                         "run_dir": str(workdir / "runinfo")})
    t_start = time.time()
    dfk = parsl.load(lp.build_config(site, plan))
    t_loaded = time.time()
    gate = NodeGate(plan.gate_capacity) if plan.gate_capacity else None
    run_app = _python_app(run_mpi_task, lp.label)
    task_kw = lp.task_options(site, plan)     # e.g. the Flux path's set-up lines for each rank
    outcomes: list[TaskOutcome] = []
    t_compiled = None
    try:
        if app == "c":
            t_compiled = _compile_first(lp, gate, bin_dir, site, task_kw)
        futures: dict[Future, TaskOutcome] = {}
        for tid, spec, argv in zip(task_ids, specs, app_argvs):
            outcome = TaskOutcome(tid, spec.to_dict(), submitted=time.time())
            rs = lp.resources(spec, site)

            def start(spec=spec, argv=argv, tid=tid, rs=rs, outcome=outcome) -> Future:
                kwargs = {"parsl_resource_specification": rs} if rs else {}
                outcome.admitted = time.time()
                return run_app(spec.to_dict(), lp.launcher, argv, tid, task_timeout, **task_kw, **kwargs)
            fut = gate.submit(spec.nodes, start, label=f"task {tid}") if gate else start()
            fut.add_done_callback(lambda f, o=outcome: _record(o, f))
            futures[fut] = outcome
            outcomes.append(outcome)
        _wait_all(futures, run_timeout, on_progress)
    finally:
        if gate:
            gate.cancel_waiting()
        _cleanup_parsl(dfk)
    t_end = time.time()
    returned = [o.returned for o in outcomes if o.returned]
    records = placement.read_records(records_dir)
    expected = {o.task: specs[i] for i, o in enumerate(outcomes) if o.ok}
    report = placement.check_run(records, expected)
    result = RunResult(path=lp.name, site=site.name, workdir=str(workdir), t_start=t_start, t_loaded=t_loaded,
                       t_compiled=t_compiled, t_first_result=min(returned) if returned else None, t_end=t_end,
                       tasks=outcomes, placement_ok=report.ok, placement_report=report.render())
    (workdir / "run.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def _compile_first(lp: LaunchPath, gate: NodeGate | None, bin_dir: Path, site: Site,
                   task_kw: dict | None = None) -> float:
    """Compile the C app as the run's first task, on a compute node; fail the run clearly if it cannot."""
    compile_task = _python_app(compile_app, lp.label)
    one = MPITaskSpec(nodes=1, ranks_per_node=1)
    rs = lp.resources(one, site)
    kwargs = {"parsl_resource_specification": rs} if rs else {}

    def start() -> Future:
        return compile_task(str(bin_dir), **(task_kw or {}), **kwargs)
    fut = gate.submit(1, start, label="compile") if gate else start()
    try:
        fut.result(timeout=COMPILE_TIMEOUT)
    except TimeoutError:
        raise RunError(f"compiling the C app on the cluster did not finish within {COMPILE_TIMEOUT:.0f}s: "
                       "did the block start? (squeue; the run directory's runinfo/ has the logs)") from None
    except Exception as err:
        raise RunError(f"compiling the C app on the cluster failed: {err}") from err
    return time.time()


def _record(outcome: TaskOutcome, fut: Future) -> None:
    outcome.returned = time.time()
    if fut.cancelled():
        outcome.error = "cancelled before it ran"
    elif fut.exception() is not None:
        outcome.error = str(fut.exception())
    else:
        outcome.ok, outcome.result = True, fut.result()


def _wait_all(futures: dict[Future, TaskOutcome], timeout: float, on_progress) -> None:
    deadline = time.monotonic() + timeout
    pending = set(futures)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            for fut in pending:
                futures[fut].error = f"not finished when the run's time limit ({timeout:.0f}s) ran out"
            return
        done, pending = wait(pending, timeout=min(left, 1.0))
        if on_progress:
            on_progress(len(futures) - len(pending), len(futures))


def _write_manifest(workdir: Path, created: list[Path]) -> None:
    """What this run creates, so `fluxmpi clean` can remove exactly that and nothing else."""
    manifest = {"created": [str(p) for p in created], "workdir": str(workdir), "time": time.time()}
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=1))
