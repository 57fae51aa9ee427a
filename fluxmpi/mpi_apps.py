"""Locate the MPI apps' sources, compile the C app, and build the command lines of both apps.

The sources travel inside the wheel as package data ``fluxmpi/_mpi_apps``; in a
checkout they are the repository's ``mpi_apps/`` next to the package.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Mapping

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

APPS = ("c", "mpi4py")
FAIL_MODES = ("exit", "segv")  # how a rank fails on purpose (--fail-mode of both apps)
C_SOURCE = "mpi_hello.c"
PY_APP = "mpi_hello.py"
C_BINARY = "mpi_hello"
CFLAGS = ("-O2", "-Wall", "-Wextra")
# Same rule as in both apps: the id becomes part of a record's file name.
TASK_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# Which Debian packages provide a given MPI compiler wrapper (with its headers).
_DEBIAN_PACKAGES = {
    "mpicc": "openmpi-bin libopenmpi-dev (or mpich libmpich-dev)",
    "mpicc.openmpi": "openmpi-bin libopenmpi-dev",
    "mpicc.mpich": "mpich libmpich-dev",
}


class MpiAppError(FluxmpiError, ValueError):
    """Bad input for locating, compiling or running the MPI apps."""


class MpiCompilerNotFound(MpiAppError):
    """The MPI compiler wrapper is not on PATH."""


class CompileError(FluxmpiError, RuntimeError):
    """The MPI compiler ran but did not produce the app."""


def apps_dir() -> Path:
    """Directory holding mpi_hello.c and mpi_hello.py (installed package data first, then the checkout)."""
    shipped = resources.files(__package__).joinpath("_mpi_apps")
    # Only a real directory will do: mpicc and mpirun need file paths.
    if isinstance(shipped, Path) and (shipped / C_SOURCE).is_file():
        return shipped
    checkout = Path(__file__).resolve().parent.parent / "mpi_apps"
    if (checkout / C_SOURCE).is_file():
        return checkout
    raise FileNotFoundError(
        f"MPI app sources not found in {shipped} nor in {checkout}: "
        "reinstall fluxmpi from a wheel, or run from a full checkout"
    )


def c_source() -> Path:
    return apps_dir() / C_SOURCE


def python_app() -> Path:
    return apps_dir() / PY_APP


def compile_c_app(
    dest_dir: str | os.PathLike,
    mpicc: str = "mpicc",
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    name: str = C_BINARY,
) -> Path:
    """Compile mpi_hello.c with ``mpicc`` into ``dest_dir/name`` and return that path.

    The binary is written under a temporary name and renamed, so workers that
    share ``dest_dir`` never run half a binary. ``env`` replaces the compiler's
    environment (e.g. a Spack environment); its PATH is used to find ``mpicc``.
    """
    if timeout <= 0:
        raise MpiAppError(f"timeout must be positive seconds, got {timeout!r}")
    if not name or "/" in name:
        raise MpiAppError(f"name must be a plain file name, got {name!r}")
    search_path = (env if env is not None else os.environ).get("PATH", os.defpath)
    compiler = shutil.which(mpicc, path=search_path)
    if compiler is None:
        packages = _DEBIAN_PACKAGES.get(os.path.basename(mpicc), "an MPI's development package")
        raise MpiCompilerNotFound(
            f"MPI compiler {mpicc!r} not found on PATH: install it "
            f"(Debian: apt-get install {packages}) or pass mpicc=<path to the wrapper>"
        )
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    tmp = dest / f".{name}.tmp.{os.getpid()}"
    cmd = [compiler, *CFLAGS, "-o", str(tmp), str(c_source())]
    try:
        try:
            proc = subprocess.run(
                cmd,
                env=dict(env) if env is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CompileError(f"{mpicc} did not finish compiling {C_SOURCE} within {timeout:g} s: {' '.join(cmd)}") from None
        if proc.returncode != 0 or not tmp.is_file():
            raise CompileError(
                f"{mpicc} failed to compile {C_SOURCE} (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stderr.strip()}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_task_id(task: str) -> str:
    if not isinstance(task, str) or not TASK_ID_RE.fullmatch(task):
        raise MpiAppError(
            f"invalid task id {task!r}: use letters, digits, '_', '.', '-', "
            "not starting with '.' or '-', at most 128 characters"
        )
    return task


def _check_seconds(option: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
        float("inf"),
        float("-inf"),
    ):
        raise MpiAppError(f"{option} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise MpiAppError(f"{option} must not be negative, got {value!r}")


def app_command(
    app: str,
    *,
    task: str,
    out_dir: str | os.PathLike | None,
    busy: float | None = None,
    sleep: float | None = None,
    affinity: bool = False,
    c_binary: str | os.PathLike | None = None,
    python: str = sys.executable,
    fail_rank: int | None = None,
    fail_mode: str | None = None,
    fail_once_marker: str | os.PathLike | None = None,
) -> list[str]:
    """The argv that runs one rank of ``app`` ("c" or "mpi4py"); prefix it with the launcher.

    ``out_dir=None`` makes every rank print its record on stdout instead of
    writing ``out_dir/<task>.<rank>.json``. The C app needs ``c_binary`` (see
    :func:`compile_c_app`).

    Fault injection (see fluxmpi.rankfault.RankFault): ``fail_rank`` makes that rank fail right after MPI_Init,
    ``fail_mode`` "exit" (code 3) or "segv"; with ``fail_once_marker`` only while that file does not exist.
    """
    if app not in APPS:
        raise MpiAppError(f"unknown app {app!r}: choose one of {', '.join(APPS)}")
    check_task_id(task)
    _check_seconds("busy", busy)
    _check_seconds("sleep", sleep)
    if busy is not None and sleep is not None:
        raise MpiAppError("busy and sleep exclude each other: give at most one")
    if fail_rank is not None and (isinstance(fail_rank, bool) or not isinstance(fail_rank, int) or fail_rank < 0):
        raise MpiAppError(f"fail_rank must be a rank (a whole number from 0), got {fail_rank!r}")
    if fail_mode not in (None, *FAIL_MODES):
        raise MpiAppError(f"fail_mode must be one of {', '.join(FAIL_MODES)}, got {fail_mode!r}")
    if fail_rank is None and (fail_mode is not None or fail_once_marker is not None):
        raise MpiAppError("fail_mode and fail_once_marker need fail_rank")
    if fail_once_marker is not None and str(fail_once_marker) == "":
        raise MpiAppError("fail_once_marker must be a file path, got ''")
    if app == "c":
        if c_binary is None:
            raise MpiAppError("the C app needs c_binary=<path from compile_c_app()>")
        cmd = [str(c_binary)]
    else:
        cmd = [python, str(python_app())]
    cmd += ["--task", task]
    if affinity:
        cmd.append("--affinity")
    if busy is not None:
        cmd += ["--busy", repr(float(busy))]
    if sleep is not None:
        cmd += ["--sleep", repr(float(sleep))]
    if out_dir is not None:
        if str(out_dir) == "":
            raise MpiAppError("out_dir must be a directory path or None (stdout), got ''")
        cmd += ["--out", str(out_dir)]
    if fail_rank is not None:
        cmd += ["--fail-rank", str(fail_rank), "--fail-mode", fail_mode or "exit"]
        if fail_once_marker is not None:
            cmd += ["--fail-once-marker", str(fail_once_marker)]
    return cmd
