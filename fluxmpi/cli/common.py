"""Helpers shared by the CLI commands."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

logger = logging.getLogger(__name__)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error the way srun does (`fluxmpi: error: ...`) and exit non-zero."""
    click.echo(f"fluxmpi: error: {message}", err=True)
    sys.exit(code)


def given_options() -> set[str]:
    """The options of the running command given on the command line (not left at their defaults)."""
    ctx = click.get_current_context()
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
