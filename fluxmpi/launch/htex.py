"""HTEX in MPI mode: Parsl's `MPIExecutor` on Slurm or PBS blocks, ranks launched with srun or mpiexec.

One worker pool runs on the first node of each block; each task's launcher spreads its ranks over the nodes
the pool's MPI scheduler handed it (`PARSL_MPI_NODELIST`). fluxmpi composes that launcher line itself from the
task spec (`fluxmpi.apps`), so it is integral and uses flags the installed MPI accepts.
"""

from __future__ import annotations

import logging

from parsl.config import Config

from ..site import Site
from .blocks import STRATEGY_PERIOD, BlockShape, slurm_provider
from .executors import GatedMPIExecutor
from .resilience import Resilience

logger = logging.getLogger(__name__)

MPI_LAUNCHERS = ("srun", "mpiexec")       # Parsl's MPIExecutor(mpi_launcher=...)
# How fluxmpi's task bodies start ranks under each (fluxmpi.apps.launch_argv): Debian's mpiexec is Open MPI's.
_RANK_LAUNCHER = {"srun": "srun", "mpiexec": "mpiexec-openmpi"}


def htex_mpi_config(site: Site, *, mpi_launcher: str = "srun", nodes_per_block: int | None = None,
                    blocks: int = 1, walltime: int | str = 1800, worker_init: str = "",
                    run_dir: str = "runinfo", label: str = "htex_mpi",
                    heartbeat_threshold: int | None = None, resilience: Resilience | None = None,
                    admission: str = "largest-first") -> Config:
    """A Parsl Config running MPI tasks through MPIExecutor + SlurmProvider (or PBSProProvider on a PBS site,
    where mpi_launcher must be "mpiexec" and the site's `mpiexec` says which one: fluxmpi.launch.pbs_blocks).

    site: where to run (partition, node size, address compute nodes use to reach this process).
    mpi_launcher: "srun" (Slurm PMIx) or "mpiexec" (the MPI's own launcher inside the block).
    nodes_per_block: nodes in each block [all nodes of the partition]; a task may span up to this many.
    blocks: blocks held for the whole run (keep 1: the pool's MPI scheduler works per block).
    walltime: of each block, seconds or Slurm form ("00:30:00").
    worker_init: extra shell lines run in each block before the worker pool (e.g. `source env.sh`).
    resilience: heartbeats, block status polling and tolerated block failures [Resilience()];
        heartbeat_threshold, if given, overrides its threshold.
    admission: which waiting task the executor's node gate admits first (fluxmpi.launch.gate).
    """
    res = resilience or Resilience()
    threshold = heartbeat_threshold or res.heartbeat_threshold
    if mpi_launcher not in MPI_LAUNCHERS:
        raise ValueError(f"mpi_launcher={mpi_launcher!r} is not one of {MPI_LAUNCHERS}")
    shape = BlockShape.build(site, nodes_per_block, blocks, walltime)
    if site.scheduler == "pbs":     # ranks start with the site's mpiexec over $PBS_NODEFILE's hosts
        from .pbs_blocks import check_pbs_path, pbs_provider, rank_launcher
        check_pbs_path(site, "htex-mpiexec" if mpi_launcher == "mpiexec" else "htex")
        provider = pbs_provider(site, shape, worker_init, status_period=res.status_period)
        ranks_by = rank_launcher(site)
    else:
        provider = slurm_provider(site, shape, worker_init, status_period=res.status_period)
        ranks_by = _RANK_LAUNCHER[mpi_launcher]
    executor = GatedMPIExecutor(
        nodes_per_block=shape.nodes_per_block,
        admission=admission,
        fluxmpi_launcher=ranks_by,
        label=label,
        address=site.address,
        # Each task holds at least one node, so a block never runs more tasks than it has nodes.
        max_workers_per_block=shape.nodes_per_block,
        mpi_launcher=mpi_launcher,
        provider=provider,
        heartbeat_threshold=threshold,
        heartbeat_period=min(res.heartbeat_period, threshold - 1),
        block_error_handler=res.block_error_handler(),
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="simple",
                  strategy_period=STRATEGY_PERIOD, max_idletime=3600,
                  initialize_logging=True)
