"""How a task's ranks start, one module per launcher, apart from the task spec (as PSI/J's `launchers/`).

- srun.py: `srun` steps inside a Slurm allocation;
- mpiexec.py: the MPIs' own launchers, Open MPI's `mpirun` and MPICH's `mpiexec`;
- flux.py: `flux run` and the Flux jobspec;
- pals.py: HPE Cray PALS `mpiexec` under PBS Pro (Polaris-style `--ppn --depth --cpu-bind`, hostfile, GPUs).

`launch_argv` composes a whole command line for the task bodies (fluxmpi.apps) from a launcher's name; these
names are what a launch path's `launcher` and an executor's `fluxmpi_launcher` say.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

logger = logging.getLogger(__name__)


def _srun(spec, nodes, app_argv, session_base=None):
    from .srun import srun_args
    return srun_args(spec, mpi="pmix", nodelist=nodes[:spec.nodes]) + app_argv


def _openmpi(spec, nodes, app_argv, session_base=None):
    from .mpiexec import mpiexec_args
    argv = mpiexec_args(spec, "openmpi", hosts=nodes[:spec.nodes])
    if session_base:      # a session directory base of the launch's own (fluxmpi.apps.openmpi_session_base)
        argv[1:1] = ["--mca", "orte_tmpdir_base", session_base]
    return argv + app_argv


def _mpich(spec, nodes, app_argv, session_base=None):
    from .mpiexec import mpiexec_args
    return mpiexec_args(spec, "mpich", hosts=nodes[:spec.nodes], program="mpiexec.mpich") + app_argv


def _pals(spec, nodes, app_argv, session_base=None):
    # PALS takes its hosts as a file: one of the launch's own, in its session directory base when it has one.
    import tempfile
    from .pals import gpu_prefix, pals_mpiexec_args, write_hostfile
    fd, path = tempfile.mkstemp(prefix="fluxmpi-hosts-", dir=session_base)
    os.close(fd)
    hostfile = write_hostfile(nodes[:spec.nodes], path)
    return pals_mpiexec_args(spec, hostfile=hostfile) + gpu_prefix(spec) + app_argv


def _mpirun_local(spec, nodes, app_argv, session_base=None):
    # What a user of the out-of-the-box config writes: mpirun with a rank count and nothing else.
    return ["mpirun", "-n", str(spec.ranks)] + app_argv


# Launchers a task body starts itself over the nodes it was given. "flux" (FluxExecutor's body is one rank)
# and "flux-jobs" (the executor submits the program as a Flux job) start no launcher line: Flux does.
COMPOSED: dict[str, Callable] = {"srun": _srun, "mpiexec-openmpi": _openmpi, "mpiexec-mpich": _mpich,
                                 "mpiexec-pals": _pals, "mpirun-local": _mpirun_local}
NAMES = (*COMPOSED, "flux", "flux-jobs")
# The compiler wrapper whose MPI each launcher starts (Debian's `mpicc` is Open MPI's; Cray's is `cc`).
COMPILERS = {"mpiexec-mpich": "mpicc.mpich", "mpiexec-pals": "cc"}


def compiler_for(launcher: str) -> str:
    """The MPI compiler wrapper for programs whose ranks `launcher` starts."""
    return COMPILERS.get(launcher, "mpicc")


def launch_argv(spec, launcher: str, nodes: list[str], app_argv: list[str],
                session_base: str | None = None) -> list[str]:
    """The full command line: launcher prefix for `spec` over `nodes`, then the app.

    session_base: for Open MPI, the directory its session directories go under."""
    if launcher not in COMPOSED:
        raise ValueError(f"launcher {launcher!r} composes no command line: use one of {', '.join(COMPOSED)}")
    return COMPOSED[launcher](spec, nodes, app_argv, session_base)
