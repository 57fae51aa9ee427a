"""Flux: `flux run` options and the RFC 25 jobspec a task becomes (flux-core 0.88)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ..spec import FLUX_COMMAND_PLACEHOLDER, SpecError

logger = logging.getLogger(__name__)


def flux_run_args(spec) -> list[str]:
    """argv for `flux run` (same options for `flux submit`): ranks spread evenly over -N nodes.

    -t is given in seconds with an explicit unit because a bare number means minutes to flux.
    """
    argv = ["-N", str(spec.nodes), "-n", str(spec.ranks), "-c", str(spec.cores_per_rank)]
    if spec.gpus_per_rank:
        argv += ["--gpus-per-task", str(spec.gpus_per_rank), "-o", f"gpu-affinity={gpu_affinity(spec)}"]
    if spec.exclusive:
        argv.append("-x")
    if spec.walltime is not None:
        argv += ["-t", f"{spec.walltime}s"]
    return argv


def gpu_affinity(spec) -> str:
    """The job shell's gpu-affinity option that gives each rank exactly its spec's GPUs. Flux's default (on)
    shows every rank all of the job's GPUs on its node; per-task divides them among the node's ranks, which is
    right only when the job got just what it asked for: an exclusive job gets every GPU of its nodes (seen here:
    2 ranks x 1 GPU on 4-GPU nodes saw 2 each). So an exclusive job maps each local rank to its own ids."""
    if not spec.exclusive:
        return "per-task"
    g = spec.gpus_per_rank
    return "map:" + ";".join(f"{i * g}-{i * g + g - 1}" if g > 1 else str(i) for i in range(spec.ranks_per_node))


def rank_visible_gpus(visible: str | None, local_rank: int, gpus_per_rank: int) -> str | None:
    """The GPUs one rank should see from the ids Flux's job shell showed it (CUDA_VISIBLE_DEVICES).

    Jobs Parsl's FluxExecutor submits carry no shell options, so Flux's default affinity shows every rank all of
    the job's GPUs on its node; rank `local_rank` of the node takes its own `gpus_per_rank` of them, in order.
    None when there is nothing to narrow (no ids, or no more than the rank's share)."""
    ids = [i for i in (visible or "").split(",") if i.strip() and not i.strip().startswith("-")]
    if not gpus_per_rank or len(ids) <= gpus_per_rank or len(ids) < (local_rank + 1) * gpus_per_rank:
        return None
    return ",".join(ids[local_rank * gpus_per_rank:(local_rank + 1) * gpus_per_rank])


def flux_jobspec(spec, command: Sequence[str] | None = None) -> dict[str, Any]:
    """A Flux jobspec v1 (RFC 25) dict: N nodes, each with RPN slots of C cores (+G GPUs).

    One task per slot; duration 0 means no limit; with GPUs, the shell's gpu-affinity (gpu_affinity). `command`
    defaults to FLUX_COMMAND_PLACEHOLDER for the caller to replace; environment and cwd are the submitter's to add.
    """
    if command is None:
        command = [FLUX_COMMAND_PLACEHOLDER]
    elif isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
        raise SpecError(f"command={command!r} is not a non-empty list of strings: give e.g. ['mpi_hello']")
    per_slot: list[dict[str, Any]] = [{"type": "core", "count": spec.cores_per_rank}]
    if spec.gpus_per_rank:
        per_slot.append({"type": "gpu", "count": spec.gpus_per_rank})
    node: dict[str, Any] = {
        "type": "node",
        "count": spec.nodes,
        "with": [{"type": "slot", "count": spec.ranks_per_node, "label": "task", "with": per_slot}],
    }
    if spec.exclusive:
        node["exclusive"] = True
    system: dict[str, Any] = {"duration": spec.walltime or 0}
    if spec.gpus_per_rank:
        system["shell"] = {"options": {"gpu-affinity": gpu_affinity(spec)}}
    return {
        "version": 1,
        "resources": [node],
        "tasks": [{"command": list(command), "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {"system": system},
    }
