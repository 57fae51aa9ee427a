"""`fluxmpi.config(path, site=..., **options)`: the one public way to get a launch path's Parsl Config.

    import parsl, fluxmpi
    with fluxmpi.open_site("slurm", partition="compute") as site:     # or "local" for the embedded cluster
        parsl.load(fluxmpi.config("htex", site=site, nodes_per_block=4))
        ... the workflow's own apps, unchanged ...

Every executor in these configs carries fluxmpi's fixes itself (fluxmpi.launch.executors, fluxmpi.launch.flux), so
nothing else in the workflow needs to change. Options each path takes (all optional):

| option | paths | meaning |
|---|---|---|
| nodes_per_block | all | nodes of each block [all nodes of the site's partition]; a task may span up to this |
| walltime | all | of each block: seconds or Slurm form "HH:MM:SS" [1800] |
| worker_init | all | shell lines every block runs first (e.g. `module load ...`) |
| env_file | all | an env file the blocks source (see `fluxmpi env`), checked before anything is submitted |
| run_dir | all | Parsl's run directory ["runinfo"] |
| retries | all | reruns of a failed task (Parsl's Config.retries) [0] |
| resilience | htex, htex-mpiexec, static, flux, flux-jobs | heartbeats, block polling, tolerated block failures (fluxmpi.launch.blocks.Resilience) |
| admission | htex, htex-mpiexec, flux-jobs | which waiting task the node gate admits first: "largest-first" or "in-order" |
| blocks | static | blocks held at once [as many as the partition holds] |
| max_blocks, min_blocks, idle_release | flux-jobs | elastic blocks: up to max_blocks while tasks wait, each given back after idle_release idle seconds, down to min_blocks (fluxmpi.launch.scaling) [1, 0, never] |

Besides the MPI paths, "htex-gpus" is one task per GPU (fluxmpi.launch.gpu_workers): a worker per GPU on every
node of the block, for single-node GPU tasks (nodes_per_block, walltime, worker_init, env_file, run_dir, retries,
resilience).
"""

from __future__ import annotations

import logging
from typing import Any

from parsl.config import Config

from .launch.resilience import Resilience
from .site import Site
from .spec import SpecError

logger = logging.getLogger(__name__)

COMMON = ("nodes_per_block", "walltime", "worker_init", "env_file", "run_dir", "retries")
OPTIONS = {
    "htex": COMMON + ("resilience", "admission"),
    "htex-mpiexec": COMMON + ("resilience", "admission"),
    "static": COMMON + ("resilience", "blocks"),
    "flux": COMMON + ("resilience",),
    "flux-jobs": COMMON + ("resilience", "admission", "max_blocks", "min_blocks", "idle_release"),
    "plain": COMMON,
    "htex-gpus": COMMON + ("resilience",),
}


def config(path: str, site: Site, **options: Any) -> Config:
    """The Parsl Config of launch path `path` on `site`; see the module docstring for the options."""
    if path not in OPTIONS:
        raise SpecError(f"path {path!r} is not a launch path: choose one of {', '.join(OPTIONS)}")
    if not isinstance(site, Site):
        raise SpecError(f"site={site!r} is not a fluxmpi.Site: get one from fluxmpi.open_site('local') or "
                        f"open_site('slurm', partition=...), or build Site(...)")
    unknown = sorted(set(options) - set(OPTIONS[path]))
    if unknown:
        raise SpecError(f"option(s) {', '.join(unknown)} do not apply to the {path} path: it takes "
                        f"{', '.join(OPTIONS[path])}")
    if site.scheduler == "pbs":
        from .launch.pbs_blocks import check_pbs_path
        check_pbs_path(site, path)
    res = options.get("resilience") or Resilience()
    if not isinstance(res, Resilience):
        raise SpecError(f"resilience={res!r} is not a fluxmpi Resilience(...)")
    retries = options.get("retries", res.retries)
    worker_init = _worker_init(options.get("worker_init", ""), options.get("env_file"))
    common = dict(nodes_per_block=options.get("nodes_per_block"), walltime=options.get("walltime", 1800),
                  worker_init=worker_init, run_dir=options.get("run_dir", "runinfo"))
    site.apply_env()     # sbatch, srun and Flux's ssh connector in this process read the site's variables
    if path in ("htex", "htex-mpiexec"):
        from .launch.htex import htex_mpi_config
        built = htex_mpi_config(site, mpi_launcher="srun" if path == "htex" else "mpiexec", resilience=res,
                                admission=options.get("admission", "largest-first"),
                                label="htex_srun" if path == "htex" else "htex_mpiexec", **common)
    elif path == "static":
        from .launch.static import static_blocks_config
        npb = common.pop("nodes_per_block") or site.nodes
        built = static_blocks_config(site, nodes_per_block=npb, blocks=options.get("blocks") or
                                     max(1, site.nodes // npb), resilience=res, **common)
    elif path == "flux":
        from .launch.flux.executor import flux_config
        built = flux_config(site, resilience=res, **common)
    elif path == "flux-jobs":
        from .launch.flux.jobs import flux_jobs_config
        built = flux_jobs_config(site, status_period=res.status_period, link_timeout=res.heartbeat_threshold,
                                 max_block_failures=res.max_block_failures,
                                 admission=options.get("admission", "largest-first"),
                                 max_blocks=options.get("max_blocks", 1), min_blocks=options.get("min_blocks", 0),
                                 idle_release=options.get("idle_release"), **common)
    elif path == "htex-gpus":
        from .launch.gpu_workers import gpu_workers_config
        built = gpu_workers_config(site, resilience=res, **common)
    else:
        from .launch.plain import plain_htex_config
        built = plain_htex_config(site, **common)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SpecError(f"retries={retries!r} must be a whole number of at least 0")
    built.retries = retries
    from .container import site_binds
    binds = site_binds(site, path)
    for ex in built.executors:     # what @mpi_app tasks in a container bind in (fluxmpi.mpiapp)
        ex.fluxmpi_container_binds = binds
    logger.info("config for path %s on %s: %s", path, site.name, [ex.label for ex in built.executors])
    return built


def _worker_init(worker_init: str, env_file: Any) -> str:
    if not env_file:
        return worker_init
    from . import spackenv
    found = spackenv.find_env_file(env_file)
    spackenv.validate_env_file(found)
    return "\n".join(line for line in (worker_init, spackenv.worker_init_line(found)) if line)
