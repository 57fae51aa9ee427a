"""A Flux instance on this machine alone: `flux start --test-size=N` under Parsl's FluxExecutor, no Slurm.

For developing and testing the Flux path without a cluster. The N brokers all run here and each one claims
every core of this machine, so "nodes" are not separate hardware: a multi-node task's ranks share one
hostname, and two tasks Flux sees as disjoint can share a physical core. Flux still places and wires up the
ranks (PMI), runs every rank of a task, and refuses what the instance cannot hold, exactly as in a block.
"""

from __future__ import annotations

import os

from parsl.config import Config
from parsl.executors import FluxExecutor
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider

from fluxmpi.launch.flux.install import FluxInstall, check_flux
from fluxmpi.spec import SpecError

MAX_TEST_SIZE = 16


def local_launch_cmd(size: int) -> str:
    """FluxExecutor's launch_cmd for `size` brokers on this machine.

    {hostname} stays Parsl's: the manager runs on this same host, sees its own name and hands back a local://
    URI, so no ssh is involved.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_TEST_SIZE:
        raise SpecError(f"size={size!r} brokers: give a whole number from 1 to {MAX_TEST_SIZE}")
    return f"{{flux}} start --test-size={size} {{python}} {{manager}} {{protocol}} {{hostname}} {{port}}"


def flux_local_config(size: int = 2, *, run_dir: str = "runinfo", label: str = "flux_local",
                      install: FluxInstall | None = None) -> Config:
    """A Parsl Config whose one executor runs tasks in a `size`-broker Flux instance on this machine."""
    launch_cmd = local_launch_cmd(size)
    install = install or check_flux()
    executor = FluxExecutor(
        label=label,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, launcher=SimpleLauncher()),
        working_dir=os.path.join(os.path.abspath(run_dir), label),
        flux_path=install.flux,
        launch_cmd=launch_cmd,
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="none")
