"""The launch paths by name: how each builds its Parsl config, launches ranks, and bounds what it accepts.

`fluxmpi run` and `fluxmpi bench` treat every path alike through this table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from parsl.config import Config

from ..site import Site
from ..spec import MPITaskSpec, SpecError
from .resilience import Resilience
from .scaling import Scaling

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a path needs to know about a run's tasks before building its config."""
    nodes_per_block: int
    blocks: int
    gate_capacity: int         # nodes the runner lets be busy at once (0: the executor admits, or queues)
    walltime: int | str = 1800
    worker_init: str = ""
    run_dir: str = "runinfo"
    resilience: Resilience = field(default_factory=Resilience)
    admission: str = "largest-first"      # the executor's node gate policy (fluxmpi.launch.gate)
    scaling: Scaling = field(default_factory=Scaling)    # blocks held at once, idle ones given back


@dataclass(frozen=True)
class LaunchPath:
    name: str
    summary: str
    launcher: str                                    # how ranks start: a name of fluxmpi.launchers
    build_config: Callable[[Site, Plan], Config]
    plan: Callable[[Site, list[MPITaskSpec], int | None], Plan]
    resource_spec: Callable[[MPITaskSpec], dict | None]
    label: str
    # For paths whose tasks depend on the site (Flux): resources from spec and site (used instead of
    # resource_spec), and extra keyword arguments for the task bodies (fluxmpi.apps).
    site_resource_spec: Callable[[MPITaskSpec, Site], dict | None] | None = None
    task_kwargs: Callable[[Site, Plan], dict] | None = None
    # Whether the executor starts a new block when one ends (node failure, walltime); FluxExecutor does not.
    replaces_blocks: bool = True

    def resources(self, spec: MPITaskSpec, site: Site) -> dict | None:
        """The resource_specification a task of `spec` is submitted with on `site`."""
        if self.site_resource_spec is not None:
            return self.site_resource_spec(spec, site)
        return self.resource_spec(spec)

    def launcher_on(self, site: Site) -> str:
        """How ranks start on `site`: the path's own launcher, or on a PBS site the site's mpiexec where the path's
        is srun or an mpiexec (Flux starts the ranks itself on every batch system)."""
        if site.scheduler == "pbs" and (self.launcher == "srun" or self.launcher.startswith("mpiexec")):
            from .pbs_blocks import rank_launcher
            return rank_launcher(site)
        return self.launcher

    def task_options(self, site: Site, plan: Plan) -> dict:
        return self.task_kwargs(site, plan) if self.task_kwargs else {}

    def check(self, site: Site, specs: list[MPITaskSpec], nodes_per_block: int | None = None) -> Plan:
        """Validate every task against this path and the site; raise SpecError before anything is submitted."""
        if not specs:
            raise SpecError("no tasks to run: give --repeats 1 or more")
        if site.scheduler == "pbs":
            from .pbs_blocks import check_pbs_path
            check_pbs_path(site, self.name)
        plan = self.plan(site, specs, nodes_per_block)
        for i, spec in enumerate(specs):
            try:
                spec.check_fits(plan.nodes_per_block, site.cores_per_node, site.gpus_per_node, where="block")
            except SpecError as err:
                raise SpecError(f"task {i} ({spec}): {err}") from None
        return plan


def _block_for(site: Site, specs: list[MPITaskSpec], nodes_per_block: int | None) -> int:
    return nodes_per_block or site.nodes


def _plan_shared_block(site, specs, nodes_per_block):
    npb = _block_for(site, specs, nodes_per_block)
    return Plan(nodes_per_block=npb, blocks=1, gate_capacity=0)   # the executor gates (GatedMPIExecutor)


def _plan_static(site, specs, nodes_per_block):
    sizes = sorted({s.nodes for s in specs})
    if len(sizes) > 1:
        raise SpecError(f"static blocks run one task per block, so all tasks must span the same number of "
                        f"nodes; got sizes {sizes}: use --path htex for mixed sizes")
    npb = nodes_per_block or sizes[0]
    if npb != sizes[0]:
        raise SpecError(f"static blocks of {npb} nodes cannot run {sizes[0]}-node tasks: "
                        f"set --nodes-per-block {sizes[0]}")
    blocks = max(1, min(len(specs), site.nodes // npb))
    return Plan(nodes_per_block=npb, blocks=blocks, gate_capacity=0)


def _plan_plain(site, specs, nodes_per_block):
    return Plan(nodes_per_block=_block_for(site, specs, nodes_per_block), blocks=1, gate_capacity=0)


def _htex_config(mpi_launcher: str):
    def build(site: Site, plan: Plan) -> Config:
        from .htex import htex_mpi_config
        return htex_mpi_config(site, mpi_launcher=mpi_launcher, nodes_per_block=plan.nodes_per_block,
                               blocks=plan.blocks, walltime=plan.walltime, worker_init=plan.worker_init,
                               run_dir=plan.run_dir, label=f"htex_{mpi_launcher}", resilience=plan.resilience,
                               admission=plan.admission)
    return build


def _static_config(site: Site, plan: Plan) -> Config:
    from .static import static_blocks_config
    return static_blocks_config(site, nodes_per_block=plan.nodes_per_block, blocks=plan.blocks,
                                walltime=plan.walltime, worker_init=plan.worker_init, run_dir=plan.run_dir,
                                resilience=plan.resilience)


def _plain_config(site: Site, plan: Plan) -> Config:
    from .plain import plain_htex_config
    return plain_htex_config(site, nodes_per_block=plan.nodes_per_block, walltime=plan.walltime,
                             worker_init=plan.worker_init, run_dir=plan.run_dir)


def _plan_flux(site, specs, nodes_per_block):
    from .flux.executor import check_exclusive_fits
    from .flux.install import check_flux

    check_flux()  # flux, its Python bindings and their versions, before anything is submitted
    for i, spec in enumerate(specs):
        try:
            check_exclusive_fits(spec, site.cores_per_node)
        except SpecError as err:
            raise SpecError(f"task {i}: {err}") from None
    # One block (FluxExecutor submits one); no gate: Flux queues the tasks and places them itself.
    return Plan(nodes_per_block=_block_for(site, specs, nodes_per_block), blocks=1, gate_capacity=0)


def _flux_config(site: Site, plan: Plan) -> Config:
    from .flux.executor import flux_config
    return flux_config(site, nodes_per_block=plan.nodes_per_block, walltime=plan.walltime,
                       worker_init=plan.worker_init, run_dir=plan.run_dir, resilience=plan.resilience)


def _flux_resources(spec: MPITaskSpec, site: Site) -> dict:
    from .flux.executor import flux_resource_spec
    return flux_resource_spec(spec, site.cores_per_node)


def _flux_task_kwargs(site: Site, plan: Plan) -> dict:
    from .flux.executor import task_init
    return {"init": task_init(site, plan.worker_init)}


def _plan_flux_jobs(site, specs, nodes_per_block):
    from .flux.install import check_flux

    check_flux()
    # One block at a time unless the run's Scaling says more (replaced when it ends); the executor's own gate
    # admits (exclusive is a jobspec key here, no core split).
    return Plan(nodes_per_block=_block_for(site, specs, nodes_per_block), blocks=1, gate_capacity=0)


def _flux_jobs_config(site: Site, plan: Plan) -> Config:
    from .flux.jobs import flux_jobs_config
    return flux_jobs_config(site, nodes_per_block=plan.nodes_per_block, walltime=plan.walltime,
                            worker_init=plan.worker_init, run_dir=plan.run_dir,
                            status_period=plan.resilience.status_period,
                            link_timeout=plan.resilience.heartbeat_threshold,
                            max_block_failures=plan.resilience.max_block_failures, admission=plan.admission,
                            max_blocks=plan.scaling.max_blocks, min_blocks=plan.scaling.min_blocks,
                            idle_release=plan.scaling.idle_release)


def _flux_jobs_resources(spec: MPITaskSpec) -> dict:
    from .flux.jobspec import resource_spec
    return resource_spec(spec)


PATHS: dict[str, LaunchPath] = {
    "htex": LaunchPath("htex", "HTEX MPI mode (MPIExecutor + SlurmProvider), ranks started by srun --mpi=pmix",
                       "srun", _htex_config("srun"), _plan_shared_block,
                       MPITaskSpec.parsl_resource_spec, "htex_srun"),
    "htex-mpiexec": LaunchPath("htex-mpiexec", "HTEX MPI mode, ranks started by Open MPI's mpirun",
                               "mpiexec-openmpi", _htex_config("mpiexec"), _plan_shared_block,
                               MPITaskSpec.parsl_resource_spec, "htex_mpiexec"),
    "static": LaunchPath("static", "HTEX static blocks: one task per block over all its nodes (srun)",
                         "srun", _static_config, _plan_static, lambda spec: None, "htex_static"),
    "plain": LaunchPath("plain", "out-of-the-box HTEX + SlurmProvider (shows the limitation)",
                        "mpirun-local", _plain_config, _plan_plain, lambda spec: None, "htex_plain"),
    "flux": LaunchPath("flux", "FluxExecutor + SlurmProvider: a Flux instance per block places the ranks (Flux PMI)",
                       "flux", _flux_config, _plan_flux, MPITaskSpec.flux_executor_spec, "flux",
                       site_resource_spec=_flux_resources, task_kwargs=_flux_task_kwargs, replaces_blocks=False),
    "flux-jobs": LaunchPath("flux-jobs", "Flux instance per block; fluxmpi submits each task as a Flux job running the "
                            "MPI app itself (no Python per rank)", "flux-jobs", _flux_jobs_config, _plan_flux_jobs,
                            _flux_jobs_resources, "flux_jobs"),
}


def get_path(name: str) -> LaunchPath:
    if name not in PATHS:
        raise SpecError(f"--path {name!r} is not a launch path: choose one of {', '.join(PATHS)}")
    return PATHS[name]
