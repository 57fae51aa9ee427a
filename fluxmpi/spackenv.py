"""The env file that workers source: find it, check it, and turn it into a worker_init line.

The env file is written by install_scripts/spack-envfile.sh (called by spack-env-install.sh and
spack-redeploy.sh): the output of `spack env activate --sh -d ENV`, then the activation of the
Parsl venv made from the environment's python, then `export FLUXMPI_ENV_FILE=<itself>`. It needs no
Spack to be sourced, so a Parsl worker_init of `source /abs/path/fluxmpi-env.sh` gives a worker
Flux, Open MPI, mpi4py, python and Parsl.

Where fluxmpi looks for it (first match wins):
  1. an explicit path (a file, or a directory holding fluxmpi-env.sh);
  2. $FLUXMPI_ENV_FILE;
  3. <prefix>/fluxmpi-env.sh, prefix = the argument or $FLUXMPI_PREFIX (the --prefix given to the
     install scripts).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

ENV_FILE_NAME = "fluxmpi-env.sh"  # same name as FM_ENV_FILE_NAME in install_scripts/lib-common.sh
ENV_FILE_VAR = "FLUXMPI_ENV_FILE"
PREFIX_VAR = "FLUXMPI_PREFIX"
# What a worker may need from the env file; parsl is checked by importing it with the env's python.
TOOLS = ("flux", "python", "mpirun", "parsl")
DEFAULT_TIMEOUT_S = 60.0
# PATH of the clean shell the file is sourced in: only the system, so whatever else is found came
# from the env file.
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
_MARK = "@@fluxmpi-envcheck@@"


class EnvFileError(FluxmpiError, ValueError):
    """The env file is missing or unusable; the message names the path and the fix."""


@dataclass(frozen=True)
class ToolInfo:
    name: str
    path: str | None  # where the sourced environment finds it (None: not found)
    version: str | None  # first line of its version output, when it answered
    from_env: bool  # found under a PATH entry the env file added (not the system's)


@dataclass
class EnvFileReport:
    path: Path
    added_path_entries: list[str]
    tools: dict[str, ToolInfo] = field(default_factory=dict)

    def provides(self, tool: str) -> bool:
        info = self.tools.get(tool)
        return bool(info and info.path and info.from_env)

    def summary(self) -> str:
        lines = [f"env file: {self.path}"]
        for name in TOOLS:
            info = self.tools[name]
            if info.path is None:
                lines.append(f"  {name:7s} missing")
                continue
            origin = "env" if info.from_env else "system, not from the env file"
            version = f"  ({info.version})" if info.version else ""
            lines.append(f"  {name:7s} {info.path}  [{origin}]{version}")
        return "\n".join(lines)


def _install_hint() -> str:
    return (
        "create it with install_scripts/spack-env-install.sh --prefix PREFIX (or spack-redeploy.sh), "
        f"then pass its path, set ${ENV_FILE_VAR}, or set ${PREFIX_VAR}=PREFIX"
    )


def find_env_file(path: str | os.PathLike | None = None, prefix: str | os.PathLike | None = None) -> Path:
    """Locate the env file (see the module docstring for the order); absolute path, not yet checked."""
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_dir():
            candidate = candidate / ENV_FILE_NAME
        if not candidate.is_file():
            raise EnvFileError(f"env file {candidate} does not exist; {_install_hint()}")
        return candidate.resolve()
    tried = []
    from_var = os.environ.get(ENV_FILE_VAR)
    if from_var:
        candidate = Path(from_var).expanduser()
        if candidate.is_file():
            return candidate.resolve()
        tried.append(f"${ENV_FILE_VAR}={from_var} (no such file)")
    prefix = prefix if prefix is not None else os.environ.get(PREFIX_VAR)
    if prefix:
        candidate = Path(prefix).expanduser() / ENV_FILE_NAME
        if candidate.is_file():
            return candidate.resolve()
        tried.append(f"{candidate} (no such file)")
    else:
        tried.append(f"no prefix (${PREFIX_VAR} unset)")
    raise EnvFileError(f"no fluxmpi env file found; tried: {'; '.join(tried)}; {_install_hint()}")


def worker_init_line(path: str | os.PathLike) -> str:
    """`source /abs/path` for a Parsl provider's worker_init; the file must exist."""
    env_file = Path(path).expanduser().resolve()
    if not env_file.is_file():
        raise EnvFileError(f"env file {env_file} does not exist; {_install_hint()}")
    return f"source {shlex.quote(str(env_file))}"


def _probe_script() -> str:
    # Runs after `source FILE` in the clean shell. Every line it prints starts with the marker, so
    # anything the env file itself prints cannot be mistaken for a result.
    m = _MARK
    return f"""
printf '%s\\n' "{m} sourced"
printf '%s PATH %s\\n' "{m}" "$PATH"
for t in flux python mpirun; do
  p=$(command -v "$t" 2>/dev/null || true)
  case "$t" in
    flux)   v=$([ -n "$p" ] && "$p" version 2>/dev/null | head -n 1 || true) ;;
    python) v=$([ -n "$p" ] && "$p" --version 2>&1 | head -n 1 || true) ;;
    mpirun) v=$([ -n "$p" ] && "$p" --version 2>&1 | head -n 1 || true) ;;
  esac
  printf '%s TOOL %s\\t%s\\t%s\\n' "{m}" "$t" "$p" "$v"
done
py=$(command -v python 2>/dev/null || command -v python3 2>/dev/null || true)
if [ -n "$py" ]; then
  pv=$("$py" -c 'import os, parsl; print(os.path.dirname(parsl.__file__), parsl.__version__)' 2>/dev/null || true)
  printf '%s PARSL %s\\n' "{m}" "$pv"
fi
"""


def _clean_env() -> dict[str, str]:
    env = {"PATH": CLEAN_PATH, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}
    for keep in ("USER", "LOGNAME", "TMPDIR"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    return env


def _run_in_own_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    # Own process group: on timeout the whole group dies, including whatever the env file started
    # (a bare subprocess.run would kill bash but leave its children holding the pipes).
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, env=_clean_env(), start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _read_checked(path: Path) -> None:
    if not path.exists():
        raise EnvFileError(f"env file {path} does not exist; {_install_hint()}")
    if not path.is_file():
        raise EnvFileError(f"env file {path} is not a regular file; pass the file itself")
    if not os.access(path, os.R_OK):
        raise EnvFileError(f"env file {path} is not readable by this user; fix with chmod a+r {path}")


def _syntax_checked(path: Path, timeout: float) -> None:
    try:
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EnvFileError(f"bash -n {path} did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        raise EnvFileError(
            f"env file {path} has a shell syntax error (bash -n): {proc.stderr.strip()}; "
            "regenerate it with install_scripts/spack-envfile.sh"
        )


def validate_env_file(
    path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT_S, require: tuple[str, ...] = ()
) -> EnvFileReport:
    """Check the env file and report what it provides; raise EnvFileError on the first defect.

    Checks: it exists and is readable; `bash -n` is clean; sourcing it in `bash --noprofile --norc`
    with a bare environment succeeds within `timeout` seconds; every PATH entry it adds exists;
    and every tool named in `require` (from TOOLS) comes from it.
    """
    unknown = [t for t in require if t not in TOOLS]
    if unknown:
        raise EnvFileError(f"unknown tool(s) to require: {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    env_file = Path(path).expanduser().absolute()
    _read_checked(env_file)
    _syntax_checked(env_file, timeout)
    script = f"source {shlex.quote(str(env_file))}\n" + _probe_script()
    try:
        proc = _run_in_own_group(["bash", "--noprofile", "--norc", "-c", script], timeout)
    except subprocess.TimeoutExpired as exc:
        raise EnvFileError(
            f"sourcing {env_file} (and asking its tools for versions) did not finish within "
            f"{timeout:g} s; look for a command in it that waits (or raise the timeout)"
        ) from exc
    results = [line[len(_MARK) + 1:] for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if "sourced" not in results:
        stderr = proc.stderr.strip().splitlines()[-5:]
        raise EnvFileError(
            f"sourcing {env_file} in a clean bash failed (exit status {proc.returncode}): "
            f"{' | '.join(stderr) or 'no error output'}; fix the failing line or regenerate the file "
            "with install_scripts/spack-envfile.sh"
        )
    return _report(env_file, results, require)


def _report(env_file: Path, results: list[str], require: tuple[str, ...]) -> EnvFileReport:
    path_value = next((r[len("PATH "):] for r in results if r.startswith("PATH ")), "")
    base = set(CLEAN_PATH.split(":"))
    added = [e for e in dict.fromkeys(path_value.split(":")) if e and e not in base]
    if not added:
        raise EnvFileError(
            f"env file {env_file} adds nothing to PATH: it should put the Spack view's bin/ and the "
            "Parsl venv's bin/ first; regenerate it with install_scripts/spack-envfile.sh"
        )
    missing = [e for e in added if not Path(e).is_dir()]
    if missing:
        raise EnvFileError(
            f"env file {env_file} puts PATH entries that do not exist: {', '.join(missing)}; was the "
            "prefix moved or deleted? Redeploy at the same path or regenerate the file"
        )
    report = EnvFileReport(env_file, added)

    def from_env(tool_path: str) -> bool:
        return any(tool_path.startswith(entry.rstrip("/") + "/") for entry in added)

    for line in results:
        if line.startswith("TOOL "):
            name, tool_path, version = (line[len("TOOL "):].split("\t") + ["", ""])[:3]
            report.tools[name] = ToolInfo(name, tool_path or None, version or None,
                                          bool(tool_path) and from_env(tool_path))
    parsl_line = next((r[len("PARSL "):] for r in results if r.startswith("PARSL ")), "").split()
    if len(parsl_line) == 2:
        location, version = parsl_line
        # The venv sees the view's site-packages, so "from env" means: not the system's python.
        python = report.tools.get("python")
        report.tools["parsl"] = ToolInfo("parsl", location, version, bool(python and python.from_env))
    else:
        report.tools["parsl"] = ToolInfo("parsl", None, None, False)
    for name in TOOLS:
        report.tools.setdefault(name, ToolInfo(name, None, None, False))
    absent = [t for t in require if not report.provides(t)]
    if absent:
        raise EnvFileError(
            f"env file {env_file} does not provide {', '.join(absent)}:\n{report.summary()}\n"
            "install the environment (install_scripts/spack-env-install.sh) or regenerate the file"
        )
    return report
