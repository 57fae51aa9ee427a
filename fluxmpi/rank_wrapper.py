"""Put the rank wrapper in front of any MPI program, so each of its ranks leaves a placement record.

``wrap(["./app", "-x"], "t3", out)`` gives the command a launcher runs once per rank (``srun``, ``mpirun``,
``mpiexec``, ``flux run``). Every rank then writes ``out/t3.<rank>.json`` in the record format that
:mod:`fluxmpi.placement` reads (app ``"wrapper"``) and runs the program unchanged, with the program's exit status
as its own.

There are two wrappers with the same command line and records, both shipped next to this module:

* ``_rank_wrapper.c``, compiled on first use with the first of ``cc``, ``gcc``, ``mpicc`` on PATH into
  ``$FLUXMPI_CACHE/rank-wrapper/<hash>/fluxmpi-rank`` (``FLUXMPI_CACHE`` defaults to ``~/.cache/fluxmpi``; the
  hash covers the C source, the compiler and the machine type, so a changed source or compiler builds anew). It
  costs about a millisecond per rank.
* ``_rank_wrapper.sh``, run by ``/bin/sh``: no compiler needed, but its forks cost several milliseconds per rank.

``wrap()`` uses the C one when it can be built and the sh one otherwise (with one warning per process); the
environment variable ``FLUXMPI_RANK_WRAPPER`` chooses: ``sh`` always the sh one, ``c`` the C one or an error,
``auto`` (or unset) as said.

The launcher runs the binary on every node of the task, so the cache must be on a file system the compute nodes
see at the same path, and one that allows executing files: the home directory usually is. Where it is not, set
``FLUXMPI_CACHE`` to such a directory (a project or scratch directory; not a node-local /tmp).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fluxmpi.mpi_apps import TASK_ID_RE

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

# Next to this module in a checkout and in an installed wheel alike.
WRAPPER_PATH = Path(__file__).with_name("_rank_wrapper.sh")
C_SOURCE_PATH = Path(__file__).with_name("_rank_wrapper.c")
BINARY_NAME = "fluxmpi-rank"
COMPILERS = ("cc", "gcc", "mpicc")        # the first one on PATH builds the C wrapper
CFLAGS = ("-O2",)
BUILD_TIMEOUT = 120.0                     # seconds for one compile on a busy login node
CHOICE_ENV = "FLUXMPI_RANK_WRAPPER"       # auto (default), c or sh
CACHE_ENV = "FLUXMPI_CACHE"               # default ~/.cache/fluxmpi
SH = "/bin/sh"


class WrapperError(FluxmpiError, ValueError):
    """Arguments the rank wrapper cannot run with; the message names the value and what would do."""


@dataclass(frozen=True)
class _Build:
    binary: Path | None     # None: no C wrapper in this process for this cache and compiler
    reason: str = ""        # why not


# (cache root, compiler) -> what building gave, for the rest of the process: a failed build is not retried and
# warned about only once.
_builds: dict[tuple[str, str], _Build] = {}
_builds_lock = threading.Lock()


def _path_text(value, what: str) -> str:
    """A str or os.PathLike as str (bytes paths are not command-line text here)."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise WrapperError(f"{what} must be a string or path, got {type(value).__name__} {value!r}")
    return text


def cache_root() -> Path:
    """fluxmpi's cache directory: ``$FLUXMPI_CACHE``, else ``~/.cache/fluxmpi`` (as an absolute path, because the
    launcher runs what is in it on the compute nodes, from whatever directory)."""
    configured = os.environ.get(CACHE_ENV, "")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "fluxmpi"
    return root.absolute()


def find_compiler() -> str | None:
    """The first of :data:`COMPILERS` on PATH, or None."""
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _cache_key(compiler: str) -> str:
    """A hash of the C source, the compiler (the file it resolves to, with its size and mtime, so an upgrade
    counts), the flags and the machine type (a shared home may serve nodes of different architectures)."""
    h = hashlib.sha256(C_SOURCE_PATH.read_bytes())
    real = os.path.realpath(compiler)
    st = os.stat(real)
    for part in (real, str(st.st_size), str(st.st_mtime_ns), " ".join(CFLAGS), platform.machine()):
        h.update(b"\0" + part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _build(root: Path, compiler: str) -> Path:
    """The C wrapper in the cache, compiled unless it is there already. Compiled under a temporary name in the
    same directory and renamed into place, so builders running at the same time (ranks, workers, processes on
    other nodes sharing the home) never run half a binary. Raises OSError or RuntimeError saying why not."""
    if not C_SOURCE_PATH.is_file():
        raise RuntimeError(f"its source {C_SOURCE_PATH} is missing")
    dest_dir = root / "rank-wrapper" / _cache_key(compiler)
    binary = dest_dir / BINARY_NAME
    if _runnable(binary):
        return binary
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", suffix=".tmp", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [compiler, *CFLAGS, "-o", str(tmp), str(C_SOURCE_PATH)]
    try:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(cmd)} did not finish within {BUILD_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                               f"{_tail(proc.stderr + proc.stdout) or '(no output)'}")
        tmp.chmod(0o755)
        # It must run here too: a cache on a noexec mount, or a cross compiler, fails now rather than on every rank.
        try:
            check = subprocess.run([str(tmp), "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=30, check=False)
        except OSError as err:
            raise RuntimeError(f"the compiled {tmp} does not run: {err}") from None
        if check.returncode != 0 or "usage:" not in check.stdout:
            raise RuntimeError(f"the compiled {tmp} does not run (--help gave exit {check.returncode}):\n"
                               f"{_tail(check.stderr) or '(no output)'}")
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("built the C rank wrapper %s with %s", binary, compiler)
    return binary


def _c_wrapper() -> _Build:
    compiler, problem = find_compiler(), ""
    try:
        root = cache_root()
    except (RuntimeError, OSError) as err:   # no home directory to find
        root, problem = None, f"no cache directory ({err}): set {CACHE_ENV}"
    key = (str(root), compiler or "")
    with _builds_lock:
        known = _builds.get(key)
        if known is not None and (known.binary is None or _runnable(known.binary)):
            return known
        if root is None:
            result = _Build(None, problem)
        elif compiler is None:
            result = _Build(None, f"no C compiler ({', '.join(COMPILERS)}) on PATH")
        else:
            try:
                result = _Build(_build(root, compiler))
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                result = _Build(None, f"building it in {root} failed: {err}")
        _builds[key] = result
    if result.binary is None:
        logger.warning("using the sh rank wrapper (slower, several ms per rank) instead of the C one: %s; "
                       "set %s=sh to choose it without trying", result.reason, CHOICE_ENV)
    return result


def c_wrapper_binary() -> Path | None:
    """The compiled C rank wrapper, built into the cache when needed, or None when it cannot be had (the reason
    is logged once per process)."""
    return _c_wrapper().binary


def wrapper_command() -> list[str]:
    """The rank wrapper as a command prefix: ``[binary]`` for the C one, ``["/bin/sh", WRAPPER_PATH]`` for the sh
    one (through the shell, so the script needs no exec bit: package data may not keep one). Which one: see the
    module's documentation (``FLUXMPI_RANK_WRAPPER``)."""
    choice = os.environ.get(CHOICE_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "c", "sh"):
        raise WrapperError(f"{CHOICE_ENV}={os.environ[CHOICE_ENV]!r} is not a rank wrapper: use 'auto' "
                           "(the C one when it builds, else the sh one), 'c' or 'sh'")
    if choice != "sh":
        build = _c_wrapper()
        if build.binary is not None:
            return [str(build.binary)]
        if choice == "c":
            raise WrapperError(f"{CHOICE_ENV}=c, but the C rank wrapper is not available: {build.reason}")
    if not WRAPPER_PATH.is_file():
        raise WrapperError(f"the rank wrapper {WRAPPER_PATH} is missing: reinstall fluxmpi")
    return [SH, str(WRAPPER_PATH)]


def wrap(argv: Sequence[str | os.PathLike], task: str, out_dir: str | os.PathLike,
         shell: str | None = None) -> list[str]:
    """The command line that runs ``argv`` under the rank wrapper, writing records to ``out_dir``.

    The wrapper is :func:`wrapper_command`'s; a ``shell`` given runs the sh wrapper with that shell instead."""
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
    if shell is None:
        prefix = wrapper_command()
    else:
        if not isinstance(shell, str) or not shell:
            raise WrapperError(f"shell must name a POSIX shell, e.g. '/bin/sh', got {shell!r}")
        if not WRAPPER_PATH.is_file():
            raise WrapperError(f"the rank wrapper {WRAPPER_PATH} is missing: reinstall fluxmpi")
        prefix = [shell, str(WRAPPER_PATH)]
    command = [*prefix, "--task", task, "--out", out, "--", *args]
    logger.debug("task %s: rank wrapper command %s", task, command)
    return command
