"""The HTEX-family executors fluxmpi's configs use: Parsl's own, subclassed so the fixes travel with them.

A Parsl user who loads `fluxmpi.config("htex", ...)` and keeps their own apps (a `@bash_app` using
`$PARSL_MPI_PREFIX`, or `@fluxmpi.mpi_app`) gets, from the executor itself:
- admission by free nodes (fluxmpi.launch.gate): a task goes to Parsl's MPIExecutor only when its nodes are
  free, so the executor never backlogs and its backlog defects (a RecursionError that drops a finished task's
  result; a too-large task that waits forever) cannot trigger;
- a task larger than the block refused at submit, naming the task's size and the block's;
- blocks shaped to the nodes that are up (fluxmpi.launch.shaping): after a node is lost, the next block asks
  for the nodes Slurm will still run jobs on instead of pending for the lost one;
- integral resource specifications: the key a user leaves out is derived exactly (or refused) instead of with
  `/`, which gave Parsl's prefix `-ppn 4.0` or `--ntasks-per-node 1.333`;
- walltime-aware admission: a fluxmpi task that declares a walltime starts only while it fits in the time its
  block has left (the batch system's end time of the running block), else waits for the next block; a block
  that runs nothing while every waiting task outlasts it is ended so the next comes sooner; a task longer than
  any block is refused at submit.
Each executor also says how its ranks start (`fluxmpi_launcher`) and which resource specification a task spec
becomes on it (`fluxmpi_resources`), which is how one `@fluxmpi.mpi_app` runs unchanged on every path.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.jobs.states import TERMINAL_STATES

from ..logs import log_into
from ..schedulers import ERRORS, client_of_provider
from ..spec import MPITaskSpec, SpecError, parse_walltime
from .gate import START_SLACK, NodeGate, check_policy
from .shaping import ShapedBlocks

logger = logging.getLogger(__name__)

# Seconds between asking the batch system when the running block ends (walltime-aware admission).
ENDS_PERIOD = 3.0
# The keys of Parsl's MPI resource specification that size a task.
_SIZE_KEYS = ("num_nodes", "num_ranks", "ranks_per_node")


def complete_resource_spec(rs: dict | None) -> dict:
    """Parsl's MPI resource specification with all three size keys, as whole numbers.

    Any two of num_nodes / num_ranks / ranks_per_node give the third exactly; num_nodes alone means one rank per
    node. A count that does not split evenly is refused with the fix, instead of becoming a fraction. None of
    them (a workflow's compile or set-up step): one node, one rank, where MPIExecutor would refuse the task."""
    rs = dict(rs or {})
    given = {k: rs[k] for k in _SIZE_KEYS if rs.get(k) is not None}
    if not given:
        given = {"num_nodes": 1, "num_ranks": 1}
    try:
        spec = MPITaskSpec.build(nodes=given.get("num_nodes"), ranks_per_node=given.get("ranks_per_node"),
                                 ranks=given.get("num_ranks"))
    except SpecError as err:
        raise SpecError(f"parsl_resource_specification {given}: {err}") from None
    return {**rs, **spec.parsl_resource_spec()}


class EarlyBlocks:
    """Submits the initial blocks as the executor starts instead of at the strategy's first tick, which comes a
    strategy period after the interchange is up (sbatch 1.0-2.1 s after parsl.load here); the strategy's own
    initial scale-out then finds them running and adds none, since no executor here holds more than
    provider.max_blocks blocks that have not ended."""

    def start(self) -> None:
        super().start()
        if self.provider is not None and self.provider.init_blocks:
            self.scale_out_facade(self.provider.init_blocks)

    def scale_out_facade(self, n: int) -> list[str]:
        if self.provider is None:
            return super().scale_out_facade(n)
        live = sum(1 for s in self._status.values() if s.state not in TERMINAL_STATES)
        n = min(n, max(0, self.provider.max_blocks - live))
        return super().scale_out_facade(n) if n > 0 else []


class GatedMPIExecutor(ShapedBlocks, EarlyBlocks, MPIExecutor):
    """Parsl's MPIExecutor with admission by free nodes, submit-time refusal of tasks that cannot fit, and
    blocks shaped to the nodes that are up.

    nodes_per_block: nodes of each block (the gate's capacity). admission: which waiting task goes first when
    nodes free up ("largest-first" or "in-order", see fluxmpi.launch.gate). fluxmpi_launcher: how
    `@fluxmpi.mpi_app` tasks start their ranks here ("srun" or "mpiexec-openmpi"). Other arguments: MPIExecutor's.
    """

    def __init__(self, *, nodes_per_block: int, admission: str = "largest-first",
                 fluxmpi_launcher: str = "srun", **kwargs: Any):
        super().__init__(**kwargs)
        self.nodes_per_block = nodes_per_block
        self.admission = check_policy(admission)
        self.fluxmpi_launcher = fluxmpi_launcher
        self._gate = NodeGate(nodes_per_block, policy=admission, time_left=self.block_time_left)
        self._submit_lock = threading.Lock()   # the gate submits from its own threads, outside the DFK's lock
        self._block_ends: dict[str, float] = {}   # job id -> when the batch system ends it (running blocks)
        self._running_jobs: list[str] = []
        self._ends_lock = threading.Lock()
        self._ends_asked = float("-inf")
        self._ended_for_time: set[str] = set()   # jobs fluxmpi ended because no waiting task fit their time left
        self._time_stop = threading.Event()

    @staticmethod
    def fluxmpi_resources(spec: MPITaskSpec) -> dict:
        return spec.parsl_resource_spec()

    def start(self) -> None:
        log_into(self.run_dir)
        logger.info("%s: node gate over %d nodes per block, admission %s, ranks by %s", self.label,
                    self.nodes_per_block, self.admission, self.fluxmpi_launcher)
        super().start()
        threading.Thread(target=self._watch_time, name=f"{self.label}-time-left", daemon=True).start()

    @property
    def waiting(self) -> int:
        """Tasks held back by the gate (their nodes are not free yet)."""
        return self._gate.waiting

    def outstanding(self) -> int:
        """Tasks Parsl's strategy counts as work: those the gate holds back too, or a block ended while only held
        tasks remain (one too short for the next task's walltime) would never be replaced."""
        return super().outstanding() + self._gate.waiting

    # --- walltime-aware admission ------------------------------------------------------------------------
    @property
    def block_walltime(self) -> int | None:
        return parse_walltime(getattr(self.provider, "walltime", None)) if self.provider is not None else None

    def block_time_left(self) -> float | None:
        """Seconds the running block has left (the batch system's end time), None when none runs or it is unknown;
        0 after fluxmpi ended a block for time until the next one runs (its worker pool may still look alive to
        the interchange, which must not be handed a task meanwhile)."""
        ends = {j: t for j, t in self._refresh_ends().items() if j not in self._ended_for_time}
        if ends:
            return min(ends.values()) - time.time()
        return 0.0 if self._ended_for_time else None

    def _refresh_ends(self) -> dict[str, float]:
        """{job id: end time} of the blocks running now, asked of their batch system at most every ENDS_PERIOD s
        (not only at Parsl's block polls, which may be a minute apart)."""
        with self._ends_lock:
            if time.monotonic() - self._ends_asked < ENDS_PERIOD:
                return dict(self._block_ends)
            self._ends_asked = time.monotonic()
            live = [str(j) for b, j in self.blocks_to_job_id.items()
                    if b not in self._replaced and not (b in self._status and self._status[b].terminal)]
            try:
                self._block_ends = client_of_provider(self.provider).job_end_times(live) if live else {}
            except ERRORS as err:
                logger.info("%s: end time of block job(s) %s: %s (asked again later)", self.label, ",".join(live), err)
            return dict(self._block_ends)

    def _watch_time(self) -> None:
        """While tasks wait: every ENDS_PERIOD s, start those a fresh block has time for, and end a block that
        runs nothing while every waiting task outlasts it (Parsl's block polls may be a minute apart)."""
        while not self._time_stop.wait(ENDS_PERIOD):
            if not self._gate.waiting:
                continue
            try:
                running = sorted(self._refresh_ends())
                if any(j not in self._ended_for_time for j in running):
                    self._ended_for_time.clear()      # a block started since: it has its whole walltime
                if running != self._running_jobs:
                    self._running_jobs = running
                    self._gate.poke()                 # a fresh block: tasks that waited for more time may start
                self._end_if_outlasted()
            except Exception as err:  # noqa: BLE001 - one failed look must not end the watch; the next retries
                logger.warning("%s: checking the blocks' time left failed: %s", self.label, err)

    def _end_if_outlasted(self) -> None:
        """A running block that runs nothing while every waiting task needs more time than it has left is ended,
        so the next (a fresh walltime) comes now instead of at this one's end."""
        outlasting = self._gate.idle_and_outlasted()
        if not outlasting:
            return
        left = self.block_time_left()
        for block_id, job_id in list(self.blocks_to_job_id.items()):
            if str(job_id) in self._block_ends and block_id not in self._replaced:
                self._end_block(block_id, str(job_id), f"it runs nothing and has {left:.0f}s left, less than "
                                                       f"every waiting task needs ({'; '.join(outlasting[:3])})")
                self._ended_for_time.add(str(job_id))

    def _check_walltime(self, seconds: float | None, label: str) -> None:
        block = self.block_walltime
        if seconds is not None and block is not None and seconds + START_SLACK > block:
            raise SpecError(f"{label} has a walltime of {seconds:.0f}s but a block of {self.label} runs for at most "
                            f"{block}s: it could never start. Give the blocks a longer walltime (at least "
                            f"{int(seconds + START_SLACK) + 1}s) or the task a shorter one")

    def submit(self, func: Callable, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        rs = complete_resource_spec(resource_specification)
        nodes = int(rs.get("num_nodes", 1))
        label = f"task {getattr(func, '__name__', 'app')} ({nodes} nodes)"
        spec = _mpi_app_spec(args, kwargs)
        seconds = spec.walltime if spec is not None else None
        self._check_walltime(seconds, label)

        def start() -> Future:
            with self._submit_lock:
                return MPIExecutor.submit(self, func, rs, *args, **kwargs)
        fut = self._gate.submit(nodes, start, label=label, seconds=seconds)
        if not fut.done():
            logger.debug("%s waits for free nodes (%d of %d free)", label, self._gate.free, self.nodes_per_block)
        return fut

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self._time_stop.set()
        cancelled = self._gate.cancel_waiting()
        if cancelled:
            logger.info("%s: %d task(s) never admitted (shut down first)", self.label, cancelled)
        super().shutdown(*args, **kwargs)


class StaticBlocksExecutor(EarlyBlocks, HighThroughputExecutor):
    """HTEX with one worker per block and every task spanning the whole block (the pre-MPI-mode workaround).

    A task of another size than the block is refused at submit: a smaller one would leave nodes idle and a
    larger one could never run."""

    fluxmpi_launcher = "srun"

    def __init__(self, *, nodes_per_block: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.nodes_per_block = nodes_per_block

    @staticmethod
    def fluxmpi_resources(spec: MPITaskSpec) -> None:
        return None

    def start(self) -> None:
        log_into(self.run_dir)
        super().start()

    def submit(self, func: Callable, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        spec = _mpi_app_spec(args, kwargs)
        if spec is not None and spec.nodes != self.nodes_per_block:
            raise SpecError(f"a {spec.nodes}-node task cannot run on {self.label}, whose blocks each run one task over "
                            f"all their {self.nodes_per_block} nodes: use tasks of {self.nodes_per_block} nodes, or "
                            f"the htex path for mixed sizes")
        return super().submit(func, resource_specification, *args, **kwargs)


def _mpi_app_spec(args: tuple, kwargs: dict) -> MPITaskSpec | None:
    """The task spec of a fluxmpi task body's call (run_mpi_task / run_mpi_app), else None."""
    spec = kwargs.get("spec", args[0] if args and isinstance(args[0], dict) else None)
    if isinstance(spec, dict) and isinstance(spec.get("spec"), dict):   # run_mpi_app's call: the spec inside
        spec = spec["spec"]
    if isinstance(spec, dict) and "nodes" in spec:
        try:
            return MPITaskSpec.from_dict(spec)
        except SpecError:
            return None
    return None
