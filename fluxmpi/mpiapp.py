"""One app form on every launch path: `@fluxmpi.mpi_app` functions return the MPI program's command line.

    @fluxmpi.mpi_app
    def member(namelist, steps=10):
        return ["./wrf.exe", "-n", namelist, "--steps", str(steps)]      # or a string, or an MPICommand

    parsl.load(fluxmpi.config("htex", site=site))                       # or htex-mpiexec, static, flux, flux-jobs
    fut = member("m01.nml", spec=MPITaskSpec(nodes=2, ranks_per_node=4))
    fut.result()     # {"returncode": 0, "nodes": [...], "stdout": ".../member-0.out", ...}; MPITaskFailed if not

The function runs once per task (on the worker, or where the flux-jobs executor submits), with the app's
arguments as Parsl resolved them (futures of earlier tasks included). How the ranks start is the executor's
business: each fluxmpi executor names its launcher (`fluxmpi_launcher`: srun, Open MPI's mpirun, a Flux job per
task, or FluxExecutor's once-per-rank body) and the resource specification a spec becomes there
(`fluxmpi_resources`). Every rank runs exactly once, behind the rank wrapper (fluxmpi.rank_wrapper) unless
`placement=False`, so fluxmpi.placement can prove where each rank ran. Output goes to per-task files.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .mpi_apps import TASK_ID_RE
from .spec import MPITaskSpec, SpecError

logger = logging.getLogger(__name__)

class MPIAppError(SpecError):
    """An @mpi_app call or its command that cannot run; the message names the value and the fix."""


@dataclass(frozen=True)
class MPICommand:
    """What an @mpi_app function returns: the program and its arguments, and optionally its environment
    (set over the worker's), working directory and output files."""
    argv: tuple[str, ...]
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    stdout: str | None = None
    stderr: str | None = None

    @classmethod
    def of(cls, value: Any, where: str = "the app") -> "MPICommand":
        """From what an app returned: an MPICommand, an argv list/tuple, or a shell-quoted string."""
        if isinstance(value, MPICommand):
            cmd = value
        elif isinstance(value, str):
            cmd = cls(tuple(shlex.split(value)))
        elif isinstance(value, (list, tuple)):
            cmd = cls(tuple(str(a) for a in value))
        else:
            raise MPIAppError(f"{where} returned {value!r}: return the MPI program's argv (a list of strings or "
                              f"a command string) or a fluxmpi.MPICommand")
        if not cmd.argv or not str(cmd.argv[0]).strip():
            raise MPIAppError(f"{where} returned an empty command: return the program and its arguments")
        bad = {k: v for k, v in cmd.env.items() if not isinstance(k, str) or not isinstance(v, (str, int, float))}
        if bad:
            raise MPIAppError(f"{where}: env values must be strings or numbers, got {bad}")
        return cmd


def run_mpi_app(call: dict, *args: Any, parsl_resource_specification: dict | None = None, **kwargs: Any) -> dict:
    """The task body of an @mpi_app call (runs where the executor runs tasks): build the command, run it as
    one MPI task. `call` carries the user's function and how to launch; args and kwargs are the app's own."""
    from fluxmpi.apps import run_mpi_task  # imported on the worker

    cmd = MPICommand.of(call["fn"](*args, **kwargs), where=f"task {call['task']}")
    argv = command_argv(cmd, call)
    stdout, stderr = output_paths(cmd, call)
    return run_mpi_task(call["spec"], call["launcher"], argv, call["task"], call.get("timeout"),
                        call.get("init", ""), stdout=stdout, stderr=stderr, cwd=cmd.cwd, env=cmd.env,
                        records=call.get("record_dir"))


def command_argv(cmd: MPICommand, call: dict) -> list[str]:
    """The argv each rank runs: the user's program (inside the spec's container, if it has one), behind the rank
    wrapper when placement is recorded. The wrapper stays on the host, outside the image (fluxmpi.container)."""
    argv = [str(a) for a in cmd.argv]
    container = call["spec"].get("container") if isinstance(call.get("spec"), dict) else None
    if container:
        from fluxmpi.container import Container
        argv = Container.from_dict(container).argv(argv, workdir=cmd.cwd or os.getcwd(),
                                                   site_binds=call.get("site_binds", ()))
    if call.get("record_dir"):
        from fluxmpi.rank_wrapper import wrap
        argv = wrap(argv, call["task"], call["record_dir"])
    return argv


def output_paths(cmd: MPICommand, call: dict) -> tuple[str | None, str | None]:
    """The task's stdout and stderr files: the command's own, else OUT_DIR/<task>.out and .err."""
    out_dir = call.get("out_dir")
    default = (os.path.join(out_dir, f"{call['task']}.out"), os.path.join(out_dir, f"{call['task']}.err")) \
        if out_dir else (None, None)
    return cmd.stdout or default[0], cmd.stderr or default[1]


def fluxmpi_executor(dfk, label: str | None = None):
    """The loaded executor an @mpi_app task goes to: `label`, else the only (first) fluxmpi executor."""
    candidates = {lbl: ex for lbl, ex in dfk.executors.items() if hasattr(ex, "fluxmpi_launcher")}
    if label is not None:
        if label not in dfk.executors:
            raise MPIAppError(f"executor {label!r} is not loaded: the config has {sorted(dfk.executors)}")
        if label not in candidates:
            raise MPIAppError(f"executor {label!r} is not a fluxmpi executor (it cannot start MPI ranks): load a "
                              f"config from fluxmpi.config(...), whose executors are {sorted(candidates) or 'none'}")
        return candidates[label]
    if not candidates:
        raise MPIAppError(f"no fluxmpi executor is loaded (executors: {sorted(dfk.executors)}): "
                          f"parsl.load(fluxmpi.config(PATH, site=...)) first")
    return next(iter(candidates.values()))


class MPIApp:
    """An @mpi_app function; calling it submits one MPI task and returns its Parsl AppFuture."""

    _counter = itertools.count()

    def __init__(self, fn: Callable, executor: str | None = None, placement: bool = True,
                 timeout: float | None = None):
        self.fn, self.executor, self.placement, self.timeout = fn, executor, placement, timeout
        self.__name__ = getattr(fn, "__name__", "mpi_app")
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, spec: MPITaskSpec, name: str | None = None, executor: str | None = None,
                 timeout: float | None = None, **kwargs: Any):
        import parsl

        if not isinstance(spec, MPITaskSpec):
            raise MPIAppError(f"{self.__name__}(spec={spec!r}): give spec=fluxmpi.MPITaskSpec(nodes=..., "
                              f"ranks_per_node=...)")
        task = name or f"{self.__name__}-{next(self._counter)}"
        if not TASK_ID_RE.fullmatch(task):
            raise MPIAppError(f"task name {task!r}: use letters, digits, '_', '.', '-' (it names files), at most 128")
        dfk = parsl.dfk()
        ex = fluxmpi_executor(dfk, executor or self.executor)
        block = getattr(ex, "nodes_per_block", None)
        if block and spec.nodes > block:     # refused here, before Parsl knows of it (the executor would too)
            raise MPIAppError(f"task {task} asks for {spec.nodes} nodes but the blocks of {ex.label} have {block}: "
                              f"ask for at most {block}, or load a config with larger blocks (nodes_per_block)")
        base = Path(dfk.run_dir).resolve() / "fluxmpi"
        call = {"fn": self.fn, "spec": spec.to_dict(), "launcher": ex.fluxmpi_launcher, "task": task,
                "timeout": timeout or self.timeout, "init": getattr(ex, "fluxmpi_task_init", ""),
                "site_binds": list(getattr(ex, "fluxmpi_container_binds", ())),
                "out_dir": str(base / "tasks"), "record_dir": str(base / "records") if self.placement else None}
        rs = ex.fluxmpi_resources(spec)
        options = {"parsl_resource_specification": rs} if rs else {}
        app = parsl.python_app(run_mpi_app, executors=[ex.label])
        logger.debug("submitting %s (%s) to %s", task, spec, ex.label)
        return app(call, *args, **options, **kwargs)


def mpi_app(fn: Callable | None = None, *, executor: str | None = None, placement: bool = True,
            timeout: float | None = None):
    """Decorate a function returning an MPI command line; see the module docstring.

    executor: label of the loaded executor its tasks go to [the first fluxmpi executor]. placement: run each
    rank behind the rank wrapper, recording where it ran [True]. timeout: seconds before a task is killed.
    Each call takes `spec=MPITaskSpec(...)`, optionally `name=` (files and messages; unique per task) and
    `timeout=`."""
    if fn is None:
        return lambda f: MPIApp(f, executor, placement, timeout)
    return MPIApp(fn, executor, placement, timeout)


def records_dir(dfk=None) -> Path:
    """Where @mpi_app tasks of the loaded run record their ranks (read them with fluxmpi.placement)."""
    import parsl
    return Path((dfk or parsl.dfk()).run_dir).resolve() / "fluxmpi" / "records"
