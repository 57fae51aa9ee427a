"""Static blocks: HTEX without MPI mode, one task at a time per block, the task spanning the block's nodes.

The workaround from before MPI mode: a fixed number of blocks (init = min = max), one worker per block on
its first node (SimpleLauncher), and each task launching over every node of its block (the block's
Slurm task counts are widened by `blocks.slurm_provider`; on PBS the site's mpiexec over $PBS_NODEFILE's hosts).
"""

from __future__ import annotations

import logging

from parsl.config import Config

from ..site import Site
from .blocks import STRATEGY_PERIOD, BlockShape, slurm_provider
from .executors import StaticBlocksExecutor
from .resilience import Resilience

logger = logging.getLogger(__name__)

def static_blocks_config(site: Site, *, nodes_per_block: int, blocks: int = 1, walltime: int | str = 1800,
                         worker_init: str = "", run_dir: str = "runinfo", label: str = "htex_static",
                         heartbeat_threshold: int | None = None,
                         resilience: Resilience | None = None) -> Config:
    """A Parsl Config where each of `blocks` blocks runs one MPI task at a time over its `nodes_per_block` nodes.

    Tasks must ask for exactly nodes_per_block nodes (fluxmpi checks this before submitting): a smaller task
    would leave nodes idle, a larger one cannot fit. resilience: as for htex.htex_mpi_config.
    """
    res = resilience or Resilience()
    threshold = heartbeat_threshold or res.heartbeat_threshold
    shape = BlockShape.build(site, nodes_per_block, blocks, walltime)
    if site.scheduler == "pbs":     # each task's ranks by the site's mpiexec over the block's $PBS_NODEFILE hosts
        from .pbs_blocks import check_pbs_path, pbs_provider, rank_launcher
        check_pbs_path(site, "static")
        provider = pbs_provider(site, shape, worker_init, status_period=res.status_period)
    else:
        provider = slurm_provider(site, shape, worker_init, status_period=res.status_period)
    executor = StaticBlocksExecutor(
        nodes_per_block=shape.nodes_per_block,
        label=label,
        address=site.address,
        max_workers_per_node=1,
        cores_per_worker=1,
        provider=provider,
        heartbeat_threshold=threshold,
        heartbeat_period=min(res.heartbeat_period, threshold - 1),
        block_error_handler=res.block_error_handler(),
    )
    if site.scheduler == "pbs":
        executor.fluxmpi_launcher = rank_launcher(site)
    return Config(executors=[executor], run_dir=run_dir, strategy="simple",
                  strategy_period=STRATEGY_PERIOD, max_idletime=3600)
