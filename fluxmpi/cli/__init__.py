"""The `fluxmpi` command: a thin layer over the package; each command lives in its own module."""

from __future__ import annotations

import logging

import click

from .. import __version__
from .bench import bench
from .clean import clean_command
from .cluster import cluster
from .doctor import doctor_command
from .envfile import env_command
from .run import run
from .warm import warm_command

logger = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="fluxmpi")
def main() -> None:
    """Run node-spanning MPI tasks from Parsl on Slurm, through HTEX or Flux, and compare the paths."""


main.add_command(cluster)
main.add_command(run)
main.add_command(bench)
main.add_command(env_command)
main.add_command(warm_command)
main.add_command(clean_command)
main.add_command(doctor_command)

