"""`fluxmpi warm`: keep N nodes powered up until the work that needs them is submitted."""

from __future__ import annotations

import logging
import signal
import time

import click

from .. import slurm
from .. import warm as holds
from ..cluster import ClusterError, LocalCluster
from ..cluster.layout import DEFAULT_NAME
from .common import fail

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """SIGTERM or SIGHUP: end the hold like Ctrl-C does."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


@click.command("warm")
@click.option("-N", "--nodes", type=int, default=None, help="Nodes to keep warm.")
@click.option("--for", "duration", default="10m", show_default=True,
              help="How long the hold may last at most: 90s, 10m, 1h30m or HH:MM:SS.")
@click.option("--partition", default=None, help="Slurm partition [the default partition].")
@click.option("--release", is_flag=True, help="End your warm holds now (all, or those given with --job).")
@click.option("--job", "job_ids", multiple=True, help="With --release: the hold to end (repeatable).")
@click.option("--owner-timeout", type=float, default=holds.DEFAULT_OWNER_TIMEOUT, show_default=True,
              help="Seconds a hold outlives this process if it is killed (the hold watches its heartbeat).")
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: the embedded cluster; slurm: the Slurm this machine uses.")
@click.option("--cluster-name", default=DEFAULT_NAME, show_default=True, help="Name of the local cluster.")
def warm_command(nodes, duration, partition, release, job_ids, owner_timeout, cluster, cluster_name) -> None:
    """Hold N nodes with a small job so they power up (elastic clusters) and stay up; print its job id.

    Stays in the foreground while it holds (run it with & to go on working): the hold ends when --for is
    over, on Ctrl-C / SIGTERM, or with `fluxmpi warm --release` (do that right before you launch, so the work
    lands on the warm nodes). If this process is killed, the hold ends by itself after --owner-timeout.
    """
    try:
        if release:
            if nodes is not None:
                raise holds.WarmError("--release ends holds; it takes no -N")
        else:
            if job_ids:
                raise holds.WarmError("--job only goes with --release")
            if nodes is None:
                raise holds.WarmError("give -N NODES to warm, or --release to end your holds")
            holds.check_nodes(nodes)
            seconds = slurm.parse_duration(duration)
    except (holds.WarmError, slurm.DurationError) as err:
        fail(str(err), code=2)
    env = {}
    if cluster == "local":
        try:
            env = LocalCluster.running(cluster_name).env()
        except ClusterError as err:
            fail(str(err))
    if release:
        _release(env, list(job_ids))
        return
    _hold(nodes, seconds, partition, owner_timeout, env)


def _release(env: dict, job_ids: list[str]) -> None:
    try:
        ended = holds.release_holds(env, job_ids or None)
    except (slurm.SlurmError, holds.WarmError) as err:
        fail(str(err))
    if not ended:
        click.echo("fluxmpi: no warm holds to release", err=True)
    for job in ended:
        click.echo(f"fluxmpi: released warm hold {job.job_id} ({job.nodes or 'no nodes yet'})", err=True)


def _hold(nodes: int, seconds: int, partition: str | None, owner_timeout: float, env: dict) -> None:
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    hold = None
    try:
        hold = holds.start_hold(nodes, seconds, partition=partition, env=env, owner_timeout=owner_timeout)
        click.echo(hold.job_id)
        click.echo(f"fluxmpi: holding {nodes} node(s) with job {hold.job_id} for at most {seconds}s; end it with "
                   "`fluxmpi warm --release` (right before you launch) or Ctrl-C", err=True)
        took = hold.wait_warm(timeout=seconds)
        click.echo(f"fluxmpi: {nodes} node(s) warm ({hold.hostlist}) after {took:.1f}s", err=True)
        left = max(0.0, hold.submitted + seconds - time.time())
        state = hold.wait_ended(timeout=left + 2 * holds.POLL_INTERVAL + 5)
        click.echo(f"fluxmpi: warm hold {hold.job_id} ended ({state or 'duration over'})", err=True)
    except (KeyboardInterrupt, _Stop):
        click.echo(f"fluxmpi: releasing warm hold {hold.job_id if hold else ''}".rstrip(), err=True)
    except (slurm.SlurmError, holds.WarmError) as err:
        if hold:
            hold.release(wait=False)
        fail(str(err))
    finally:
        if hold:
            hold.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
