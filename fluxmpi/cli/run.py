"""`fluxmpi run`: K concurrent copies of one MPI task through a launch path, with their placements checked."""

from __future__ import annotations

import click
from tqdm import tqdm

from ..launch.paths import PATHS
from .. import spackenv
from ..mpi_apps import APPS
from ..runner import RunError, run_tasks
from ..site import SiteError, open_site
from ..spec import MPITaskSpec, SpecError
from .common import fail


@click.command()
@click.option("--path", "path", type=click.Choice(list(PATHS)), default="htex", show_default=True,
              help="Launch path.")
@click.option("-N", "--nodes", default=None, help="Nodes per task.")
@click.option("--ranks-per-node", default=None, help="MPI ranks on each node.")
@click.option("-n", "--ranks", default=None, help="Total ranks (give two of nodes / ranks-per-node / ranks).")
@click.option("-c", "--cores-per-rank", default="1", show_default=True)
@click.option("--gpus-per-rank", default="0", show_default=True)
@click.option("--repeats", "-K", type=int, default=1, show_default=True, help="Copies of the task run concurrently.")
@click.option("--app", type=click.Choice(APPS), default="c", show_default=True)
@click.option("--sleep", type=float, default=None, help="Seconds each rank sleeps after MPI_Init.")
@click.option("--busy", type=float, default=None, help="Seconds each rank spins after MPI_Init.")
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: the embedded cluster (booted if none is up); slurm: the Slurm this machine uses.")
@click.option("--cluster-name", default="fluxmpi", show_default=True, help="Name of the local cluster to use.")
@click.option("--cluster-nodes", type=int, default=4, show_default=True, help="Nodes of a local cluster booted for this run.")
@click.option("--partition", default=None, help="Slurm partition [the default partition].")
@click.option("--nodes-per-block", type=int, default=None, help="Nodes in each Parsl block [all of the partition].")
@click.option("--walltime", default="00:30:00", show_default=True, help="Walltime of each block.")
@click.option("--task-timeout", type=float, default=600, show_default=True, help="Seconds before a task is killed.")
@click.option("--env-file", default=None,
              help="Env file the blocks source before starting workers (see `fluxmpi env`); checked first.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where records and Parsl logs go [./fluxmpi-runs/<time>-<path>].")
def run(path, nodes, ranks_per_node, ranks, cores_per_rank, gpus_per_rank, repeats, app, sleep, busy, cluster,
        cluster_name, cluster_nodes, partition, nodes_per_block, walltime, task_timeout, env_file, workdir) -> None:
    """Run --repeats copies of one MPI task concurrently and check where every rank ran.

    Prints a placement table (one row per task) and exits 1 if any task failed or was misplaced.
    """
    try:
        spec = MPITaskSpec.build(nodes=nodes, ranks_per_node=ranks_per_node, ranks=ranks,
                                 cores_per_rank=cores_per_rank, gpus_per_rank=gpus_per_rank)
        if repeats < 1:
            raise SpecError(f"--repeats {repeats} must be at least 1")
        worker_init = ""
        if env_file:
            path = spackenv.find_env_file(env_file)
            spackenv.validate_env_file(path)
            worker_init = spackenv.worker_init_line(path)
    except (SpecError, spackenv.EnvFileError) as err:
        fail(str(err), code=2)
    specs = [spec] * repeats
    try:
        with open_site(cluster, nodes=cluster_nodes, partition=partition, name=cluster_name,
                       log=lambda m: click.echo(m, err=True)) as site:
            PATHS[path].check(site, specs, nodes_per_block)   # refuse before booting Parsl
            click.echo(f"fluxmpi: {repeats} x {spec} via {path} on {site.name}", err=True)
            with tqdm(total=repeats, desc=f"{path}", unit="task", file=click.get_text_stream("stderr"),
                      disable=None) as bar:
                result = run_tasks(path, site, specs, app=app, workdir=workdir, sleep=sleep, busy=busy,
                                   nodes_per_block=nodes_per_block, walltime=walltime, task_timeout=task_timeout,
                                   worker_init=worker_init,
                                   on_progress=lambda done, total: bar.update(done - bar.n))
    except (SpecError, SiteError, RunError) as err:
        fail(str(err), code=2 if isinstance(err, SpecError) else 1)
    click.echo(result.placement_report)
    for task in result.failed:
        click.echo(f"fluxmpi: task {task.task} failed: {task.error}", err=True)
    click.echo(f"fluxmpi: {len(result.tasks) - len(result.failed)}/{len(result.tasks)} tasks ok, "
               f"{result.t_end - result.t_start:.1f}s; records and logs in {result.workdir}", err=True)
    raise SystemExit(0 if result.ok else 1)

