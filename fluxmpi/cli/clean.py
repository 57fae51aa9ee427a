"""`fluxmpi clean`: remove what runs created (from their manifest.json), explaining each item."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..clean import CleanError, clean, render
from .common import fail

logger = logging.getLogger(__name__)


@click.command("clean")
@click.argument("dirs", nargs=-1, type=click.Path())
@click.option("--dry-run", "-n", is_flag=True, help="List what would be removed, and why; remove nothing.")
def clean_command(dirs: tuple[str, ...], dry_run: bool) -> None:
    """Remove what fluxmpi runs created: Parsl run directories, records, compiled apps, summaries.

    DIRS are run directories, their manifest.json, or directories holding runs [./fluxmpi-runs and
    ./fluxmpi-bench]. Only paths a run's manifest lists are removed; a run directory goes only once empty, so
    files you put there stay. Exits 1 if something could not be removed.
    """
    try:
        plans, problems = clean(list(dirs), dry_run=dry_run)
    except CleanError as err:
        fail(str(err), code=2)
    if not plans:
        where = ", ".join(dirs) if dirs else "./fluxmpi-runs, ./fluxmpi-bench"
        click.echo(f"fluxmpi: no runs found under {where} (nothing has a manifest.json)", err=True)
        return
    click.echo(render(plans, dry_run, Path.cwd()))
    for problem in problems:
        click.echo(f"fluxmpi: error: {problem}", err=True)
    raise SystemExit(1 if problems else 0)
