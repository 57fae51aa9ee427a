"""Put the rank wrapper in front of any MPI program, so each of its ranks leaves a placement record.

``wrap(["./app", "-x"], "t3", out)`` gives the command a launcher runs once per rank (``srun``, ``mpirun``,
``mpiexec``, ``flux run``). Every rank then writes ``out/t3.<rank>.json`` in the record format that
:mod:`fluxmpi.placement` reads (app ``"wrapper"``) and runs the program unchanged, with the program's exit status
as its own. The wrapper itself is ``_rank_wrapper.sh``, shipped next to this module.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from fluxmpi.mpi_apps import TASK_ID_RE

logger = logging.getLogger(__name__)

# Next to this module in a checkout and in an installed wheel alike.
WRAPPER_PATH = Path(__file__).with_name("_rank_wrapper.sh")


class WrapperError(ValueError):
    """Arguments the rank wrapper cannot run with; the message names the value and what would do."""


def _path_text(value, what: str) -> str:
    """A str or os.PathLike as str (bytes paths are not command-line text here)."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise WrapperError(f"{what} must be a string or path, got {type(value).__name__} {value!r}")
    return text


def wrap(argv: Sequence[str | os.PathLike], task: str, out_dir: str | os.PathLike, shell: str = "/bin/sh") -> list[str]:
    """The command line that runs ``argv`` under the rank wrapper, writing records to ``out_dir``.

    It goes through ``shell`` so the script needs no exec bit (package data may not keep one)."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        raise WrapperError(f"argv must be a list of arguments, not one string: {argv!r}; e.g. ['./app', '--x']")
    args = [_path_text(arg, f"argv[{i}]") for i, arg in enumerate(argv)]
    if not args:
        raise WrapperError("argv is empty: give the program to run and its arguments, e.g. ['./app']")
    if not args[0]:
        raise WrapperError("argv[0] is empty: give the program to run")
    if not isinstance(task, str) or not TASK_ID_RE.fullmatch(task):
        raise WrapperError(
            f"invalid task id {task!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_' (it becomes part of the record file names)")
    out = _path_text(out_dir, "out_dir")
    if not out:
        raise WrapperError("out_dir is empty: give the directory for the records")
    if not isinstance(shell, str) or not shell:
        raise WrapperError(f"shell must name a POSIX shell, e.g. '/bin/sh', got {shell!r}")
    if not WRAPPER_PATH.is_file():
        raise WrapperError(f"the rank wrapper {WRAPPER_PATH} is missing: reinstall fluxmpi")
    command = [shell, str(WRAPPER_PATH), "--task", task, "--out", out, "--", *args]
    logger.debug("task %s: rank wrapper command %s", task, command)
    return command
