"""The out-of-the-box HTEX + SlurmProvider config, kept to show what it cannot do.

SlurmProvider's defaults start a worker pool on every node of a block (SrunLauncher) with
`--ntasks-per-node=1`. A task then runs `mpirun` on whichever node its worker is on: the block's Slurm
variables give that mpirun one slot per node, so a multi-rank-per-node task is refused, and nothing spreads a
task over the nodes of its choice. `fluxmpi run --path plain` shows this failing where the other paths pass.
"""

from __future__ import annotations

import logging

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher

from ..site import Site
from .blocks import BlockShape, slurm_provider

logger = logging.getLogger(__name__)


def plain_htex_config(site: Site, *, nodes_per_block: int | None = None, walltime: int | str = 1800,
                      worker_init: str = "", run_dir: str = "runinfo", label: str = "htex_plain") -> Config:
    shape = BlockShape.build(site, nodes_per_block, 1, walltime)
    executor = HighThroughputExecutor(
        label=label,
        address=site.address,
        max_workers_per_node=1,
        provider=slurm_provider(site, shape, worker_init, launcher=SrunLauncher()),
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="simple", max_idletime=3600)
