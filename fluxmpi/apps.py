"""The Parsl task bodies: compile the C app on the cluster, and launch one MPI task over its nodes.

They run on the worker (a compute node). The launcher line is composed here from the task spec and the nodes
the launch path handed the task, instead of Parsl's `$PARSL_MPI_PREFIX` (float rank counts, MPICH-only flags).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

LAUNCHERS = ("srun", "mpiexec-openmpi", "mpiexec-mpich", "mpirun-local")


class MPITaskFailed(RuntimeError):
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
    """The nodes this task may use: those MPIExecutor handed it, else every node of the block."""
    env = os.environ if env is None else env
    if env.get("PARSL_MPI_NODELIST"):
        return env["PARSL_MPI_NODELIST"].split(",")
    if env.get("SLURM_JOB_NODELIST"):
        out = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.split()
    return [socket.gethostname()]


def launch_argv(spec, launcher: str, nodes: list[str], app_argv: list[str]) -> list[str]:
    """The full command line: launcher prefix for `spec` over `nodes`, then the app."""
    if launcher == "srun":
        return spec.srun_args(mpi="pmix", nodelist=nodes[:spec.nodes]) + app_argv
    if launcher == "mpiexec-openmpi":
        return spec.mpiexec_args("openmpi", hosts=nodes[:spec.nodes]) + app_argv
    if launcher == "mpiexec-mpich":
        return spec.mpiexec_args("mpich", hosts=nodes[:spec.nodes], program="mpiexec.mpich") + app_argv
    if launcher == "mpirun-local":
        # What a user of the out-of-the-box config writes: mpirun with a rank count and nothing else.
        return ["mpirun", "-n", str(spec.ranks)] + app_argv
    raise ValueError(f"launcher {launcher!r} is not one of {LAUNCHERS}")


# "srun: error: fxm2: task 3: Exited with exit code 7" / "srun: error: fxm1: tasks 0-1: Segmentation fault"
_SRUN_FAILURE = re.compile(r"srun: error: (?P<node>[^:\s]+): tasks? (?P<ranks>[\d,\-]+): (?P<what>.+)")
# Open MPI: "Process name: [[1234,1],3]" then "Exit code: 7" or a signal, on "Local host: fxm2"
_OMPI_RANK = re.compile(r"Process name:\s+\[\[\d+,\d+\],(?P<rank>\d+)\]")
_OMPI_HOST = re.compile(r"(?:Local host|Node|Hostname):\s+(?P<node>\S+)")
_OMPI_WHAT = re.compile(r"(?P<what>Exit code:\s+\d+|Signal:.*|signal \d+ \(.*?\))")


def launcher_failures(stderr: str) -> list[tuple[str, str, str]]:
    """(rank, node, what) of each failed rank the launcher names in its stderr."""
    found = [(m["ranks"], m["node"], m["what"].strip()) for m in _SRUN_FAILURE.finditer(stderr)]
    if not found:
        rank, host, what = _OMPI_RANK.search(stderr), _OMPI_HOST.search(stderr), _OMPI_WHAT.search(stderr)
        if rank:
            found.append((rank["rank"], host["node"] if host else "?", what["what"] if what else "failed"))
    return found


def run_mpi_task(spec: dict, launcher: str, app_argv: list[str], task: str, timeout: float | None = None,
                 parsl_resource_specification: dict | None = None) -> dict:
    """Launch one MPI task and wait for it (at most `timeout` seconds). Returns where and when it ran."""
    from fluxmpi.spec import MPITaskSpec  # imported on the worker

    task_spec = MPITaskSpec.from_dict(spec)
    nodes = task_nodes()
    argv = launch_argv(task_spec, launcher, nodes, app_argv)
    t_launch = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise MPITaskFailed(task, f"did not finish within {timeout:.0f}s on {','.join(nodes)}; killed",
                            launcher_failures(err), _tail(err), argv)
    t_done = time.time()
    if proc.returncode != 0:
        raise MPITaskFailed(task, f"{argv[0]} exited with code {proc.returncode} on {','.join(nodes)}",
                            launcher_failures(err), _tail(err), argv)
    return {"task": task, "worker_host": socket.gethostname(), "nodes": nodes[:task_spec.nodes], "argv": argv,
            "t_launch": t_launch, "t_done": t_done, "stdout_tail": _tail(out, 5)}


def compile_app(dest_dir: str, mpicc: str = "mpicc", name: str = "mpi_hello",
                parsl_resource_specification: dict | None = None) -> str:
    """Compile the C app on a compute node (the first task of a run), so it matches the nodes' MPI."""
    from fluxmpi.mpi_apps import compile_c_app

    return str(compile_c_app(dest_dir, mpicc=mpicc, name=name))


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])
