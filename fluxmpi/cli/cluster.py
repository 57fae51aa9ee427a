"""`fluxmpi cluster up|down|status|env`: the local multi-node cluster (Slurm, or OpenPBS with --scheduler pbs)."""

from __future__ import annotations

import logging

import click

from ..cluster import (
    ClusterError,
    ClusterLayout,
    LayoutError,
    LocalCluster,
    PreflightError,
)
from ..cluster.layout import (
    DEFAULT_NAME,
    DEFAULT_NODES,
    DEFAULT_RESUME_DELAY,
    load_state,
)
from .common import fail

logger = logging.getLogger(__name__)

name_option = click.option("--name", default=DEFAULT_NAME, show_default=True,
                           help="Cluster name (several can coexist).")


def _cluster(name: str) -> LocalCluster:
    state = load_state(name)
    return LocalCluster(ClusterLayout.from_json(state["layout"]) if state else ClusterLayout(name=name))


@click.group()
def cluster() -> None:
    """A real multi-node Slurm (or PBS) cluster on this machine (one network namespace per node)."""


@cluster.command()
@name_option
@click.option("-N", "--nodes", type=int, default=DEFAULT_NODES, show_default=True, help="Number of nodes.")
@click.option("--cpus-per-node", type=int, default=None, help="Cores Slurm sees per node [default: this machine's].")
@click.option("--gpus-per-node", type=int, default=0, show_default=True,
              help="GPUs Slurm schedules per node (GRES over stand-in device files: the binding is Slurm's own, "
                   "nothing computes).")
@click.option("--subnet", default="", help="Private IPv4 /24 for the nodes [default: derived from --name].")
@click.option("--timeout", type=float, default=90, show_default=True, help="Seconds to wait for idle nodes.")
@click.option("--elastic", is_flag=True,
              help="Slurm power saving: idle nodes power down (their daemons stop) and jobs power them up again.")
@click.option("--resume-delay", type=float, default=None,
              help=f"With --elastic: seconds a powered-down node takes to come back [{DEFAULT_RESUME_DELAY:g}].")
@click.option("--scheduler", type=click.Choice(["slurm", "pbs"]), default="slurm", show_default=True,
              help="The batch system: Slurm (Debian's packages) or OpenPBS (a build of the user's: --pbs-exec).")
@click.option("--pbs-exec", default="", metavar="DIR",
              help="With --scheduler pbs: the OpenPBS installation (PBS_EXEC) [$FLUXMPI_PBS_EXEC, /opt/openpbs, "
                   "/opt/pbs].")
def up(name: str, nodes: int, cpus_per_node: int | None, gpus_per_node: int, subnet: str, timeout: float,
       elastic: bool, resume_delay: float | None, scheduler: str, pbs_exec: str) -> None:
    """Boot the cluster and wait until every node is idle (does nothing if it is already up)."""
    try:
        kw = {"cpus_per_node": cpus_per_node} if cpus_per_node else {}
        kw.update(scheduler=scheduler, pbs_exec=pbs_exec)
        kw["gpus_per_node"] = gpus_per_node
        if elastic:
            kw.update(elastic=True, resume_delay=DEFAULT_RESUME_DELAY if resume_delay is None else resume_delay)
        elif resume_delay is not None:
            kw["resume_delay"] = resume_delay       # the layout refuses it, naming --elastic
        layout = ClusterLayout(name=name, nodes=nodes, subnet=subnet, **kw)
        click.echo(LocalCluster(layout).up(timeout=timeout))
    except (LayoutError, PreflightError, ClusterError) as err:
        fail(str(err))


@cluster.command()
@name_option
def down(name: str) -> None:
    """Stop every process of the cluster and remove its namespaces, links, hosts entries and files."""
    click.echo(_cluster(name).down())


@cluster.command()
@name_option
def status(name: str) -> None:
    """Show the nodes, their Slurm state and their daemons (exit 1 if the cluster is not up or unhealthy)."""
    st = _cluster(name).status()
    click.echo(st.render())
    raise SystemExit(0 if st.running and not st.problems else 1)


@cluster.command()
@name_option
def env(name: str) -> None:
    """Print the exports a shell needs: eval "$(fluxmpi cluster env)"."""
    try:
        click.echo(LocalCluster.running(name).render_env(), nl=False)
    except ClusterError as err:
        fail(str(err))
