"""`fluxmpi doctor`: report the tools MPI tasks need and, with --probe, which launcher works with which MPI."""

from __future__ import annotations

import logging

import click

from .. import doctor as dr
from ..cluster import ClusterError, LocalCluster
from ..cluster.layout import DEFAULT_NAME
from ..container import Container, ContainerError
from .common import fail

logger = logging.getLogger(__name__)


@click.command("doctor")
@click.option("--probe", is_flag=True,
              help="Also run a tiny MPI job through every launcher with every MPI on the local cluster.")
@click.option("--cluster-name", default=None,
              help=f"Local cluster to check ssh on and to probe [{DEFAULT_NAME}, if it is up].")
@click.option("--timeout", type=float, default=dr.DEFAULT_PROBE_TIMEOUT, show_default=True,
              help="Seconds each probe may take before it is killed.")
@click.option("--image", "images", multiple=True, metavar="RUNTIME:IMAGE",
              help="With --probe: also run the probe job inside this image (repeatable).")
def doctor_command(probe: bool, cluster_name: str | None, timeout: float, images: tuple[str, ...]) -> None:
    """Report Parsl, Flux, Open MPI and MPICH (with the PMI each speaks), Slurm's MPI plugins, ssh to the
    nodes, the env file and the container runtimes found. With --probe, print a works/fails matrix of launchers x
    MPIs with the reasons, and a row for each --image (its runtime on the nodes, its MPI against the host's PMIx).

    Exits 1 if a check failed (or, with --probe, if no launcher works with any MPI).
    """
    name = cluster_name or DEFAULT_NAME
    if images and not probe:
        fail("--image goes with --probe (it names an image to probe)", code=2)
    try:
        containers = [Container.parse(i) for i in images]
    except ContainerError as err:
        fail(str(err), code=2)
    try:
        cluster = LocalCluster.running(name)
    except ClusterError as err:
        if probe or cluster_name:
            fail(f"{err} (doctor {'--probe ' if probe else ''}needs it)")
        cluster = None
    checks = dr.run_checks(cluster)
    click.echo(dr.render_checks(checks))
    bad = any(c.status == dr.FAIL for c in checks)
    if probe:
        click.echo("")
        click.echo(f"fluxmpi: probing launchers on cluster {name} (each bounded by {timeout:g}s)", err=True)
        try:
            results = dr.probe(cluster, timeout=timeout, log=lambda m: click.echo(m, err=True), images=containers)
        except dr.DoctorError as err:
            fail(str(err), code=2)
        click.echo(dr.render_matrix(results, name))
        bad = bad or not any(r.works for r in results)
    raise SystemExit(1 if bad else 0)
