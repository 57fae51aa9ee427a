"""`fluxmpi env`: find the env file workers source, check it, print it or its worker_init line."""

from __future__ import annotations

import logging

import click

from fluxmpi.spackenv import (
    DEFAULT_TIMEOUT_S,
    TOOLS,
    EnvFileError,
    find_env_file,
    validate_env_file,
    worker_init_line,
)

logger = logging.getLogger(__name__)


@click.command("env")
@click.argument("path", required=False, type=click.Path(dir_okay=True, file_okay=True))
@click.option("--prefix", type=click.Path(file_okay=False), default=None,
              help="Install prefix to look in (PREFIX/fluxmpi-env.sh); default $FLUXMPI_PREFIX.")
@click.option("--check", is_flag=True,
              help="Source it in a clean bash and report which of flux, python, mpirun, parsl it provides.")
@click.option("--print", "print_init", is_flag=True,
              help="Print the worker_init line (`source /abs/path`) for Parsl providers.")
@click.option("--require", "required", multiple=True, type=click.Choice(TOOLS),
              help="With --check: fail unless the env file provides this tool (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds --check waits for the sourcing shell.")
def env_command(path, prefix, check, print_init, required, timeout):
    """Find the env file (PATH, else $FLUXMPI_ENV_FILE, else PREFIX/fluxmpi-env.sh) and print its path."""
    try:
        env_file = find_env_file(path, prefix)
        if check:
            report = validate_env_file(env_file, timeout=timeout, require=tuple(required))
            click.echo(report.summary())
        elif required:
            raise click.UsageError("--require only makes sense with --check")
        if print_init:
            click.echo(worker_init_line(env_file))
        if not check and not print_init:
            click.echo(str(env_file))
    except EnvFileError as exc:
        raise click.ClickException(str(exc)) from exc
