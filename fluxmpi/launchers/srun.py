"""Slurm's `srun`: the step line that starts a task's ranks inside an allocation (Slurm 22.05)."""

from __future__ import annotations

import logging
import re
from typing import Sequence

from ..spec import SpecError, _host_list, format_clock

logger = logging.getLogger(__name__)


def srun_args(spec, mpi: str | None = "pmix", nodelist: str | Sequence[str] | None = None) -> list[str]:
    """argv prefix for a job step inside an allocation: `srun ... <program>`.

    exclusive=True adds nothing: by default (Slurm 22.05, `man srun`) a step gets all of the job's CPUs
    on its nodes and does not share them with other steps, which is node exclusivity inside the
    allocation. The step form of `--exclusive` would do the opposite (it implies --exact: only the
    requested CPUs, the rest of the node left to other steps).
    exclusive=False adds `--exact`, so the step takes only ranks x cores and other steps can share
    its nodes. --cpus-per-task is always given so a block's inherited SLURM_CPUS_PER_TASK
    cannot change the step. --time is rounded up to minutes by Slurm.
    `mpi=None` leaves the plugin to the cluster's MpiDefault; Debian's Open MPI needs "pmix".
    --kill-on-bad-exit=1: one rank that fails ends the step, as mpirun and Flux (exit-on-error) end theirs;
    srun's default leaves the other ranks waiting for it in MPI_Init or a collective until a time limit.
    """
    argv = [
        "srun",
        "--nodes", str(spec.nodes),
        "--ntasks", str(spec.ranks),
        "--ntasks-per-node", str(spec.ranks_per_node),
        "--cpus-per-task", str(spec.cores_per_rank),
        "--kill-on-bad-exit=1",
    ]
    if spec.gpus_per_rank:
        argv += ["--gpus-per-task", str(spec.gpus_per_rank)]
    if not spec.exclusive:
        argv.append("--exact")
    if spec.walltime is not None:
        argv += ["--time", format_clock(spec.walltime)]
    if nodelist is not None:
        argv += ["--nodelist", ",".join(_host_list("nodelist", nodelist, spec.nodes))]
    if mpi is not None:
        if not isinstance(mpi, str) or not re.fullmatch(r"[A-Za-z0-9_]+", mpi):
            raise SpecError(f"mpi={mpi!r} is not an MPI plugin name: give one `srun --mpi=list` shows, e.g. 'pmix'")
        argv.append(f"--mpi={mpi}")
    return argv
