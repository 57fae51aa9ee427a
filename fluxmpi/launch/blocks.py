"""What every Slurm-block launch path shares: the block shape and the SlurmProvider built from it."""

from __future__ import annotations

from dataclasses import dataclass

from parsl.launchers import SimpleLauncher
from parsl.launchers.base import Launcher
from parsl.providers import SlurmProvider

from ..site import Site
from ..spec import SpecError, format_clock, parse_walltime


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


def slurm_provider(site: Site, shape: BlockShape, worker_init: str = "",
                   launcher: Launcher | None = None) -> SlurmProvider:
    """A SlurmProvider holding exactly `shape.blocks` exclusive blocks for the whole run.

    exclusive=True matters: without it a block gets one CPU per node and MPI steps inside it fail.
    init = min = max keeps the blocks for the run (no scaling in while tasks wait in fluxmpi's queue).
    """
    init = "\n".join(line for line in (site.worker_init, worker_init, SLURM_TASKS_FIX) if line)
    return SlurmProvider(
        partition=site.partition,
        nodes_per_block=shape.nodes_per_block,
        init_blocks=shape.blocks,
        min_blocks=shape.blocks,
        max_blocks=shape.blocks,
        walltime=format_clock(shape.walltime),
        exclusive=True,
        worker_init=init,
        launcher=launcher or SimpleLauncher(),
        cmd_timeout=30,
    )
