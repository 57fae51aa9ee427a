"""HPE Cray PALS `mpiexec` (Cray MPICH under PBS Pro, as on ALCF's Polaris): the line a task's ranks start with.

    mpiexec -n RANKS --ppn RANKS_PER_NODE --depth CORES_PER_RANK --cpu-bind depth --hostfile FILE PROGRAM

`--depth` reserves each rank its cores and `--cpu-bind depth` binds it to them, the form ALCF's Polaris
documentation uses for MPI and MPI+OpenMP jobs (https://docs.alcf.anl.gov/polaris/running-jobs/). The hosts come
as a file, one per line (`$PBS_NODEFILE` or the part of it a task was given). PALS sets no GPU visibility: a
rank's GPUs are chosen from its node-local rank (`PALS_LOCAL_RANKID`), which is what Polaris' affinity script
does; here that is a `sh -c` in front of the program (gpu_prefix), so a task with GPUs needs no script of its own.
A walltime is not on the line (no PALS flag for it is documented there): the task's own timeout ends it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..spec import SpecError

logger = logging.getLogger(__name__)

# Each rank its own GPUs, from its node-local rank: ids LOCAL*G .. LOCAL*G+G-1.
_GPU_SCRIPT = ('g={g}; i=${{PALS_LOCAL_RANKID:?fluxmpi: PALS_LOCAL_RANKID is unset: not started by PALS mpiexec}}; '
               'first=$((i * g)); ids=$first; n=1; while [ $n -lt $g ]; do ids="$ids,$((first + n))"; n=$((n + 1)); '
               'done; export CUDA_VISIBLE_DEVICES="$ids"; exec "$@"')


def pals_mpiexec_args(spec, hostfile: str | Path | None = None, program: str = "mpiexec") -> list[str]:
    """argv prefix for PALS mpiexec; the program follows (after gpu_prefix(spec) if the task has GPUs)."""
    argv = [program, "-n", str(spec.ranks), "--ppn", str(spec.ranks_per_node), "--depth", str(spec.cores_per_rank),
            "--cpu-bind", "depth" if spec.exclusive else "none"]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    return argv


def gpu_prefix(spec) -> list[str]:
    """What goes between mpiexec and the program so that each rank sees its own `gpus_per_rank` GPUs."""
    if not spec.gpus_per_rank:
        return []
    return ["sh", "-c", _GPU_SCRIPT.format(g=int(spec.gpus_per_rank)), "fluxmpi-gpu"]


def write_hostfile(hosts: Sequence[str], path: str | Path) -> Path:
    """The hosts a task was given, one per line, for --hostfile."""
    if not hosts or any(not h or h != h.strip() or "\n" in h for h in hosts):
        raise SpecError(f"hosts {list(hosts)!r}: give one or more host names (as $PBS_NODEFILE lists them)")
    path = Path(path)
    path.write_text("".join(f"{h}\n" for h in hosts))
    return path


def read_nodefile(path: str | Path) -> list[str]:
    """The distinct hosts of a PBS nodefile in order (PBS lists a host once per chunk or MPI process)."""
    seen: list[str] = []
    for line in Path(path).read_text().splitlines():
        host = line.strip()
        if host and host not in seen:
            seen.append(host)
    if not seen:
        raise SpecError(f"the nodefile {path} lists no host: is this inside a PBS job ($PBS_NODEFILE)?")
    return seen
