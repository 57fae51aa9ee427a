"""What every Slurm-block launch path shares: the block shape and the SlurmProvider built from it.

How a run rides out failures is fluxmpi.launch.resilience; the watch on the blocks' jobs, fluxmpi.launch.watch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from parsl.launchers import SimpleLauncher
from parsl.launchers.base import Launcher
from parsl.providers import SlurmProvider

from ..site import Site
from ..spec import SpecError, format_clock, parse_walltime

logger = logging.getLogger(__name__)


# SlurmProvider writes `--ntasks-per-node=1` into every block, which leaves SLURM_NTASKS* saying one task per
# node: Open MPI's mpirun counts slots from them and refuses more ranks, and srun steps inherit them. The
# blocks are exclusive, so widen the counts to every core Slurm gave the job.
SLURM_TASKS_FIX = "\n".join([
    "# fluxmpi: let srun/mpirun inside this block use every core of every node",
    'export SLURM_NTASKS_PER_NODE="${SLURM_CPUS_ON_NODE}"',
    'export SLURM_TASKS_PER_NODE="${SLURM_CPUS_ON_NODE}(x${SLURM_JOB_NUM_NODES})"',
    'export SLURM_NTASKS="$((SLURM_CPUS_ON_NODE * SLURM_JOB_NUM_NODES))"',
    'export SLURM_NPROCS="${SLURM_NTASKS}"',
])


# Parsl submits a config's initial blocks at its strategy's first tick, one strategy period after load (5 s by
# default: seen here as 4-5 s of every HTEX run's start-up spent before sbatch). The strategy itself is cheap and
# reads cached states (Slurm is still asked only every status_period), so tick every second.
STRATEGY_PERIOD = 1


@dataclass(frozen=True)
class BlockShape:
    """How many nodes a block has, how many blocks run at once, and for how long."""
    nodes_per_block: int
    blocks: int = 1
    walltime: int = 1800          # seconds

    @classmethod
    def build(cls, site: Site, nodes_per_block: int | None = None, blocks: int = 1,
              walltime: int | str = 1800) -> "BlockShape":
        npb = site.nodes if nodes_per_block is None else nodes_per_block
        if isinstance(npb, bool) or not isinstance(npb, int) or npb < 1:
            raise SpecError(f"nodes_per_block={npb!r} is not a positive whole number")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise SpecError(f"blocks={blocks!r} is not a positive whole number")
        if npb * blocks > site.nodes:
            raise SpecError(
                f"{blocks} block(s) of {npb} nodes need {npb * blocks} nodes but partition {site.partition!r} "
                f"of {site.name} has {site.nodes}: use fewer blocks or smaller ones")
        seconds = parse_walltime(walltime)
        return cls(nodes_per_block=npb, blocks=blocks, walltime=seconds or 1800)


class PolledSlurmProvider(SlurmProvider):
    """A SlurmProvider whose blocks' states Parsl polls every `status_period` seconds (SlurmProvider: 60)."""

    def __init__(self, status_period: int = 60, **kwargs):
        super().__init__(**kwargs)
        self.status_period = status_period

    @property
    def status_polling_interval(self) -> int:
        return self.status_period


def slurm_provider(site: Site, shape: BlockShape, worker_init: str = "",
                   launcher: Launcher | None = None, status_period: int = 60,
                   sbatch_options: tuple[str, ...] = ()) -> SlurmProvider:
    """A SlurmProvider holding exactly `shape.blocks` exclusive blocks for the whole run.

    exclusive=True matters: without it a block gets one CPU per node and MPI steps inside it fail.
    init = min = max keeps the blocks for the run (no scaling in while tasks wait in fluxmpi's queue); a block
    that ends (node failure, walltime) is replaced by Parsl's strategy, noticed within `status_period` seconds.
    --no-requeue: Slurm would requeue a block that lost a node under the same job id, eligible again only after
    a delay (seen here: ~3 min), and Parsl, seeing it pending, would start no other block meanwhile.
    sbatch_options: more `#SBATCH` options a path needs (the Flux path's --no-kill).
    """
    init = "\n".join(line for line in (site.worker_init, worker_init, SLURM_TASKS_FIX) if line)
    return PolledSlurmProvider(
        status_period=status_period,
        partition=site.partition,
        nodes_per_block=shape.nodes_per_block,
        init_blocks=shape.blocks,
        min_blocks=shape.blocks,
        max_blocks=shape.blocks,
        walltime=format_clock(shape.walltime),
        exclusive=True,
        scheduler_options="\n".join(f"#SBATCH {opt}" for opt in ("--no-requeue", *sbatch_options,
                                                                   *site.batch_options)),
        worker_init=init,
        launcher=launcher or SimpleLauncher(),
        cmd_timeout=30,
    )
