"""One task per GPU: HTEX with a worker pool on every node of a block and one worker per GPU.

The set-up of single-GPU ensembles (Polaris' "one task per GPU"): Parsl's HighThroughputExecutor with
`available_accelerators`, which gives each worker its own GPU (CUDA_VISIBLE_DEVICES and its AMD and Intel
counterparts), and the CPU affinity that matches (`block`: each worker its share of the node's cores, where
every GPU can have at least one). Tasks are ordinary Parsl apps of one node; node-spanning MPI tasks use the
other paths. A pool runs on each node (SrunLauncher, one task per node: the block's widened Slurm task counts,
fluxmpi.launch.blocks, would otherwise put two pools on one node; on PBS, Parsl's MpiExecLauncher over
$PBS_NODEFILE, as in Polaris' Parsl configuration).
"""

from __future__ import annotations

import logging

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher

from ..logs import log_into
from ..site import Site
from ..spec import SpecError
from .blocks import STRATEGY_PERIOD, BlockShape, slurm_provider
from .executors import EarlyBlocks
from .resilience import Resilience

logger = logging.getLogger(__name__)


class GPUWorkersExecutor(EarlyBlocks, HighThroughputExecutor):
    """HTEX with one worker per GPU of each node; its records go to the run directory's log as well."""

    def start(self) -> None:
        log_into(self.run_dir)
        logger.info("%s: %d workers per node, one per GPU %s, cpu affinity %s", self.label,
                    len(self.available_accelerators), ",".join(self.available_accelerators), self.cpu_affinity)
        super().start()


def gpu_affinity_for(site: Site) -> str:
    """Parsl's cpu_affinity for one worker per GPU: `block` (cores split evenly) where each GPU's worker gets at
    least one core, else `none` (binding would leave a worker without a core)."""
    return "block" if site.cores_per_node >= site.gpus_per_node else "none"


def gpu_workers_config(site: Site, *, nodes_per_block: int | None = None, walltime: int | str = 1800,
                       worker_init: str = "", run_dir: str = "runinfo", label: str = "htex_gpus",
                       resilience: Resilience | None = None) -> Config:
    """A Parsl Config running one task per GPU on `nodes_per_block` nodes [all of the site's partition]."""
    if site.gpus_per_node < 1:
        raise SpecError(f"{site.name} has no GPUs per node (partition {site.partition!r}): the one-task-per-GPU "
                        "config needs nodes with GPUs (Slurm GRES gpu, PBS resources_available.ngpus); use the htex "
                        "path for CPU tasks")
    res = resilience or Resilience()
    shape = BlockShape.build(site, nodes_per_block, 1, walltime)
    if site.scheduler == "pbs":     # Polaris' config: a pool per node by mpiexec over $PBS_NODEFILE
        from .pbs_blocks import check_pbs_path, pbs_provider, pool_per_node_launcher
        check_pbs_path(site, "htex-gpus")
        provider = pbs_provider(site, shape, worker_init, launcher=pool_per_node_launcher(site),
                                status_period=res.status_period)
    else:
        provider = slurm_provider(site, shape, worker_init, launcher=SrunLauncher(overrides="--ntasks-per-node=1"),
                                  status_period=res.status_period)
    executor = GPUWorkersExecutor(
        label=label,
        address=site.address,
        available_accelerators=site.gpus_per_node,
        max_workers_per_node=site.gpus_per_node,
        # The pool starts min(max_workers_per_node, cores / cores_per_worker) workers: a GPU's share of the cores,
        # so fewer cores than GPUs still gives every GPU its worker.
        cores_per_worker=site.cores_per_node / site.gpus_per_node,
        cpu_affinity=gpu_affinity_for(site),
        provider=provider,
        heartbeat_threshold=res.heartbeat_threshold,
        heartbeat_period=min(res.heartbeat_period, res.heartbeat_threshold - 1),
        block_error_handler=res.block_error_handler(),
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="simple", strategy_period=STRATEGY_PERIOD,
                  max_idletime=3600, initialize_logging=True)
