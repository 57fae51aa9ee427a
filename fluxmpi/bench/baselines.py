"""The bare baselines: the same tasks with no Parsl in between, to measure what a launch path adds.

bare-srun: one allocation (`salloc --no-shell`), then a loop that starts each task as an `srun --jobid` step on
           free nodes, in the order of fluxmpi's node gate (fluxmpi.launch.gate.pick_next), and waits for it.
bare-mpirun: one allocation; on its first node a loop (fluxmpi.bench.mpirun_driver) starts each task with Open
           MPI's `mpirun --host`, in the node gate's order, as the htex-mpiexec path's worker does.
bare-flux: one allocation, one Flux instance across it (`srun --mpi=pmi2 ... flux start`), whose initial
           program submits every task and waits for each (fluxmpi.bench.flux_driver).
Both compile the C app on a compute node first, as the runner does, so start-up figures compare.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import slurm
from ..errors import FluxmpiError
from ..launch.gate import pick_next
from ..mpi_apps import app_command
from ..site import Site
from ..spec import MPITaskSpec, format_clock
from .records import RawRun, check_placement, fill_from_records, new_task
from .workload import Workload

logger = logging.getLogger(__name__)

ALLOC_TIMEOUT = 120.0
COMPILE_TIMEOUT = 300.0
FLUX_BOOT_SLACK = 120.0        # a Flux instance's start and shutdown on top of the tasks' own time limit
BASELINES = ("bare-srun", "bare-mpirun", "bare-flux")


class BaselineError(FluxmpiError, RuntimeError):
    """A baseline could not run (no allocation, no compiler, Flux did not start); says what and where."""


@dataclass(frozen=True)
class Allocation:
    job_id: str
    nodes: list[str]


@contextmanager
def allocate(site: Site, nodes: int, label: str, walltime: int = 1800,
             timeout: float = ALLOC_TIMEOUT) -> Iterator[Allocation]:
    """Hold `nodes` exclusive nodes of the site's partition for the block; always released afterwards."""
    name = f"fluxmpi-{label}-{os.getpid()}"
    argv = ["salloc", "--no-shell", "-N", str(nodes), "--exclusive", "-p", site.partition, "-J", name,
            "-t", format_clock(walltime)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _quietly(slurm.run_slurm, ["scancel", "--name", name])
        raise BaselineError(f"{label}: Slurm did not grant {nodes} nodes of partition {site.partition!r} within "
                            f"{timeout:.0f}s (`squeue` shows what holds them)") from None
    granted = re.search(r"Granted job allocation (\d+)", proc.stderr)
    if proc.returncode != 0 or not granted:
        raise BaselineError(f"{label}: salloc failed: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = granted.group(1)
    try:
        yield Allocation(job_id, _job_nodes(job_id))
    finally:
        _quietly(slurm.scancel, [job_id])


def _quietly(call, *args) -> None:
    """A release that must not hide the error that led to it: a failing scancel is only logged."""
    try:
        call(*args)
    except slurm.SlurmError as err:
        logger.warning("releasing a baseline allocation: %s", err)


def _job_nodes(job_id: str) -> list[str]:
    return slurm.expand_hostlist(slurm.job_states([job_id])[job_id]["nodes"])


def _prepare(workload: Workload, workdir: Path) -> tuple[Path, Path, list[str], list[MPITaskSpec], list[list[str]]]:
    records_dir, bin_dir = workdir / "records", workdir / "bin"
    for d in (records_dir, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    specs = workload.specs()
    ids = [f"t{i}" for i in range(len(specs))]
    argvs = [app_command("c", task=tid, out_dir=records_dir, c_binary=bin_dir / "mpi_hello", **workload.app_work())
             for tid in ids]
    return records_dir, bin_dir, ids, specs, argvs


def _finish(run: RawRun, records_dir: Path) -> RawRun:
    records = fill_from_records(run.tasks, records_dir)
    launched = [t["launched"] for t in run.tasks if t.get("launched") is not None]
    run.startup["first_launch"] = min(launched) if launched else None
    report = check_placement(run.tasks, records)
    run.placement_ok, run.placement_report = report.ok, report.render()
    returned = [t["returned"] for t in run.tasks if t["ok"] and t["returned"]]
    run.t_first_result = min(returned) if returned else None
    run.status = "ok" if report.ok and all(t["ok"] for t in run.tasks) else "failed"
    if run.status == "failed" and not run.reason:
        bad = [t for t in run.tasks if not t["ok"]]
        run.reason = (f"{len(bad)} task(s) failed, first: {bad[0]['error']}" if bad
                      else "placement check failed")
    return run


# ---- bare srun loop ----------------------------------------------------------------------------------------

def run_bare_srun(site: Site, workload: Workload, workdir: Path, *, task_timeout: float = 600,
                  run_timeout: float = 3600, on_progress: Callable[[int, int], None] | None = None) -> RawRun:
    workdir = Path(workdir).resolve()
    records_dir, bin_dir, ids, specs, argvs = _prepare(workload, workdir)
    run = RawRun("bare-srun", "baseline", "failed", workdir=str(workdir), t_start=time.time())
    with allocate(site, site.nodes, "bare-srun") as alloc:
        run.t_ready = time.time()
        _srun_compile(alloc, bin_dir)
        # No pool to start: the allocation takes steps at once.
        run.startup = {"granted": run.t_ready, "ready": run.t_ready, "compiled": time.time()}
        run.tasks = [new_task(i, tid, spec, time.time()) for i, (tid, spec) in enumerate(zip(ids, specs))]
        def srun_step(i: int, nodes: list[str]) -> list[str]:
            step = specs[i].srun_args(mpi="pmix", nodelist=nodes)
            return [step[0], "--jobid", alloc.job_id, *step[1:], *argvs[i]]
        LaunchLoop(alloc.nodes, specs, srun_step, run.tasks, task_timeout, on_progress, "srun").run(run_timeout)
    run.t_end = time.time()
    return _finish(run, records_dir)


def _srun_compile(alloc: Allocation, bin_dir: Path, label: str = "bare-srun") -> None:
    code = f"from fluxmpi.mpi_apps import compile_c_app; compile_c_app({str(bin_dir)!r})"
    argv = ["srun", "--jobid", alloc.job_id, "-N", "1", "-n", "1", "--nodelist", alloc.nodes[0],
            sys.executable, "-c", code]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BaselineError(f"{label}: compiling the C app on {alloc.nodes[0]} took over "
                            f"{COMPILE_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        raise BaselineError(f"{label}: compiling the C app on {alloc.nodes[0]} failed: {proc.stderr.strip()}")


class LaunchLoop:
    """Start each task with `command(index, its nodes)` (an srun step, an mpirun) on free nodes, admitted as
    fluxmpi's node gate would, and wait for all. `launcher` names the command in errors."""

    def __init__(self, nodes: list[str], specs: list[MPITaskSpec], command: Callable[[int, list[str]], list[str]],
                 tasks: list[dict], task_timeout: float, on_progress, launcher: str):
        self.nodes, self.specs, self.command, self.tasks = list(nodes), specs, command, tasks
        self.task_timeout, self.on_progress, self.launcher = task_timeout, on_progress, launcher
        self.free = list(nodes)
        self.waiting = deque(range(len(specs)))
        self.running: dict[int, tuple[subprocess.Popen, list[str]]] = {}
        self.finished: deque[tuple[int, int, str, float]] = deque()   # (index, exit code, stderr tail, when)
        self.cond = threading.Condition()
        self.done = 0

    def run(self, run_timeout: float) -> None:
        deadline = time.monotonic() + run_timeout
        try:
            while self.waiting or self.running:
                self._start_what_fits()
                with self.cond:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait_for(lambda: self.finished, timeout=min(left, 5.0))
                    batch = list(self.finished)
                    self.finished.clear()
                for item in batch:
                    self._collect(*item)
        finally:   # out of time or interrupted: stop what still runs, say what never ran
            for i, (proc, _) in self.running.items():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                self.tasks[i]["error"] = f"not finished when the run's time limit ({run_timeout:.0f}s) ran out"
            for i in self.waiting:
                self.tasks[i]["error"] = f"never started: the run's time limit ({run_timeout:.0f}s) ran out"

    def _start_what_fits(self) -> None:
        while (k := pick_next([self.specs[i].nodes for i in self.waiting], len(self.free))) is not None:
            i = self.waiting[k]
            del self.waiting[k]
            need = self.specs[i].nodes
            nodes, self.free = self.free[:need], self.free[need:]
            argv = self.command(i, nodes)
            self.tasks[i]["admitted"] = self.tasks[i]["launched"] = time.time()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self.running[i] = (proc, nodes)
            threading.Thread(target=self._watch, args=(i, proc), daemon=True).start()

    def _watch(self, i: int, proc: subprocess.Popen) -> None:
        try:
            _, err = proc.communicate(timeout=self.task_timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate()
            code, err = -1, f"did not finish within {self.task_timeout:.0f}s; killed\n{err}"
        with self.cond:
            self.finished.append((i, code, "\n".join(err.strip().splitlines()[-8:]), time.time()))
            self.cond.notify()

    def _collect(self, i: int, code: int, err: str, when: float) -> None:
        _, nodes = self.running.pop(i)
        self.free = sorted(self.free + nodes, key=self.nodes.index)
        task = self.tasks[i]
        task["done"] = task["returned"] = when
        task["ok"] = code == 0
        if code != 0:
            task["error"] = f"{self.launcher} exited with code {code} on {','.join(nodes)}: {err}"
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done, len(self.specs))


# ---- bare Flux instance ------------------------------------------------------------------------------------

def flux_unavailable_reason() -> str | None:
    """Why Flux cannot run here (no flux-core, no bindings, versions disagree), or None."""
    return _flux_command()[1]


def _flux_command() -> tuple[str | None, str | None]:
    """(the `flux` command, None) or (None, why not): the Flux launch path's own check, which also finds a
    flux-core that is not on PATH and refuses bindings built for another release."""
    try:
        from ..launch.flux.install import check_flux
    except ImportError:            # the Flux launch path is not part of this installation: check the basics
        flux = shutil.which("flux")
        if flux is None:
            return None, "flux-core is not installed (no `flux` on PATH)"
        try:
            import flux as _bindings  # noqa: F401
        except ImportError as err:
            return None, f"the Flux Python bindings do not import ({err}): pip install flux-python"
        return flux, None
    try:
        return check_flux().flux, None
    except (OSError, RuntimeError, ValueError) as err:
        return None, str(err)


def run_bare_flux(site: Site, workload: Workload, workdir: Path, *, task_timeout: float = 600,
                  run_timeout: float = 3600, on_progress: Callable[[int, int], None] | None = None) -> RawRun:
    flux, why_not = _flux_command()
    if flux is None:
        raise BaselineError(f"bare-flux: {why_not}")

    def flux_instance(alloc: Allocation, jobs_file: Path, result_file: Path) -> list[str]:
        return ["srun", "--jobid", alloc.job_id, "--mpi=pmi2", "-N", str(len(alloc.nodes)), "--ntasks-per-node=1",
                flux, "start", sys.executable, "-m", "fluxmpi.bench.flux_driver", str(jobs_file), str(result_file)]
    return _run_driver("bare-flux", flux_instance, site, workload, workdir, task_timeout=task_timeout,
                       run_timeout=run_timeout, on_progress=on_progress, slack=FLUX_BOOT_SLACK,
                       compiles_inside=True)


def run_bare_mpirun(site: Site, workload: Workload, workdir: Path, *, task_timeout: float = 600,
                    run_timeout: float = 3600, on_progress: Callable[[int, int], None] | None = None) -> RawRun:
    if not shutil.which("mpirun"):
        raise BaselineError("bare-mpirun: Open MPI's mpirun is not on PATH (apt install openmpi-bin)")

    def first_node_loop(alloc: Allocation, jobs_file: Path, result_file: Path) -> list[str]:
        _srun_compile(alloc, Path(json.loads(jobs_file.read_text())["bin_dir"]), "bare-mpirun")
        return ["srun", "--jobid", alloc.job_id, "-N", "1", "-n", "1", "--nodelist", alloc.nodes[0], "--overlap",
                sys.executable, "-m", "fluxmpi.bench.mpirun_driver", str(jobs_file), str(result_file)]
    return _run_driver("bare-mpirun", first_node_loop, site, workload, workdir, task_timeout=task_timeout,
                       run_timeout=run_timeout, on_progress=on_progress, slack=COMPILE_TIMEOUT)


def _run_driver(label: str, command: Callable[[Allocation, Path, Path], list[str]], site: Site,
                workload: Workload, workdir: Path, *, task_timeout: float, run_timeout: float,
                on_progress: Callable[[int, int], None] | None, slack: float,
                compiles_inside: bool = False) -> RawRun:
    """Run a baseline whose loop runs inside the allocation (`command` starts it there): hand it the tasks in
    JOBS.json, follow its progress lines, and read its RESULT.json back into task rows. compiles_inside: the
    driver compiles the app itself once it runs (bare-flux, in its instance), else `command` compiled it."""
    workdir = Path(workdir).resolve()
    records_dir, bin_dir, ids, specs, argvs = _prepare(workload, workdir)
    jobs_file, result_file, log_file = (workdir / f"{label}-jobs.json", workdir / f"{label}-result.json",
                                        workdir / f"{label}.log")
    result_file.unlink(missing_ok=True)
    run = RawRun(label, "baseline", "failed", workdir=str(workdir), t_start=time.time())
    with allocate(site, site.nodes, label) as alloc:
        granted = time.time()
        jobs_file.write_text(json.dumps({
            "tasks": [{"task": tid, "spec": spec.to_dict(), "argv": argv}
                      for tid, spec, argv in zip(ids, specs, argvs)],
            "nodes": alloc.nodes, "bin_dir": str(bin_dir), "cwd": str(workdir), "task_timeout": task_timeout,
            "run_timeout": run_timeout}))
        argv = command(alloc, jobs_file, result_file)
        commanded = time.time()
        limit = run_timeout + COMPILE_TIMEOUT + slack
        with open(log_file, "w") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
            reader = threading.Thread(target=_progress_lines, args=(proc, on_progress), daemon=True)
            reader.start()
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
                raise BaselineError(f"{label}: the driver in job {alloc.job_id} did not finish within {limit:.0f}s "
                                    f"(log: {log_file})") from None
            reader.join(timeout=10)
    run.t_end = time.time()
    if not result_file.exists():
        raise BaselineError(f"{label}: the driver exited with code {proc.returncode} and no result; "
                            f"its log: {log_file}: {_tail(log_file)}")
    result = json.loads(result_file.read_text())
    if result.get("error"):
        raise BaselineError(f"{label}: {result['error']}")
    run.t_ready = result["t_ready"]
    run.startup = ({"granted": granted, "ready": result["t_ready"], "compiled": result.get("t_compiled")}
                   if compiles_inside else {"granted": granted, "ready": granted, "compiled": commanded})
    run.tasks = []
    for i, (tid, spec) in enumerate(zip(ids, specs)):
        row = result["tasks"].get(tid, {})
        task = new_task(i, tid, spec, row.get("submitted"))
        for key in ("admitted", "launched", "done", "returned", "ok", "error"):
            if row.get(key) is not None:
                task[key] = row[key]
        if task["submitted"] is None:
            task["error"] = task["error"] or "the driver never submitted it"
        run.tasks.append(task)
    return _finish(run, records_dir)


def _progress_lines(proc: subprocess.Popen, on_progress) -> None:
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if on_progress and isinstance(msg, dict) and "done" in msg:
            on_progress(int(msg["done"]), int(msg["total"]))


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
