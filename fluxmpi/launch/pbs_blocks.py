"""Blocks on PBS Pro: Parsl's PBSProProvider shaped like fluxmpi's Slurm blocks, and the paths that run on PBS.

A block is one PBS job of `select=N:ncpus=C[:ngpus=G]` chunks with `place=scatter:excl`: one chunk per node and
the nodes to itself, as ALCF's Polaris documentation writes its MPI jobs (https://docs.alcf.anl.gov/polaris/
running-jobs/: `#PBS -l select=2:system=polaris`, `#PBS -l place=scatter`); `excl` is what `exclusive=True`
is on Slurm (fluxmpi.launch.blocks). Ranks start with the site's `mpiexec` (fluxmpi.launchers: PALS on a Cray,
MPICH's hydra or Open MPI elsewhere), over the hosts of `$PBS_NODEFILE`, which Parsl's MPI-mode pool reads.
"""

from __future__ import annotations

import logging
import os
import shlex

from parsl.launchers import MpiExecLauncher, SimpleLauncher
from parsl.launchers.base import Launcher
from parsl.providers import PBSProProvider

from ..site import Site
from ..spec import SpecError, format_clock
from .blocks import BlockShape

logger = logging.getLogger(__name__)

# The paths a PBS site runs: the MPI-mode HTEX with mpiexec, static blocks (a task over each whole block, by
# mpiexec), one worker per GPU over mpiexec, and Flux inside the PBS job (its brokers started by mpiexec).
PBS_PATHS = ("htex-mpiexec", "static", "htex-gpus", "flux-jobs")
# What `@fluxmpi.mpi_app` tasks start their ranks with on a PBS site, by Site.mpiexec (fluxmpi.launchers).
RANK_LAUNCHERS = {"pals": "mpiexec-pals", "mpich": "mpiexec-mpich", "openmpi": "mpiexec-openmpi"}
# Parsl's MpiExecLauncher writes `mpiexec BIND none OVERRIDES -n WORKERS --hostfile NODES ...`: the binding flag and
# what puts one pool on each node, in each mpiexec's own words (Polaris' Parsl config: --cpu-bind, --ppn 1).
_POOL_FLAGS = {"pals": ("--cpu-bind", "--ppn 1"), "mpich": ("-bind-to", "-ppn 1"),
               "openmpi": ("--bind-to", "--map-by ppr:1:node")}


def check_pbs_path(site: Site, path: str) -> None:
    """Refuse, before anything is submitted, a path that does not run on the site's batch system."""
    if site.scheduler == "pbs" and path not in PBS_PATHS:
        raise SpecError(f"path {path!r} runs on Slurm only; on the PBS site {site.name} use one of "
                        f"{', '.join(PBS_PATHS)} (for MPI tasks of mixed sizes: htex-mpiexec)")
    if site.scheduler == "pbs" and site.mpiexec not in RANK_LAUNCHERS:
        raise SpecError(f"site {site.name}: mpiexec={site.mpiexec!r} is not known: give one of "
                        f"{', '.join(RANK_LAUNCHERS)} (Site.from_pbs(mpiexec=...))")


def rank_launcher(site: Site) -> str:
    """The fluxmpi.launchers name a task's ranks start with on `site`."""
    return RANK_LAUNCHERS[site.mpiexec]


def pool_per_node_launcher(site: Site) -> Launcher:
    """Parsl's MpiExecLauncher putting one worker pool on every node of the block."""
    bind, overrides = _POOL_FLAGS[site.mpiexec]
    if site.mpiexec == "pals":
        overrides += f" --depth={site.cores_per_node}"   # the pool's workers may use every core of its node
    return MpiExecLauncher(bind_cmd=bind, overrides=overrides)


class PolledPBSProProvider(PBSProProvider):
    """A PBSProProvider whose blocks' states Parsl polls every `status_period` seconds (PBSProProvider: 60)."""

    def __init__(self, status_period: int = 60, **kwargs):
        super().__init__(**kwargs)
        self.status_period = status_period

    @property
    def status_polling_interval(self) -> int:
        return self.status_period


def pbs_options(site: Site) -> list[str]:
    """The `#PBS` lines every block carries besides Parsl's own (walltime, select, output files).

    place=scatter:excl: one chunk per node, nodes to the block alone. -r n: not rerunnable, so a block that lost
    a node is not requeued under the same id (Parsl would wait on it instead of starting another; the
    `--no-requeue` of fluxmpi's Slurm blocks). The site's own lines last."""
    return ["-l place=scatter:excl", "-r n", *site.batch_options]


def environment_lines(site: Site) -> str:
    """`export` lines giving the block this process's PATH and the site's variables.

    PBS starts a job with PATH=/bin:/usr/bin and none of the submitter's variables, where sbatch passes them all.
    `qsub -V` would pass them, but OpenPBS 23.06's qsub sends none with it (its env_array_to_varlist returns
    before filling the list; fixed upstream in commit 494e0f018, measured here: the job's Variable_List held only
    PBS_O_*), and on a real site the login node's whole environment is not what compute nodes want either. So the
    block gets exactly what the worker pool needs: the Python on PATH, and the site's variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **site.env}
    return "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in env.items())


def pbs_provider(site: Site, shape: BlockShape, worker_init: str = "", launcher: Launcher | None = None,
                 status_period: int = 60) -> PBSProProvider:
    """A PBSProProvider holding exactly `shape.blocks` blocks of `shape.nodes_per_block` whole nodes."""
    if site.scheduler != "pbs":
        raise SpecError(f"site {site.name} is a {site.scheduler} site, not PBS")
    init = "\n".join(line for line in (environment_lines(site), site.worker_init, worker_init) if line)
    return PolledPBSProProvider(
        status_period=status_period,
        queue=site.partition,
        nodes_per_block=shape.nodes_per_block,
        cpus_per_node=site.cores_per_node,
        select_options=f"ngpus={site.gpus_per_node}" if site.gpus_per_node else "",
        init_blocks=shape.blocks,
        min_blocks=shape.blocks,
        max_blocks=shape.blocks,
        walltime=format_clock(shape.walltime),
        scheduler_options="\n".join(f"#PBS {opt}" for opt in pbs_options(site)),
        worker_init=init,
        launcher=launcher or SimpleLauncher(),
        cmd_timeout=30,
    )
