"""Blocks shaped to the nodes that are up, so a run that lost a node goes on with the nodes it has.

Why: a replacement block that asks for as many nodes as the one it replaces pends while one of them is down,
and Slurm gives no other answer. Measured here (4-node cluster, one 4-node block, a node killed): the HTEX
replacement stayed PENDING ("Nodes required for job are DOWN, DRAINED or reserved ...") for 10 minutes while
three healthy nodes idled. So every new block asks for at most the nodes Slurm will run jobs on now, leaving the
others out (`--exclude`), and a block that pends for more nodes than are up is cancelled and asked again smaller.

`usable_shape` is the shared rule (the flux-jobs executor uses it too); `ShapedBlocks` applies it to the
HTEX-family executors, whose node gate then holds the block's real size: a task larger than the shrunken block
waits (it is not refused), and once nothing runs and a waiting task needs more nodes than the block has while
the partition has them again, the block is ended so that a full-size one can take it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from parsl.jobs.states import TERMINAL_STATES, JobState

from .. import slurm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UsableShape:
    """How many nodes a block may ask for now (at most the configured size) and which it must leave out."""
    nodes: int
    leave_out: tuple[str, ...] = ()
    why: str = ""             # "fxn3: Slurm lists it down* (Not responding)" for the nodes left out

    def exclude_option(self) -> str:
        """The `#SBATCH --exclude=...` line for the left-out nodes ("" when none)."""
        return f"#SBATCH --exclude={','.join(self.leave_out)}" if self.leave_out else ""


def usable_shape(partition: str | None, want: int, also_leave_out: dict[str, str] | None = None) -> UsableShape:
    """The shape a new block of `want` nodes in `partition` can have now: every node Slurm will not run jobs on
    (down, drained, failing, not responding) and every node of `also_leave_out` ({node: why}, e.g. nodes a
    path lost moments ago, before Slurm noticed) is left out. If Slurm cannot be asked, `want` as configured."""
    extra = dict(also_leave_out or {})
    if not partition:
        return UsableShape(want, tuple(sorted(extra)), _why(extra))
    try:
        every = set(slurm.partition_nodes(partition))
        down = slurm.unusable_nodes(partition)
    except slurm.SlurmError as err:
        logger.info("sinfo about partition %s: %s (asking for %d nodes)", partition, err, want)
        return UsableShape(want, tuple(sorted(extra)), _why(extra))
    out = {n: why for n, why in {**down, **extra}.items() if n in every}
    return UsableShape(min(want, len(every) - len(out)), tuple(sorted(out)), _why(out))


def _why(out: dict[str, str]) -> str:
    return "; ".join(f"{n}: {why}" for n, why in sorted(out.items()))


class ShapedBlocks:
    """Mixin for an HTEX-family executor with one SlurmProvider block at a time and a node gate (`_gate`,
    fluxmpi.launch.gate.NodeGate) sized `nodes_per_block`: each block asks for the nodes that are up.

    Checked at each of Parsl's block polls (every status period): a block still pending that asks for more
    nodes than are up is cancelled (Parsl's strategy submits the next one, shaped); a shrunken block that runs
    nothing while a waiting task needs more nodes than it has, and the partition has them again, is ended."""

    def start(self) -> None:
        self._baseline_options = getattr(self.provider, "scheduler_options", "") or ""
        self._asked: dict[str, int] = {}         # block id -> nodes its job asked for
        self._replaced: set[str] = set()         # block ids fluxmpi cancelled to reshape
        super().start()

    def _launch_block(self, block_id: str):
        provider = self.provider
        if getattr(provider, "max_blocks", 1) != 1:   # the gate's size is one block's: shaping needs one block
            return super()._launch_block(block_id)
        shape = usable_shape(getattr(provider, "partition", None), self.nodes_per_block)
        nodes = shape.nodes if shape.nodes >= 1 else self.nodes_per_block   # nothing up: ask as configured, pend
        provider.nodes_per_block = nodes
        provider.scheduler_options = "\n".join(
            o for o in (self._baseline_options, shape.exclude_option() if shape.nodes >= 1 else "") if o)
        job_id = super()._launch_block(block_id)
        self._asked[block_id] = nodes
        self._gate.resize(nodes)
        if nodes < self.nodes_per_block:
            logger.warning("%s: block %s (Slurm job %s) asks for %d of %d nodes, leaving out what is not up (%s)",
                           self.label, block_id, job_id, nodes, self.nodes_per_block, shape.why)
        return job_id

    def status(self):
        status = super().status()
        for block_id in self._replaced & set(status):
            # Ended by fluxmpi to reshape, not failed: HTEX would call a block that never connected MISSING,
            # which Parsl's error handler counts towards giving up.
            if status[block_id].terminal:
                status[block_id].state = JobState.SCALED_IN
        try:
            self._reshape(status)
        except Exception as err:  # noqa: BLE001 - a failed look must not stop Parsl's poll; the next one retries
            logger.warning("%s: checking block shapes failed: %s", self.label, err)
        return status

    def _reshape(self, status) -> None:
        partition = getattr(self.provider, "partition", None)
        live = {b: s for b, s in status.items() if s.state not in TERMINAL_STATES and b not in self._replaced}
        if not partition or not live:
            return
        for block_id, s in live.items():
            asked = self._asked.get(block_id, self.nodes_per_block)
            job_id = self.blocks_to_job_id.get(block_id)
            if job_id is None:
                continue
            if s.state == JobState.PENDING:
                shape = usable_shape(partition, self.nodes_per_block)
                if 1 <= shape.nodes < asked:
                    self._end_block(block_id, job_id, f"it pends for {asked} nodes but only {shape.nodes} are up "
                                                      f"({shape.why}); the next block asks for {shape.nodes}")
            elif s.state == JobState.RUNNING and asked < self.nodes_per_block:
                need = self._gate.smallest_waiting()
                if need is None or need <= asked or self._gate.free < asked:
                    continue
                shape = usable_shape(partition, self.nodes_per_block)
                if shape.nodes >= need:
                    self._end_block(block_id, job_id, f"it runs nothing, has {asked} nodes, and a waiting task needs "
                                                      f"{need}, which are up again; the next block asks for "
                                                      f"{shape.nodes}")

    def _end_block(self, block_id: str, job_id: str, why: str) -> None:
        logger.warning("%s: cancelling block %s (job %s): %s", self.label, block_id, job_id, why)
        self._replaced.add(block_id)
        try:
            # The interchange would otherwise still hand tasks to the block's worker pool until its heartbeats
            # stop (seen: a task sent to a pool killed by the cancel, lost 60 s later with the next block).
            self._hold_block(block_id)
        except Exception as err:  # noqa: BLE001 - a pool that never connected has nothing to hold
            logger.info("%s: holding block %s's worker pool: %s", self.label, block_id, err)
        self.provider.cancel([job_id])
