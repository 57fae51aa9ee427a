"""The flux-jobs path's block: one Flux broker per node, and this small program as the instance's initial program.

    srun --mpi=pmi2 -N N --ntasks-per-node=1 --no-kill ... flux start python -m fluxmpi.launch.flux.block INFO FLUX SECONDS

It publishes how to reach the instance from outside (`flux uri --remote`: ssh://FIRST-NODE/...), the Python it
runs under and the block's environment (after the site's worker_init) in INFO, then waits until the block is
cancelled or its walltime is nearly over. The login side reads INFO and submits MPI tasks as Flux jobs itself
(fluxmpi.launch.flux.jobs). Only the standard library is imported: the block should be up in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

# Leave the instance this long before the block's walltime, so it shuts down itself instead of being killed.
WALLTIME_MARGIN = 10
URI_TIMEOUT = 60.0
# Variables of the block's environment that belong to the broker, its Slurm step or this process, not to a job:
# the Flux job shell sets its own FLUX_*/PMI_* for every job, and a Flux job is no Slurm step.
_NOT_FOR_JOBS = ("FLUX_", "SLURM_", "SLURMD_", "PMI_", "PMIX_")
_NOT_FOR_JOBS_EXACT = {"_", "PWD", "OLDPWD", "SHLVL", "HOSTNAME"}


def job_environment(env: dict[str, str]) -> dict[str, str]:
    """The block's environment as Flux jobs should get it: the site's set-up, without the broker's own variables."""
    return {k: v for k, v in env.items() if k not in _NOT_FOR_JOBS_EXACT and not k.startswith(_NOT_FOR_JOBS)}


def block_command(info_file: str, flux: str, nodes: int, cores_per_node: int, walltime: int,
                  python: str | None = None, link_timeout: int | None = None, gpus_per_node: int = 0,
                  brokers_by: str = "srun") -> str:
    """The shell command a block runs (after its worker_init): brokers on every node as the Flux path starts them
    (fluxmpi.launch.flux.broker_step: whole nodes, survives a lost node), this program on the first.

    brokers_by: "srun" on a Slurm block; on a PBS block the site's mpiexec (a name of fluxmpi.launchers), over the
    hosts of $PBS_NODEFILE, written next to info_file.
    gpus_per_node: the instance is told its nodes' cores and GPUs by a resource configuration the block writes
    for the nodes the batch system gave it, next to info_file: Flux's own discovery (hwloc) finds no GPU that a
    driver does not show, and would drain a node whose GPUs it cannot see."""
    from .executor import (  # here, not at the top: the block program itself imports only the stdlib
        broker_step,
        mpiexec_broker_step,
    )
    program = [python or sys.executable, "-m", "fluxmpi.launch.flux.block", info_file, flux, str(int(walltime))]
    here = os.path.dirname(info_file)
    steps = []
    if brokers_by == "srun":
        brokers = broker_step(flux, nodes, cores_per_node, link_timeout=link_timeout)
        hosts = '"$SLURM_JOB_NODELIST"'
    else:
        hostfile = os.path.join(here, "hosts")
        steps.append(f"sort -u \"$PBS_NODEFILE\" > {shlex.quote(hostfile)}")
        brokers = mpiexec_broker_step(flux, nodes, brokers_by, hostfile, link_timeout=link_timeout)
        hosts = f'"$(paste -sd, {shlex.quote(hostfile)})"'
    if gpus_per_node:
        conf = os.path.join(here, "resource.toml")
        steps.append(f"printf '[resource]\\nnoverify = true\\n[[resource.config]]\\nhosts = \"%s\"\\n"
                     f"cores = \"0-{cores_per_node - 1}\"\\ngpus = \"0-{gpus_per_node - 1}\"\\n' {hosts} "
                     f"> {shlex.quote(conf)}")
        start = brokers.index("start") + 1
        brokers[start:start] = ["-c", conf]
    return " && ".join([*steps, " ".join(shlex.quote(a) for a in brokers + program)])


def remote_uri(flux: str, local_uri: str, timeout: float = URI_TIMEOUT) -> str:
    """ssh://HOST/PATH for the instance this program runs in (what `flux proxy` and flux.Flux(uri) take)."""
    proc = subprocess.run([flux, "uri", "--remote", local_uri], capture_output=True, text=True, timeout=timeout)
    uri = proc.stdout.strip()
    if proc.returncode != 0 or not uri:
        raise RuntimeError(f"`{flux} uri --remote {local_uri}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return uri


def write_info(path: str, info: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)   # the login side never reads half a file


def publish(info_file: str, flux: str, local: str, ends: float | None = None) -> None:
    """Write how to reach this instance from outside (and the block's environment) to `info_file`; `ends`: the
    wall-clock time the instance shuts down, which the login side holds each task's time limit against."""
    write_info(info_file, {"uri": remote_uri(flux, local), "local_uri": local, "host": socket.gethostname(),
                           "python": sys.executable, "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                           "time": time.time(), "ends": ends, "env": job_environment(dict(os.environ))})


def publish_then(info_file: str, flux: str, argv: list[str]) -> int:
    """The flux path's initial program: publish the instance (so fluxmpi can drain a lost node in it), then
    become `argv` (Parsl's instance manager), which owns the instance from then on."""
    local = os.environ.get("FLUX_URI")
    if local:
        try:
            publish(info_file, flux, local)
        except Exception as err:  # noqa: BLE001 - the manager must start anyway; fluxmpi then cannot drain
            print(f"fluxmpi flux block: could not publish the instance: {err}", file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)
    return 127   # not reached


def main(info_file: str, flux: str, walltime: str) -> int:
    stop = {"why": None}

    def on_signal(signum, _frame) -> None:
        stop["why"] = signal.Signals(signum).name
        _unpublish(info_file)      # at once: the login side reads a missing file as "this block is ending"
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    local = os.environ.get("FLUX_URI")
    if not local:
        print("fluxmpi flux block: FLUX_URI is unset: run me as the initial program of `flux start`", file=sys.stderr)
        return 2
    lifetime = max(1, int(walltime) - WALLTIME_MARGIN)
    deadline = time.monotonic() + lifetime
    publish(info_file, flux, local, ends=time.time() + lifetime)
    print(f"fluxmpi flux block: instance published in {info_file}", flush=True)
    while stop["why"] is None and time.monotonic() < deadline:
        time.sleep(1.0)
    why = stop["why"] or "walltime nearly over"
    _unpublish(info_file)
    print(f"fluxmpi flux block: shutting the instance down ({why})", flush=True)
    return 0


def _unpublish(info_file: str) -> None:
    try:
        os.unlink(info_file)    # the instance's URI is about to stop working
    except OSError:
        pass


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[3] == "--then":
        sys.exit(publish_then(sys.argv[1], sys.argv[2], sys.argv[4:]))
    if len(sys.argv) != 4:
        sys.exit("usage: python -m fluxmpi.launch.flux.block INFO_FILE FLUX (WALLTIME_SECONDS | --then CMD ...)")
    sys.exit(main(*sys.argv[1:]))
