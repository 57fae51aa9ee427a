"""The Parsl task bodies: compile the C app on the cluster, and launch one MPI task over its nodes.

They run on the worker (a compute node). The launcher line is composed here from the task spec and the nodes
the launch path handed the task, instead of Parsl's `$PARSL_MPI_PREFIX` (float rank counts, MPICH-only flags).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .errors import FluxmpiError
from .placement import clear_task_records, unreported_ranks
from .launchers import (
    launch_argv,  # "flux" is not composed: the body is that rank (run_flux_rank)
)

logger = logging.getLogger(__name__)



class MPITaskFailed(FluxmpiError, RuntimeError):
    """An MPI task ended badly; says which task, which ranks on which nodes, and the end of its stderr."""

    def __init__(self, task: str, reason: str, failures: list[tuple[str, str, str]] | None = None,
                 stderr_tail: str = "", argv: list[str] | None = None):
        self.task, self.reason = task, reason
        self.failures = failures or []   # (rank, node, what) triples, as the launcher reported them
        self.stderr_tail, self.argv = stderr_tail, argv or []
        super().__init__(task, reason, self.failures, stderr_tail, self.argv)

    def __str__(self) -> str:
        lines = [f"task {self.task}: {self.reason}"]
        lines += [f"  rank {r} on {n}: {w}" for r, n, w in self.failures]
        if self.stderr_tail:
            lines.append("  stderr (last lines):\n    " + self.stderr_tail.replace("\n", "\n    "))
        return "\n".join(lines)


def task_nodes(env: dict | None = None) -> list[str]:
    """The nodes this task may use: those MPIExecutor handed it, else every node of the block (Slurm's or PBS's
    list of it)."""
    env = os.environ if env is None else env
    if env.get("PARSL_MPI_NODELIST"):
        return env["PARSL_MPI_NODELIST"].split(",")
    if env.get("PBS_NODEFILE"):
        from fluxmpi.launchers.pals import read_nodefile
        return read_nodefile(env["PBS_NODEFILE"])
    if env.get("SLURM_JOB_NODELIST"):
        out = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.split()
    return [socket.gethostname()]


# "srun: error: fxm2: task 3: Exited with exit code 7" / "srun: error: fxm1: tasks 0-1: Segmentation fault"
_SRUN_FAILURE = re.compile(r"srun: error: (?P<node>[^:\s]+): tasks? (?P<ranks>[\d,\-]+): (?P<what>.+)")
# Open MPI: "Process name: [[1234,1],3]" then "Exit code: 7" or a signal, on "Local host: fxm2"
_OMPI_RANK = re.compile(r"Process name:\s+\[\[\d+,\d+\],(?P<rank>\d+)\]")
_OMPI_HOST = re.compile(r"(?:Local host|Node|Hostname):\s+(?P<node>\S+)")
_OMPI_WHAT = re.compile(r"(?P<what>Exit code:\s+\d+|Signal:.*|signal \d+ \(.*?\))")
# Open MPI, a rank killed by a signal: "mpirun noticed that process rank 1 with PID 0 on node fxm2 exited on
# signal 11 (Segmentation fault)."
_OMPI_NOTICED = re.compile(r"process rank (?P<rank>\d+) with PID \d+ on node (?P<node>\S+) "
                           r"(?P<what>exited on signal \d+ \(.*?\))")
# Slurm, a node of the step died: "srun: error: Node failure on fxm2"
_NODE_FAILURE = re.compile(r"srun: error: Node failure on (?P<node>[^\s:]+)")


# Slurm's own lines on a failed step's stderr (srun's per-rank verdicts, the step's cancellation after
# --kill-on-bad-exit, one "Terminated" per other rank): the failures list already says what they say, and they
# would push the program's own last words out of the stderr tail.
_SLURM_LINE = re.compile(r"^(srun|slurmstepd)\S*: ")


def _without_step_teardown(stderr: str) -> str:
    """The program's own stderr lines (Slurm's left out), or all of it when the program wrote none."""
    lines = (stderr or "").splitlines()
    own = [line for line in lines if not _SLURM_LINE.match(line)]
    return "\n".join(own if own else lines)


def launcher_failures(stderr: str) -> list[tuple[str, str, str]]:
    """(rank, node, what) of each failed rank the launcher names in its stderr."""
    found = [("?", m["node"], "node failure") for m in _NODE_FAILURE.finditer(stderr)]
    found += [(m["ranks"], m["node"], m["what"].strip()) for m in _SRUN_FAILURE.finditer(stderr)
              if not m["what"].startswith("Node failure")]
    found += [(m["rank"], m["node"], m["what"]) for m in _OMPI_NOTICED.finditer(stderr)]
    if not found:
        rank, host, what = _OMPI_RANK.search(stderr), _OMPI_HOST.search(stderr), _OMPI_WHAT.search(stderr)
        if rank:
            found.append((rank["rank"], host["node"] if host else "?", what["what"] if what else "failed"))
    return found


def run_mpi_task(spec: dict, launcher: str, app_argv: list[str], task: str, timeout: float | None = None,
                 init: str = "", parsl_resource_specification: dict | None = None, stdout: str | None = None,
                 stderr: str | None = None, cwd: str | None = None, env: dict | None = None,
                 records: str | None = None) -> dict:
    """Launch one MPI task and wait for it (at most `timeout` seconds). Returns where and when it ran.

    init: shell lines sourced before launching (for paths whose tasks do not inherit the block's set-up).
    stdout, stderr: files the task's output goes to (appended; kept after the task) instead of being captured.
    cwd, env: the task's working directory, and variables set for it over the worker's environment.
    records: the directory where every rank leaves its record when it ends (the bundled apps, the rank wrapper):
    a launch that exits 0 without a record from each rank fails (check_every_rank_ended). Not on the flux launcher,
    where this body is itself one rank.
    """
    from fluxmpi.spec import MPITaskSpec  # imported on the worker

    task_spec = MPITaskSpec.from_dict(spec)
    environment = task_environment(init) if init else None
    if env:
        environment = {**(environment or os.environ), **{k: str(v) for k, v in env.items()}}
    output = TaskOutput(stdout, stderr)
    if launcher == "flux":
        return run_flux_rank(task_spec, app_argv, task, timeout, environment, output, cwd)
    nodes = task_nodes()
    if records:
        clear_task_records(records, task, task_spec.ranks)    # a record found afterwards is this launch's
    with openmpi_session_base(task, launcher == "mpiexec-openmpi") as session_base, output:
        argv = launch_argv(task_spec, launcher, nodes, app_argv, session_base)
        t_launch = time.time()
        proc = subprocess.Popen(argv, stdout=output.out, stderr=output.err, text=True, cwd=cwd,
                                start_new_session=True, env=environment)
        try:
            out, err = output.read(proc.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                out, err = output.read(proc.communicate(timeout=15))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = output.read(proc.communicate())
            raise MPITaskFailed(task, f"did not finish within {timeout:.0f}s on {','.join(nodes)}; killed",
                                launcher_failures(err), _tail(err), argv)
    t_done = time.time()
    if proc.returncode != 0:
        if _BLOCK_ENDING.search(err):
            _outlive_block(timeout)
        raise MPITaskFailed(task, f"{argv[0]} exited with code {proc.returncode} on {','.join(nodes)}",
                            launcher_failures(err), _tail(_without_step_teardown(err)), argv)
    if records:
        check_every_rank_ended(task, task_spec, nodes, records, argv, err)
    return {"task": task, "worker_host": socket.gethostname(), "nodes": nodes[:task_spec.nodes], "argv": argv,
            "t_launch": t_launch, "t_done": t_done, "stdout_tail": _tail(out, 5), "returncode": 0,
            "stdout": stdout, "stderr": stderr,
            # Which env file the block sourced (worker_init), so a run can show its workers got it.
            "env_file": os.environ.get("FLUXMPI_ENV_FILE")}


def check_every_rank_ended(task: str, spec, nodes: list[str], records: str, argv: list[str], stderr: str,
                           grace: float | None = None) -> None:
    """Raise MPITaskFailed unless every rank of the task left its record in `records`.

    A launcher's exit status alone is not proof: srun (Slurm 22.05) was seen exiting 0 for a 2-node step whose
    second node was SIGKILLed mid-run, once slurmctld marked that node DOWN; the rank there never finished. Records
    of ranks on other nodes reach a shared file system a moment later, so this waits up to `grace` seconds
    (RECORD_GRACE) for them before it fails the task (then retried like any failed task)."""
    grace = RECORD_GRACE if grace is None else grace
    deadline = time.monotonic() + grace
    while (missing := unreported_ranks(records, task, spec.ranks)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not missing:
        return
    # The launchers place ranks in blocks: ranks_per_node consecutive ranks on each node, in node order.
    where = [(str(rank), nodes[rank // spec.ranks_per_node] if rank // spec.ranks_per_node < len(nodes) else "?",
              "never ended (no record)") for rank in missing]
    lost = sorted({node for _, node, _ in where})
    raise MPITaskFailed(
        task, f"{argv[0]} exited 0 but {len(missing)} of {spec.ranks} ranks left no record within {grace:.0f}s: "
              f"lost with their node ({', '.join(lost)}), or {records} is not on a file system every node sees",
        launcher_failures(stderr) + where, _tail(_without_step_teardown(stderr)), argv)


class TaskOutput:
    """Where a launch's stdout and stderr go: pipes read into memory, or files of the task's own (appended, so
    the ranks of a Flux job, each running this, do not clobber one another). read() gives the text either way;
    from a file, only its end (the part messages quote)."""

    TAIL_BYTES = 64 * 1024

    def __init__(self, stdout: str | None = None, stderr: str | None = None):
        self.paths = (stdout, stderr)
        self.out = self.err = subprocess.PIPE
        self._files = []

    def __enter__(self) -> "TaskOutput":
        handles = []
        for path in self.paths:
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                handles.append(open(path, "a"))
                self._files.append(handles[-1])
            else:
                handles.append(subprocess.PIPE)
        self.out, self.err = handles
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()

    def read(self, captured: tuple) -> tuple[str, str]:
        texts = []
        for path, text in zip(self.paths, captured):
            if path:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - self.TAIL_BYTES))
                    text = f.read().decode(errors="replace")
            texts.append(text or "")
        return texts[0], texts[1]


@contextlib.contextmanager
def openmpi_session_base(task: str, wanted: bool = True):
    """A directory of this launch's own for Open MPI's session directories (None when not `wanted`).

    Open MPI 4.1 puts every mpirun's session directory under one per-host tree in $TMPDIR or /tmp
    (`ompi.HOST.UID/`) and removes that tree when a job ends. Two mpiruns on one node, or on nodes that share a
    /tmp (the local cluster, some diskless clusters), then race: one removes the tree while the other is
    creating its directory in it ("Error in file ../../../orte/util/session_dir.c", orte_init failed). A base
    no other launch uses cannot be removed under this one. Removed when the launch is over."""
    if not wanted:
        yield None
        return
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task)[:40]
    base = tempfile.mkdtemp(prefix=f"fluxmpi-ompi-{safe}-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# srun inside a block whose allocation is ending (walltime, cancel): no step can start there any more.
_BLOCK_ENDING = re.compile(r"Unable to create step for job \d+: (Job/step already completing or completed|"
                           r"Job has expired|Invalid job id specified)")
BLOCK_ENDING_WAIT = 60.0
# Seconds a launch that exited 0 waits for its ranks' records to show on a shared file system (NFS clients may
# see another node's new file only after their attribute cache times out).
RECORD_GRACE = 15.0


def _outlive_block(timeout: float | None) -> None:
    """Wait (at most BLOCK_ENDING_WAIT s) for the ending allocation to take this worker with it.

    Failing at once would let the still-connected worker pool take the task's retries one after another,
    each failing the same way within a second. Killed with its block instead, the task is lost with its pool
    and Parsl retries it once on a block that can run it. If the block lives on, the caller fails the task.
    """
    time.sleep(min(BLOCK_ENDING_WAIT, timeout or BLOCK_ENDING_WAIT))


class TaskInitFailed(FluxmpiError, RuntimeError):
    """The shell lines a task sources before its app (`init`) failed; says which lines and how."""


# Separates whatever `init` prints from the environment dump that follows it.
_ENV_MARK = "\n--fluxmpi-task-environment--\n"


def task_environment(init: str, timeout: float = 120) -> dict[str, str]:
    """This process's environment after sourcing `init` (e.g. `source /path/env.sh`) in bash."""
    # The dump is this Python's (isolated, no site), so it works whatever PATH `init` leaves behind.
    dump_env = "import os, sys; sys.stdout.buffer.write(b'\\0'.join(k + b'=' + v for k, v in os.environb.items()))"
    script = f"{init}\nprintf '%s' {shlex.quote(_ENV_MARK)}\nexec {shlex.quote(sys.executable)} -I -S -c {shlex.quote(dump_env)}"
    try:
        proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TaskInitFailed(f"the task set-up lines did not finish within {timeout:.0f}s: {init!r}") from None
    mark = _ENV_MARK.encode()
    if proc.returncode != 0 or mark not in proc.stdout:
        raise TaskInitFailed(f"the task set-up lines {init!r} failed (exit {proc.returncode}) on "
                             f"{socket.gethostname()}: {_tail(proc.stderr.decode(errors='replace'), 5)}")
    dump = proc.stdout.split(mark, 1)[1].decode(errors="surrogateescape")
    return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)


def run_flux_rank(spec, app_argv: list[str], task: str, timeout: float | None = None, env: dict | None = None,
                  output: TaskOutput | None = None, cwd: str | None = None) -> dict | None:
    """Be one rank of an MPI task that runs as a Flux job (Parsl's FluxExecutor runs this body once per rank).

    The MPI app starts as this rank: Flux's PMI reaches it through the inherited PMI_FD, and each rank writes
    its own record. Only rank 0's return value becomes the task's result. A failure on rank 0 raises
    MPITaskFailed; on another rank it goes to stderr (the job's stderr file in the executor's working
    directory) and ends the rank with a non-zero code, which fails the job.
    """
    if "FLUX_TASK_RANK" not in os.environ:
        raise MPITaskFailed(task, "the flux launcher runs inside a Flux job, but FLUX_TASK_RANK is unset: "
                                  "submit it through the Flux launch path (Parsl's FluxExecutor)")
    rank, size = int(os.environ["FLUX_TASK_RANK"]), int(os.environ.get("FLUX_JOB_SIZE", "0"))
    host = socket.gethostname()
    if size != spec.ranks:  # every rank sees this; rank 0 reports it
        if rank == 0:
            raise MPITaskFailed(task, f"Flux started {size} ranks but the task is {spec}: the resource "
                                      f"specification did not match the spec")
        return None
    limits = [t for t in (timeout, spec.walltime) if t]
    limit = min(limits) if limits else None
    output = output or TaskOutput()
    pmi_fd = os.environ.get("PMI_FD", "")
    if spec.gpus_per_rank:      # Flux showed this rank all of the job's GPUs on the node: keep its own
        from fluxmpi.launchers.flux import rank_visible_gpus
        env = dict(os.environ if env is None else env)
        own = rank_visible_gpus(env.get("CUDA_VISIBLE_DEVICES"), int(os.environ.get("FLUX_TASK_LOCAL_ID", "0")),
                                spec.gpus_per_rank)
        if own is not None:
            env["CUDA_VISIBLE_DEVICES"] = own
    t_launch = time.time()
    # Same process group as this rank, so a Flux job kill reaches the app too.
    with output:
        proc = subprocess.Popen(app_argv, stdout=output.out, stderr=output.err, text=True, env=env, cwd=cwd,
                                pass_fds=[int(pmi_fd)] if pmi_fd.isdigit() else [])
        try:
            out, err = output.read(proc.communicate(timeout=limit))
            failure = None if proc.returncode == 0 else f"exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = output.read(proc.communicate(timeout=15))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = output.read(proc.communicate())
            failure = f"did not finish within {limit:.0f}s; killed"
    t_done = time.time()
    if failure:
        reason = f"rank {rank} of {size} ({os.path.basename(app_argv[0])}) {failure} on {host}"
        if rank == 0:
            raise MPITaskFailed(task, reason, [(str(rank), host, failure)], _tail(err), app_argv)
        print(f"fluxmpi: task {task}: {reason}\n{_tail(err)}", file=sys.stderr, flush=True)
        raise SystemExit(proc.returncode if proc.returncode and proc.returncode > 0 else 1)
    if rank != 0:
        return None
    return {"task": task, "worker_host": host, "flux_job_id": os.environ.get("FLUX_JOB_ID"),
            "nodes": None,  # Flux chose them; the ranks' records say which (placement)
            "ranks": size, "argv": app_argv, "t_launch": t_launch, "t_done": t_done, "stdout_tail": _tail(out, 5),
            "returncode": 0, "stdout": output.paths[0], "stderr": output.paths[1],
            "env_file": (env or os.environ).get("FLUXMPI_ENV_FILE")}


def compile_app(dest_dir: str, mpicc: str = "mpicc", name: str = "mpi_hello", init: str = "",
                parsl_resource_specification: dict | None = None) -> dict:
    """Compile the C app on a compute node (the first task of a run), so it matches the nodes' MPI.

    init: shell lines sourced first (as for run_mpi_task), so mpicc comes from the same environment as the app.
    Returns the binary's path and when the compile began on the node (t_begin: the run's start-up breakdown
    reads the worker pool or Flux instance as ready from then).
    """
    import time

    from fluxmpi.mpi_apps import compile_c_app

    t_begin = time.time()
    binary = compile_c_app(dest_dir, mpicc=mpicc, name=name, env=task_environment(init) if init else None)
    return {"binary": str(binary), "t_begin": t_begin}


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])
