"""What a Parsl call becomes as a Flux job on the flux-jobs path, and what the finished job becomes for Parsl.

An MPI task (a call of fluxmpi.apps.run_mpi_task) becomes a job whose command is the MPI app itself: Flux starts
the ranks, nothing else runs per rank. Any other Python call (the run's compile task) becomes a one-rank job
running fluxmpi.launch.flux.pyjob, which costs a Python start-up but needs nothing from the caller.

No broker is needed for anything here: the executor (fluxmpi.launch.flux.jobs) supplies the job's events.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ...apps import MPITaskFailed, run_mpi_task
from ...mpiapp import MPICommand, command_argv, output_paths, run_mpi_app
from ...spec import MPITaskSpec, SpecError

logger = logging.getLogger(__name__)

LAUNCHER = "flux-jobs"   # the `launcher` argument the runner passes run_mpi_task on this path
# The resource_specification keys this path reads (FluxExecutor's four plus exclusive); any other is refused.
RESOURCE_KEYS = ("num_nodes", "num_tasks", "cores_per_task", "gpus_per_task", "exclusive")
STDERR_TAIL_LINES = 12


class FluxJobsError(SpecError):
    """A call the flux-jobs executor cannot turn into a Flux job; the message names the value and the fix."""


def resource_spec(spec: MPITaskSpec) -> dict[str, Any]:
    """The resource_specification a task of `spec` is submitted with on the flux-jobs path."""
    return {**spec.flux_executor_spec(), "exclusive": spec.exclusive}


def spec_from_resources(rs: dict | None) -> MPITaskSpec:
    """The task shape a resource_specification asks for; {} or None is one rank on one node, sharing it."""
    rs = dict(rs or {})
    unknown = sorted(set(rs) - set(RESOURCE_KEYS))
    if unknown:
        raise FluxJobsError(f"resource_specification keys {unknown} are not understood by the flux-jobs executor: "
                            f"use only {list(RESOURCE_KEYS)}")
    try:
        return MPITaskSpec.build(nodes=rs.get("num_nodes", 1), ranks=rs.get("num_tasks", rs.get("num_nodes", 1)),
                                 cores_per_rank=rs.get("cores_per_task", 1), gpus_per_rank=rs.get("gpus_per_task", 0),
                                 exclusive=rs.get("exclusive", False))
    except SpecError as err:
        raise FluxJobsError(f"resource_specification {rs}: {err}") from None


@dataclass
class JobRequest:
    """One Flux job to submit: its shape, command, time limit and where its output goes."""
    task: str                        # name in messages and file names (the runner's task id, or parsl-<n>)
    spec: MPITaskSpec
    command: list[str]
    duration: float | None           # seconds Flux lets it run (the tighter of timeout and walltime); None: no limit
    stdout: str
    stderr: str
    kind: str = "mpi"                # "mpi": command is the MPI app; "python": a fluxmpi.launch.flux.pyjob call
    app_argv: list[str] = field(default_factory=list)
    call_file: str | None = None     # python jobs: the packed call, and where the result is written
    result_file: str | None = None
    env: dict = field(default_factory=dict)     # set for the job over the block's environment
    cwd: str | None = None                      # the job's working directory [the executor's]

    @property
    def walltime(self) -> int | None:
        """The walltime the task declared (its spec's), which admission holds against a block's time left. A
        timeout alone (fluxmpi's default kill limit) is not a declaration: such tasks start whenever nodes are free."""
        return self.spec.walltime


def _is(func: Callable, target: Callable) -> bool:
    return inspect.unwrap(func) is target   # Parsl wraps app functions (functools.wraps keeps __wrapped__)


def mpi_request(func: Callable, resource_specification: dict | None, args: tuple, kwargs: dict,
                out_dir: str | Path) -> JobRequest | None:
    """The job for a call of run_mpi_task or of an @mpi_app's body (None for any other function)."""
    if _is(func, run_mpi_app):
        return _mpi_app_request(resource_specification, args, kwargs, out_dir)
    if not _is(func, run_mpi_task):
        return None
    bound = inspect.signature(run_mpi_task).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    task = str(a["task"])
    if a["launcher"] != LAUNCHER:
        raise FluxJobsError(f"task {task}: launcher {a['launcher']!r} cannot run on the flux-jobs executor, which "
                            f"starts ranks through Flux itself: use the flux-jobs launch path (launcher {LAUNCHER!r})")
    spec = MPITaskSpec.from_dict(a["spec"])
    if resource_specification:
        asked = spec_from_resources(resource_specification)
        if resource_spec(asked) != resource_spec(spec):
            raise FluxJobsError(f"task {task}: resource_specification {resource_specification} asks for {asked} but "
                                f"the task spec is {spec}: give resource_spec(spec) (or none)")
    argv = [str(x) for x in a["app_argv"]]
    if not argv:
        raise FluxJobsError(f"task {task}: app_argv is empty: give the MPI program and its arguments")
    command = argv
    if a["init"]:
        # Set-up lines for this task only (the block's environment already has the site's): a shell per rank.
        command = ["bash", "-c", f'{a["init"]}\nexec "$@"', "fluxmpi-task", *argv]
    limits = [t for t in (a["timeout"], spec.walltime) if t]
    out = Path(out_dir)
    req = JobRequest(task=task, spec=spec, command=command, duration=float(min(limits)) if limits else None,
                     stdout=a["stdout"] or str(out / f"{task}.out"), stderr=a["stderr"] or str(out / f"{task}.err"),
                     app_argv=argv, env={k: str(v) for k, v in (a["env"] or {}).items()}, cwd=a["cwd"])
    for path in (req.stdout, req.stderr):     # the task's own files may be anywhere the user said
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return req


def _mpi_app_request(resource_specification: dict | None, args: tuple, kwargs: dict,
                     out_dir: str | Path) -> JobRequest:
    """An @mpi_app call as a Flux job: its function builds the command here, at submission (Parsl has resolved
    the arguments by then), and Flux runs that command as every rank."""
    call, user_args = args[0], args[1:]
    user_kwargs = {k: v for k, v in kwargs.items() if k != "parsl_resource_specification"}
    cmd = MPICommand.of(call["fn"](*user_args, **user_kwargs), where=f"task {call['task']}")
    stdout, stderr = output_paths(cmd, call)
    return mpi_request(run_mpi_task, resource_specification,
                       (call["spec"], call["launcher"], command_argv(cmd, call), call["task"], call.get("timeout"),
                        call.get("init", "")), {"stdout": stdout, "stderr": stderr, "cwd": cmd.cwd, "env": cmd.env},
                       out_dir)


def python_request(name: str, resource_specification: dict | None, python: str, out_dir: str | Path) -> JobRequest:
    """A job that runs one packed Python call with `python` (the block's); the caller writes call_file."""
    out = Path(out_dir)
    call, result = str(out / f"{name}.call"), str(out / f"{name}.result")
    return JobRequest(task=name, spec=spec_from_resources(resource_specification),
                      command=[python, "-m", "fluxmpi.launch.flux.pyjob", call, result], duration=None,
                      stdout=str(out / f"{name}.out"), stderr=str(out / f"{name}.err"), kind="python",
                      call_file=call, result_file=result)


def check_fits(req: JobRequest, nodes: int, cores_per_node: int, gpus_per_node: int = 0) -> None:
    """Refuse a job the block can never run (Flux would keep it pending until the block ends)."""
    req.spec.check_fits(nodes, cores_per_node, gpus_per_node, where="Flux instance")


def jobspec(req: JobRequest, environment: dict[str, str], cwd: str, avoid: Iterable[str] = ()) -> dict[str, Any]:
    """The RFC 25 jobspec: the spec's shape (fluxmpi.spec.flux_jobspec), the block's environment, output to files
    with every line labelled by its rank (so a failure can say which rank wrote what), ended at a rank's failure.
    avoid: hosts the job must not be placed on (an RFC 31 constraint), e.g. nodes whose broker was lost."""
    js = req.spec.flux_jobspec(req.command)
    system = js["attributes"]["system"]
    if avoid:
        system["constraints"] = {"not": [{"hostlist": sorted(avoid)}]}
    system["duration"] = req.duration or 0
    system["cwd"] = req.cwd or cwd
    system["environment"] = {**environment, **req.env}
    system["job"] = {"name": f"fluxmpi-{req.task}"}
    # The spec's own shell options (gpu-affinity) stay; these are added to them.
    system.setdefault("shell", {}).setdefault("options", {}).update({
        "output": {stream: {"type": "file", "path": path, "label": True}
                   for stream, path in (("stdout", req.stdout), ("stderr", req.stderr))},
        # An MPI job with a failed rank cannot finish: the others wait for it. End it at the first failure
        # instead of after Flux's exit-timeout (30 s).
        "exit-on-error": 1})
    return js


# --- what a finished job becomes ------------------------------------------------------------------------------

# Lines of a labelled output file: "3: text"
_LABELLED = re.compile(r"^(?P<rank>\d+): (?P<text>.*)$")


def read_tail(path: str, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def rank_host(rank: int, spec: MPITaskSpec, nodes: list[str]) -> str:
    """The host of `rank`: the jobspec gives each node ranks_per_node slots, filled in rank order."""
    i = rank // spec.ranks_per_node
    return nodes[i] if i < len(nodes) else "?"


def stderr_ranks(stderr: str, spec: MPITaskSpec, nodes: list[str]) -> list[tuple[str, str, str]]:
    """(rank, host, its last stderr line) for each rank that wrote to stderr, in rank order."""
    last: dict[int, str] = {}
    for line in stderr.splitlines():
        m = _LABELLED.match(line)
        if m and m["text"].strip():
            last[int(m["rank"])] = m["text"].strip()
    return [(str(r), rank_host(r, spec, nodes), text) for r, text in sorted(last.items())]


def describe_status(status: int) -> str:
    """A job's wait status (the largest of its ranks') in words."""
    if os.WIFSIGNALED(status):
        return f"a rank was killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"a rank exited with code {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


@dataclass
class JobEnd:
    """What the executor saw of a finished (or failed) job."""
    jobid: str | None = None
    status: int | None = None                       # wait status from the finish event
    exception: tuple[str, str] | None = None        # (type, note) of a fatal job exception
    times: dict[str, float] = field(default_factory=dict)   # event name -> timestamp
    nodes: list[str] = field(default_factory=list)
    error: str | None = None                        # submission or connection failure
    held_back: str | None = None                    # cancelled by fluxmpi as it was about to start: why


def task_result(req: JobRequest, end: JobEnd, env_file: str | None = None) -> dict:
    """run_mpi_task's result for a job that ended well: where and when it ran."""
    return {"task": req.task, "worker_host": end.nodes[0] if end.nodes else None, "flux_job_id": end.jobid,
            "nodes": list(end.nodes), "ranks": req.spec.ranks, "argv": req.app_argv or req.command,
            # Flux's own stamps: job shells started (start) and all exited (finish).
            "t_launch": end.times.get("start"), "t_done": end.times.get("finish", end.times.get("clean")),
            "stdout_tail": read_tail(req.stdout, 5), "env_file": env_file, "returncode": 0,
            "stdout": req.stdout, "stderr": req.stderr}


def task_failure(req: JobRequest, end: JobEnd) -> MPITaskFailed:
    """The MPITaskFailed for a job that ended badly (or never ran): which job, why, which ranks complained."""
    where = f" on {','.join(end.nodes)}" if end.nodes else ""
    job = f"flux job {end.jobid}" if end.jobid else "its flux job"
    if end.error:
        reason = f"{job}: {end.error}"
    elif end.exception:
        kind, note = end.exception
        if kind == "timeout" and req.duration:
            reason = f"{job} did not finish within {req.duration:.0f}s{where}; Flux killed it"
        else:
            reason = f"{job} ended by a Flux '{kind}' exception{where}: {note}"
    elif end.status is not None:
        reason = f"{job} failed{where}: {describe_status(end.status)}"
    else:
        reason = f"{job} ended without a status{where}"
    stderr = read_tail(req.stderr, 200)
    return MPITaskFailed(req.task, reason, stderr_ranks(stderr, req.spec, end.nodes),
                         "\n".join(stderr.splitlines()[-STDERR_TAIL_LINES:]), req.app_argv or req.command)
