"""The MPIs' own launchers: Open MPI 4.1 `mpirun` and MPICH hydra `mpiexec`."""

from __future__ import annotations

import logging
from typing import Sequence

from ..spec import MPI_FLAVORS, SpecError, _host_list

logger = logging.getLogger(__name__)


def mpiexec_args(spec, flavor: str, hosts: str | Sequence[str] | None = None, program: str | None = None) -> list[str]:
    """argv prefix for Open MPI 4.1 `mpirun` or MPICH hydra `mpiexec`.

    Open MPI: `--map-by ppr:RPN:node[:PE=C]` places RPN ranks per node with C cores each;
    exclusive binds ranks to cores, shared uses `--bind-to none` because concurrent mpiruns on one
    node do not coordinate and would all pin to the same first cores. A walltime becomes
    `--timeout SECONDS`. MPICH: `-n -ppn [-hosts]`, and for exclusive `-bind-to core:C`; hydra has
    no timeout flag (set MPIEXEC_TIMEOUT in the environment). GPUs have no flag in either.
    `program` overrides argv[0] (Debian names MPICH's launcher `mpiexec.mpich`).
    """
    if flavor not in MPI_FLAVORS:
        raise SpecError(f"flavor={flavor!r} is not a known MPI: give one of {list(MPI_FLAVORS)}")
    host_names = None if hosts is None else _host_list("hosts", hosts, spec.nodes)
    if flavor == "openmpi":
        mapping = f"ppr:{spec.ranks_per_node}:node"
        if spec.cores_per_rank > 1:
            mapping += f":PE={spec.cores_per_rank}"
        argv = [program or "mpirun", "-n", str(spec.ranks), "--map-by", mapping,
                "--bind-to", "core" if spec.exclusive else "none"]
        if spec.walltime is not None:
            argv += ["--timeout", str(spec.walltime)]
        if host_names:
            # host:slots so Open MPI does not count a host's slots from a (missing) hostfile.
            argv += ["--host", ",".join(f"{h}:{spec.ranks_per_node}" for h in host_names)]
        return argv
    argv = [program or "mpiexec", "-n", str(spec.ranks), "-ppn", str(spec.ranks_per_node)]
    if spec.exclusive:
        argv += ["-bind-to", f"core:{spec.cores_per_rank}"]
    if host_names:
        argv += ["-hosts", ",".join(host_names)]
    return argv
