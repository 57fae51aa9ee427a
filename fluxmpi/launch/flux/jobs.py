"""The flux-jobs path: a Parsl executor that submits every MPI task as a Flux job whose command is the MPI app.

Parsl's FluxExecutor runs each rank as a Python program that imports Parsl (~1.3 s of CPU per rank here) before
the app starts. This executor keeps Python out of the ranks:

- its block (SlurmProvider) runs one Flux broker per node, with fluxmpi.launch.flux.block as the instance's
  initial program, which publishes the instance's ssh:// URI, its Python, the block's environment and when the
  instance shuts down in <working_dir>/block-<id>/instance.json, then waits until the block is cancelled or
  its walltime is nearly up;
- this process connects to that URI with flux-python (fluxmpi.launch.flux.client) and submits each call of
  fluxmpi.apps.run_mpi_task as a jobspec whose command is the task's app_argv, shaped by the task spec
  (fluxmpi.launch.flux.jobspec); Flux places the ranks and gives them PMI; output goes to per-task files;
- any other call (the run's compile task) runs as a one-rank Python job (fluxmpi.launch.flux.pyjob).

Campaigns longer than a block (docs/reliability.md has what each fault did):
- Up to `max_blocks` blocks run at once (one by default). When one ends (walltime, scancel, its first node
  died, Slurm failed it) while tasks are left, the executor submits another, shaped to the nodes that are up:
  nodes Slurm will not run jobs on, and nodes Flux lost that have not been seen back, are left out
  (`--exclude`), so a node that came back is used again by the next block (fluxmpi.launch.shaping); a block
  still pending for more nodes than are up is ended and asked again smaller. Tasks that were running in the
  ended block fail (Parsl's retries rerun them); after `max_block_failures` blocks in a row in which no task
  finished, the executor gives up and fails the rest.
- Walltime-aware admission: a task that declares a walltime (its spec's; a timeout alone does not) goes to the block only
  while it fits in the time the block has left, checked again when Flux gives it its nodes (if it no longer
  fits it is cancelled before it starts and waits for the next block, not counted as a failure). A block with
  nothing running that can take none of the waiting tasks is ended so a fresh one can. A task longer than any
  block could run is refused at submit.
- A job with ranks on a broker Flux lost fails with "node failure on HOST", and that host is kept out of every
  later job of that block (Parsl's retry can come before Flux has marked it offline).
- A lost node that comes back is used again while the run goes on (fluxmpi.launch.flux.rejoin): once Slurm has
  listed it unusable and then usable, and tasks wait that it could run, it gets a Flux instance of its own as a
  step of its block's Slurm job if it is still in that job, or a top-up block asks for as many free nodes as the
  blocks lost. Top-ups do not count in max_blocks, are never failures and are not replaced; the jobs queued
  unstarted in the other blocks' Flux are taken back and spread over every block once a top-up is up.

Elastic (max_blocks > 1, idle_release): while tasks wait that no connected block can start now, more blocks are
submitted at once, as many as the waiting nodes need beyond what the blocks still starting will take (up to
max_blocks); each block holds at most QUEUE_DEPTH times its nodes in node-holding jobs (running or queued in its
Flux), so the rest stay here for the other blocks. A block that has run nothing for `idle_release` seconds while
no waiting task could use it is given back (its Slurm job cancelled: on an elastic cluster its nodes then power
down), down to `min_blocks`; a task arriving later brings a block back. An extra block that queues because the
cluster is full waits as long as another block takes jobs (uri_timeout counts once it is the only one). Each
block's submission, start and end are kept (`block_spans`); the run's node-seconds are fluxmpi.usage's.

Admission (which waiting task goes to Flux when): Flux's default scheduler is first come, first served, and a
queued job that does not fit yet holds back every job behind it, so on mixed sizes nodes idle while smaller
tasks wait. So tasks that hold their nodes (exclusive, the default) go to the instance as fluxmpi's node gate
would admit them (fluxmpi.launch.gate: largest-first or in-order) into the block's free nodes, one as each
finished job frees nodes. While every such task waiting or queued has one size, the gate's order is Flux's own,
so they all go at once and Flux starts each the moment nodes free (no round trip per task). Tasks that share
their nodes (and the run's Python calls) go at once: Flux packs cores itself.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from parsl.config import Config
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES
from parsl.utils import RepresentationMixin

from ... import slurm as slurm_client
from ...schedulers import ERRORS, client_of_provider
from ...errors import FluxmpiError
from ...logs import log_into
from ...site import Site
from ...spec import MPITaskSpec
from ..blocks import BlockShape, slurm_provider
from ..scaling import Scaling
from ..shaping import UsableShape, usable_shape
from ..gate import check_policy, pick_next
from .block import WALLTIME_MARGIN, block_command
from .client import InstanceClient
from .executor import SURVIVE_NODE_LOSS, broker_step, flux_client_env, flux_lost_nodes
from .install import FluxInstall, check_flux
from .rejoin import LostNodes, rejoin_step, slurm_nodes_of
from .jobspec import (
    LAUNCHER,
    FluxJobsError,
    JobEnd,
    JobRequest,
    check_fits,
    jobspec,
    mpi_request,
    python_request,
    resource_spec,
    task_failure,
    task_result,
)

logger = logging.getLogger(__name__)

URI_TIMEOUT = 300.0        # seconds for the block to start and publish its instance (queue wait included)
BLOCK_LOOK_PERIOD = 3.0    # seconds between squeue looks while waiting for the instance
START_SLACK = 2            # seconds a job may take from being sent to running, counted against the block's time
REJOIN_AFTER = 300.0       # seconds a node Flux lost is left out of new blocks, unless Slurm saw it go and come back
RETURN_LOOK_PERIOD = 3.0   # seconds between sinfo looks at the nodes Flux lost (only while there are such nodes)
QUEUE_DEPTH = 2            # with several blocks: node-holding work a block is given, in multiples of its nodes
IDLE_LOOK_PERIOD = 1.0     # seconds between looks for blocks idle long enough to give back


class FluxJobsBlockError(FluxmpiError, RuntimeError):
    """The block's Flux instance never became reachable; names the Slurm job and its log."""


class _TaskFuture(Future):
    """A task's future that ignores a second outcome: Parsl's fail-all (set_bad_state_and_fail_all) sets an
    exception on every task the executor was given, finished or not, and may race a job's own end."""

    def set_result(self, result) -> None:
        try:
            super().set_result(result)
        except InvalidStateError:
            pass

    def set_exception(self, exception) -> None:
        try:
            super().set_exception(exception)
        except InvalidStateError:
            pass


@dataclass(eq=False)
class _Block:
    """One block of the executor: its Slurm job, its instance once published, and the jobs sent to it."""
    block_id: str
    nodes: int                                   # nodes it was asked for (fewer than nodes_per_block when some are down)
    job_id: str | None = None
    client: InstanceClient | None = None
    instance: dict | None = None
    ends: float | None = None                    # wall-clock time its instance shuts down (None: unknown)
    sent: dict = field(default_factory=dict)     # id(future) -> (request, future) of jobs sent to its instance
    held: Counter = field(default_factory=Counter)   # task size -> node-holding jobs of that size in `sent`
    lost_hosts: frozenset = frozenset()          # hosts whose broker Flux lost: its later jobs avoid them
    ended: str | None = None                     # why it is over, once it is
    finished: int = 0                            # tasks that ended well in it
    reshaped: bool = False                       # ended while pending, to ask for the nodes that are up
    released: bool = False                       # given back because it was idle (not a failure, not replaced)
    top_up: bool = False                         # for the nodes other blocks lost (not counted in max_blocks)
    parent: "_Block | None" = None               # a top-up inside this block's Slurm job (one returned node)
    step: subprocess.Popen | None = None         # ... started by this srun step
    rejoined: set = field(default_factory=set)   # its lost hosts given their own instance since
    submitted_at: float = field(default_factory=time.time)
    connected_at: float | None = None            # when its instance took jobs
    ended_at: float | None = None
    last_busy: float = field(default_factory=time.time)   # when a job was last sent to or ended in it

    def taking_jobs(self) -> bool:
        return self.client is not None and not self.ended and not self.released

    def usable_nodes(self) -> int:
        return self.nodes - len(self.lost_hosts)

    def span(self) -> dict:
        return {"block": self.block_id, "job": self.job_id, "nodes": self.nodes, "submitted": self.submitted_at,
                "connected": self.connected_at, "ended": self.ended_at, "released": self.released,
                "why_ended": self.ended, "finished": self.finished, "top_up": self.top_up,
                "within": self.parent.block_id if self.parent else None}

    def time_left(self) -> float:
        return float("inf") if self.ends is None else self.ends - time.time()

    def fits_time(self, req: JobRequest) -> bool:
        return req.walltime is None or req.walltime + START_SLACK <= self.time_left()

    def send(self, req: JobRequest, fut: Future) -> None:
        self.sent[id(fut)] = (req, fut)
        if holds_nodes(req):
            self.held[req.spec.nodes] += 1

    def unsend(self, fut: Future) -> None:
        req, _ = self.sent.pop(id(fut), (None, None))
        if req is not None and holds_nodes(req):
            self.held[req.spec.nodes] -= 1
            if not self.held[req.spec.nodes]:
                del self.held[req.spec.nodes]

    def held_nodes(self) -> int:
        """Nodes asked for by the jobs sent here that hold whole nodes (running or queued in Flux). Kept as counts
        per size, not found by a pass over `sent`: that pass ran for each task submitted while thousands were
        queued in Flux, so the run's CPU grew with the square of its tasks."""
        return sum(size * n for size, n in self.held.items())


def holds_nodes(req: JobRequest) -> bool:
    """Whether the node gate admits `req`: an MPI task that keeps its nodes to itself."""
    return req.kind != "python" and req.spec.exclusive


def admit(waiting: list[JobRequest], held: Mapping[int, int], nodes: int, policy: str = "largest-first",
          depth: float | None = None) -> list[int]:
    """Indices into `waiting` of the requests to send to an instance of `nodes` usable nodes, in sending order,
    where `held` counts the node-holding jobs already there by size ({nodes: jobs}; see the module docstring's
    Admission). depth: at most this many times `nodes` in node-holding jobs sent and held (None: no limit, one
    block takes everything)."""
    shared = [i for i, r in enumerate(waiting) if not holds_nodes(r)]
    gated = [i for i, r in enumerate(waiting) if holds_nodes(r)]
    held_nodes = sum(size * n for size, n in held.items())
    if len({waiting[i].spec.nodes for i in gated} | {size for size, n in held.items() if n}) <= 1:
        if depth is None:
            return shared + gated     # one size: first come, first served is the gate's order too
        room = depth * nodes - held_nodes
        queued = []
        for i in gated:               # the next waves queue in Flux (no round trip), the rest stay for other blocks
            if waiting[i].spec.nodes > room:
                break
            room -= waiting[i].spec.nodes
            queued.append(i)
        return shared + queued
    free = nodes - held_nodes
    chosen = []
    while (k := pick_next([waiting[i].spec.nodes for i in gated], free, policy)) is not None:
        i = gated.pop(k)
        free -= waiting[i].spec.nodes
        chosen.append(i)
    return shared + chosen


class FluxJobsExecutor(BlockProviderExecutor, RepresentationMixin):
    """Run Parsl tasks as Flux jobs in a Slurm block holding a Flux instance (see the module docstring).

    provider: the blocks' provider (SlurmProvider); nodes_per_block x cores_per_node (+gpus_per_node): a block,
    against which every task is checked before submission. flux_path: the `flux` command on the nodes.
    working_dir: instance info, per-task stdout/stderr, packed Python calls. walltime: a block's, in seconds
    (its instance shuts down WALLTIME_MARGIN before). uri_timeout: how long a block may take to publish its
    instance. max_block_failures: blocks in a row that end without a task finishing in them, after which the
    executor fails the tasks left instead of starting another. rejoin_after: seconds after Flux lost a node
    during which a new block leaves it out even if Slurm still lists it up (Slurm notices a dead node only after
    its SlurmdTimeout), unless Slurm has listed it unusable and then usable since; after that, what Slurm says
    decides, so a node that came back is used again.
    admission: which waiting node-holding task goes to the instance first as nodes free up ("largest-first" or
    "in-order", as the HTEX paths' node gate). max_blocks: blocks at once (more are added while tasks wait);
    min_blocks: blocks kept however idle; idle_release: seconds a block may run nothing before it is given back
    (None: kept until its walltime or until the tasks left cannot use it).
    """

    fluxmpi_launcher = LAUNCHER     # how fluxmpi's task bodies run here (fluxmpi.mpiapp)

    @staticmethod
    def fluxmpi_resources(spec: MPITaskSpec) -> dict:
        return resource_spec(spec)

    def __init__(self, provider, *, label: str = "flux_jobs", nodes_per_block: int = 1, cores_per_node: int = 1,
                 gpus_per_node: int = 0, flux_path: str = "flux", working_dir: str | None = None,
                 walltime: int = 1800, uri_timeout: float = URI_TIMEOUT, python: str | None = None,
                 link_timeout: int | None = None, block_error_handler: bool | Callable = True,
                 max_block_failures: int = 3, rejoin_after: float = REJOIN_AFTER,
                 admission: str = "largest-first", brokers_by: str = "srun", max_blocks: int = 1,
                 min_blocks: int = 0, idle_release: float | None = None):
        super().__init__(provider=provider, block_error_handler=block_error_handler)
        scaling = Scaling(max_blocks, min_blocks, idle_release)     # a SpecError naming a bad value
        self.max_blocks, self.min_blocks, self.idle_release = scaling.max_blocks, scaling.min_blocks, idle_release
        self.brokers_by = brokers_by            # "srun", or a PBS site's mpiexec (fluxmpi.launch.flux.block)
        self._batch = client_of_provider(provider)
        self.admission = check_policy(admission)
        self.label = label
        self.nodes_per_block, self.cores_per_node, self.gpus_per_node = nodes_per_block, cores_per_node, gpus_per_node
        self.flux_path, self.walltime, self.uri_timeout, self.python = flux_path, int(walltime), uri_timeout, python
        self.link_timeout = link_timeout
        self.working_dir = working_dir
        self.max_block_failures, self.rejoin_after = max_block_failures, rejoin_after
        self._blocks: list[_Block] = []              # blocks not over yet: starting or taking jobs, oldest first
        self.ended_blocks: list[_Block] = []
        self._waiting: list[tuple[JobRequest, Future]] = []   # not sent yet: no instance, or too little time left
        self._lock = threading.RLock()
        self._counter = 0
        self._stopped = threading.Event()
        self._failed_in_a_row = 0
        self.lost = LostNodes(rejoin_after)          # hosts Flux lost (any block), until they are back
        self.nodes_back: dict[str, str] = {}         # host -> how it came back into use (for the run's report)
        self._baseline_options = getattr(provider, "scheduler_options", "")

    # --- BlockProviderExecutor ------------------------------------------------------------------------------
    @property
    def workers_per_node(self) -> int:
        return self.cores_per_node     # at most one 1-core task per core at once

    @property
    def outstanding(self) -> int:
        return sum(1 for f in list(self._tasks.values()) if not f.done())

    @property
    def tasks_dir(self) -> str:
        return os.path.join(self.working_dir, "tasks")

    @property
    def usable_walltime(self) -> int:
        """Seconds a block's instance runs jobs: its walltime less the instance's shut-down margin."""
        return max(1, self.walltime - WALLTIME_MARGIN)

    def _info_file(self, block_id: str) -> str:
        return os.path.join(self.working_dir, f"block-{block_id}", "instance.json")

    def _get_launch_command(self, block_id: str) -> str:
        info = self._info_file(block_id)
        os.makedirs(os.path.dirname(info), exist_ok=True)
        try:
            os.unlink(info)    # left by an earlier run in this run_dir whose first node died (resume): stale
        except FileNotFoundError:
            pass
        nodes = self.provider.nodes_per_block if self.provider is not None else self.nodes_per_block
        return block_command(info, self.flux_path, nodes, self.cores_per_node, self.walltime,
                             python=self.python, link_timeout=self.link_timeout, gpus_per_node=self.gpus_per_node,
                             brokers_by=self.brokers_by)

    def start(self) -> None:
        log_into(self.run_dir)
        super().start()
        self.working_dir = os.path.abspath(self.working_dir or os.path.join(self.run_dir, self.label))
        os.makedirs(self.tasks_dir, exist_ok=True)
        for _ in range(max(1, self.min_blocks)):
            self._new_block("the executor started")
        threading.Thread(target=self._watch, daemon=True, name=f"{self.label}-watch").start()

    def block_spans(self) -> list[dict]:
        """Every block's submission, connection and end times and nodes (for the run's node-seconds)."""
        with self._lock:
            return [b.span() for b in [*self.ended_blocks, *self._blocks]]

    def shutdown(self) -> None:
        self._stopped.set()
        with self._lock:
            blocks = [*self._blocks, *self.ended_blocks]
        for b in blocks:
            if b.client is not None:
                b.client.close()
            if b.step is not None:
                _stop_step(b.step)
        job_ids = [j for _, j in zip(*self._get_block_and_job_ids())]
        if job_ids and self.provider is not None:
            self.provider.cancel(job_ids)     # each instance ends with its block
        self._fail_waiting(FluxJobsBlockError(f"executor {self.label} shut down before the task was submitted"))
        super().shutdown()

    def handle_errors(self, status) -> None:
        super().handle_errors(status)
        # A block that ended (walltime, cancel, node failure) while it took jobs: go on in another.
        with self._lock:
            blocks = list(self._blocks)
        for b in blocks:
            if b.block_id not in (status or {}) or status[b.block_id].state not in TERMINAL_STATES:
                continue
            s = status[b.block_id]
            why = f"block {b.block_id}: {s.state.name} {s.message or ''}".strip()
            # Parsl's state says COMPLETED for a block that hit its walltime; Slurm's says why (TimeLimit, ...).
            batch = _job_state(b.job_id, self._batch) if b.job_id else None
            if batch:
                why += f"; {self._batch.BATCH_SYSTEM} job {b.job_id}: {batch['state']} ({batch['reason']})"
            self._block_over(b, f"its block ended ({why})")

    def scale_out_facade(self, n: int) -> list[str]:
        """Blocks start only when this executor asks (_new_block): Parsl's init-only strategy asks again at its
        first poll, which must not start a second instance."""
        return []

    # --- blocks ---------------------------------------------------------------------------------------------
    def _usable_shape(self, want: int | None = None, also_leave_out: dict[str, str] | None = None) -> UsableShape:
        """How many nodes (at most `want`, default a full block) a new block can have now, and which nodes it must
        leave out: those Slurm will not run jobs on, those Flux lost less than rejoin_after seconds ago and that
        Slurm has not shown back since (Slurm may not have noticed yet), and `also_leave_out`."""
        recent = self.lost.leave_out()
        return usable_shape(getattr(self.provider, "partition", None), want or self.nodes_per_block,
                            {**recent, **(also_leave_out or {})})

    def _counted(self) -> list[_Block]:
        """The blocks max_blocks counts: all but top-ups."""
        return [b for b in self._blocks if not b.top_up]

    def _new_block(self, why: str, top_up: UsableShape | None = None) -> None:
        """Submit a block (shaped to the nodes that are up; `top_up`: the shape of a block for nodes other blocks
        lost) and connect to its instance in the background."""
        with self._lock:
            if self._stopped.is_set() or self.bad_state_is_set:
                return
            if top_up is None and len(self._counted()) >= self.max_blocks:
                return
            topping = [b for b in self._blocks if b.top_up and not b.ended]
            # A full block next to a top-up would pend for the top-up's nodes: it leaves them out.
            shape = top_up or self._usable_shape(also_leave_out=self._hosts_of(topping) if topping else None)
            if top_up is None and topping and shape.nodes < 1:
                shape = self._usable_shape()
            nodes, leave_out = shape.nodes, shape.leave_out
            if nodes < 1:
                self._give_up(f"no node of the partition can take a block ({shape.why})")
                return
            if self.provider is not None:
                self.provider.nodes_per_block = nodes
                self.provider.scheduler_options = "\n".join(
                    o for o in (self._baseline_options, shape.exclude_option()) if o)
            ids = BlockProviderExecutor.scale_out_facade(self, 1)
            if not ids or ids[0] not in self.blocks_to_job_id:
                reason = "; ".join(s.message or s.state.name for s in self._simulated_status.values())
                self._give_up(f"the Flux block could not be submitted: {reason or 'no block was started'}")
                return
            b = _Block(ids[0], nodes, job_id=str(self.blocks_to_job_id[ids[0]]), top_up=top_up is not None)
            self._blocks.append(b)
        logger.info("%s: %sblock %s (%s job %s, %d nodes%s) submitted: %s", self.label,
                    "top-up " if b.top_up else "", b.block_id,
                    self._batch.BATCH_SYSTEM, b.job_id, nodes,
                    f", leaving out {', '.join(leave_out)}" if leave_out else "", why)
        threading.Thread(target=self._connect, args=(b,), daemon=True, name=f"{self.label}-connect").start()

    def _connect(self, b: _Block) -> None:
        try:
            instance = self._wait_for_instance(self._info_file(b.block_id), b.job_id, until_ended=b)
            if b.parent is not None and b.parent.instance:
                # Its broker was started from here: the jobs get the block's environment, not this process's.
                instance = {**instance, "env": b.parent.instance.get("env") or {},
                            "python": b.parent.instance.get("python") or instance.get("python")}
            client = InstanceClient(instance["uri"], on_lost=lambda why: self._leader_lost(b, why)).start()
        except Exception as err:  # noqa: BLE001 - the block is over; another may be tried
            self._block_over(b, str(err))
            return
        with self._lock:
            b.instance, b.client = instance, client
            b.ends = instance.get("ends")
            b.connected_at = b.last_busy = time.time()
        logger.info("%s: connected to the Flux instance of %s job %s at %s (%s left)", self.label,
                    self._batch.BATCH_SYSTEM, b.job_id,
                    instance["uri"], "?" if b.ends is None else f"{b.time_left():.0f}s")
        if b.top_up:
            self._note_back(b)
            self._move_queued_to(b)
        self._dispatch()

    def _others_take_jobs(self, b: _Block) -> bool:
        with self._lock:
            return any(o is not b and o.taking_jobs() for o in self._blocks)

    def _unpublished(self, b: _Block) -> bool:
        """Whether b's block program has withdrawn its instance.json: it does so on SIGTERM (walltime, scancel) and
        before it shuts the instance down."""
        return b.instance is not None and not os.path.exists(self._info_file(b.block_id))

    def _leader_lost(self, b: _Block, why: str) -> None:
        """The connection to b's instance ended on its own: its first node (the leader broker) died or cannot be
        reached, or the instance shut down. The next block leaves that node out for a while (rejoin_after)."""
        host = (b.instance or {}).get("host")
        # The block program removes its instance.json as it shuts the instance down (walltime, scancel): then the
        # node is fine. A dead leader leaves the file behind.
        shut_down = self._unpublished(b)
        if host and not b.ended and not shut_down:
            with self._lock:
                self.lost.lose([host])
        what = "shut down" if shut_down else f"was lost ({why})"
        self._block_over(b, f"the connection to its Flux instance on {host or '?'} {what}")

    def _wait_for_instance(self, info_file: str, job_id: str, until_ended: _Block | None = None) -> dict:
        """The block's instance.json, once it exists; an error naming the job and its log if it does not come."""
        deadline = time.monotonic() + self.uri_timeout
        next_look = time.monotonic() + BLOCK_LOOK_PERIOD
        job = f"{self._batch.BATCH_SYSTEM} job {job_id}"
        said_queued = False
        while time.monotonic() < deadline and not self._stopped.is_set():
            if until_ended is not None and until_ended.ended:
                raise FluxJobsBlockError(f"{job} ended before its instance was published")
            if until_ended is not None and until_ended.step is not None and until_ended.step.poll() is not None:
                raise FluxJobsBlockError(
                    f"the step starting a Flux instance in {job} exited ({until_ended.step.returncode}) before it "
                    f"published {info_file}: see {os.path.join(os.path.dirname(info_file), 'step.log')}")
            if until_ended is not None and until_ended.step is None and self._others_take_jobs(until_ended):
                # An extra block may queue behind the cluster's other work while another runs the tasks: the
                # bound counts from when it is the only one left.
                deadline = time.monotonic() + self.uri_timeout
                if not said_queued:
                    logger.info("%s: %s (an extra block) may queue: the other block(s) go on meanwhile",
                                self.label, job)
                    said_queued = True
            if os.path.exists(info_file):
                with open(info_file) as f:
                    return json.load(f)
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + BLOCK_LOOK_PERIOD
                state = _job_state(job_id, self._batch)
                if until_ended is not None and state.get("state") == "PENDING":
                    self._replace_if_outgrown(until_ended)
                if state.get("state") not in (None, "PENDING", "CONFIGURING", "RUNNING"):
                    raise FluxJobsBlockError(
                        f"{job} (the Flux block) is {state['state']} ({state.get('reason')}) and never "
                        f"published its instance in {info_file}: see its log {self._block_log(job_id)}")
            time.sleep(0.1)
        if self._stopped.is_set():
            raise FluxJobsBlockError("the executor shut down while waiting for its Flux instance")
        ask = "squeue -j" if self._batch is slurm_client else "qstat -f"
        raise FluxJobsBlockError(
            f"the Flux instance of {job} did not publish its URI in {info_file} within {self.uri_timeout:.0f}s "
            f"(still queued? `{ask} {job_id}`); see its log {self._block_log(job_id)}")

    def _replace_if_outgrown(self, b: _Block) -> None:
        """A block still pending that asks for more nodes than are up now (one went down after it was
        submitted) would pend until that node returns: end it, not counted as a failure, so the next asks for
        what is up."""
        shape = self._usable_shape()
        if 1 <= shape.nodes < b.nodes:
            b.reshaped = True
            raise FluxJobsBlockError(f"{self._batch.BATCH_SYSTEM} job {b.job_id} pends for {b.nodes} nodes but only "
                                     f"{shape.nodes} are up ({shape.why}); the next block asks for {shape.nodes}")

    def _block_log(self, job_id: str | None) -> str:
        info = (getattr(self.provider, "resources", {}) or {}).get(job_id) or {}
        return info.get("job_stdout_path") or f"the provider's script directory ({self.label}, job {job_id})"

    def _block_over(self, b: _Block, why: str) -> None:
        """`b` takes no more jobs: cancel its Slurm job, and start another block while tasks are left."""
        with self._lock:
            if b.ended:
                return
            b.ended, b.ended_at = why, time.time()
            self.ended_blocks.append(b)
            if b in self._blocks:
                self._blocks.remove(b)
            if not (b.reshaped or b.released or b.top_up):    # asked again smaller, given back idle, a top-up
                self._failed_in_a_row = 0 if b.finished else self._failed_in_a_row + 1
            failed_in_a_row = self._failed_in_a_row
            inside = [o for o in self._blocks if o.parent is b]     # instances in its Slurm job end with it
            in_blocks = len(b.sent) + sum(len(o.sent) for o in self._blocks)
            work_left = bool(self._waiting) or self.outstanding > in_blocks
        logger.warning("%s: block %s (%s job %s) is over: %s", self.label, b.block_id,
                       self._batch.BATCH_SYSTEM, b.job_id, why)
        if b.client is not None:
            threading.Thread(target=b.client.close, daemon=True).start()
        if b.step is not None:
            _stop_step(b.step)          # the Slurm job is its parent's: only this step ends
        elif b.job_id and self.provider is not None and not self._stopped.is_set():
            threading.Thread(target=self._cancel_quietly, args=(b.job_id,), daemon=True).start()
        for o in inside:
            o.released = True
            self._block_over(o, f"the block it runs in ({b.block_id}) is over")
        if self._stopped.is_set():
            return
        if failed_in_a_row >= self.max_block_failures:
            self._give_up(f"{failed_in_a_row} blocks in a row ended without a task finishing in them; the last: "
                          f"{why}")
        elif work_left and not b.released and not b.top_up:
            self._new_block(f"block {b.block_id} is over and tasks are left")

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.provider.cancel([job_id])
        except Exception as err:  # noqa: BLE001 - the block ends at its walltime anyway
            logger.warning("%s: cancelling %s job %s failed: %s", self.label, self._batch.BATCH_SYSTEM, job_id, err)

    def _give_up(self, why: str) -> None:
        err = FluxJobsBlockError(f"the flux-jobs executor {self.label} starts no more blocks: {why}")
        self.set_bad_state_and_fail_all(err)
        self._fail_waiting(err)

    def _fail_waiting(self, err: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(err)

    # --- tasks ----------------------------------------------------------------------------------------------
    def submit(self, func: Callable, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        if self.bad_state_is_set:
            raise self.executor_exception
        fut = _TaskFuture()
        with self._lock:
            self._counter += 1
            fut.parsl_executor_task_id = self._counter
            self._tasks[self._counter] = fut
            n = self._counter
        try:
            req = mpi_request(func, resource_specification, args, kwargs, self.tasks_dir)
            if req is None:
                req = self._python_call(n, func, resource_specification, args, kwargs)
            check_fits(req, self.nodes_per_block, self.cores_per_node, self.gpus_per_node)
            check_walltime(req, self.usable_walltime)
        except Exception as err:  # noqa: BLE001 - refused before Flux saw it: the task fails with the reason
            fut.set_exception(err)
            return fut
        with self._lock:
            self._waiting.append((req, fut))
            start_one = not self._blocks and self._started_once
        if start_one:
            self._new_block("a task arrived and no block was running")
        self._dispatch()
        return fut

    @property
    def _started_once(self) -> bool:
        return bool(self.blocks_to_job_id)

    def _python_call(self, n: int, func: Callable, rs: dict, args: tuple, kwargs: dict) -> JobRequest:
        from parsl.serialize import pack_apply_message

        req = python_request(f"parsl-{n}", rs, self.python or "python3", self.tasks_dir)
        # The block's own Python runs the call once the instance is known (see _send).
        with open(req.call_file, "wb") as f:
            f.write(pack_apply_message(func, args, kwargs))
        return req

    def _dispatch(self) -> None:
        """Send each waiting task to a block that can take it: connected, the task fits its nodes, and the task's
        time limit fits the time the block has left (oldest block first). A block with nothing running that can
        take none of the waiting tasks is ended, so that a new one (full time, the nodes up now) can. Tasks still
        waiting bring more blocks (_blocks_wanted), up to max_blocks."""
        with self._lock:
            blocks = [b for b in self._blocks if b.taking_jobs()]
        ending = [b for b in blocks if self._unpublished(b)]
        for b in ending:
            self._block_over(b, "its block is ending: the block program withdrew its instance")
        depth = QUEUE_DEPTH if self.max_blocks > 1 or len(blocks) > 1 else None
        sends, stuck = [], []
        with self._lock:
            waiting = [(req, fut) for req, fut in self._waiting if not fut.done()]
            for b in blocks:
                if not waiting:       # called per submit and per finished job: nothing to place is the usual case
                    break
                if b in ending or b.ended:
                    continue
                fitting, keep = [], []
                for req, fut in waiting:
                    fits = b.fits_time(req) and req.spec.nodes <= b.usable_nodes()
                    (fitting if fits else keep).append((req, fut))
                picked = set(admit([req for req, _ in fitting], b.held, b.usable_nodes(), self.admission,
                                   depth))
                for i, (req, fut) in enumerate(fitting):
                    if i in picked:
                        b.send(req, fut)
                        sends.append((b, req, fut))
                waiting = [item for item in waiting if id(item[1]) not in b.sent]
                if keep and not b.sent and len(keep) == len(waiting):
                    stuck.append((b, keep))
            self._waiting = waiting
            grow = self._blocks_wanted(waiting) if waiting and not stuck and self._started_once else 0
        for b, req, fut in sends:
            b.last_busy = time.time()
            self._send(b, req, fut)
        for b, keep in stuck:
            req = keep[0][0]
            if b.top_up:
                b.released = True      # its few nodes suit none of what waits: not a failure, not replaced
            self._block_over(b, f"none of the {len(keep)} waiting task(s) fits in it (e.g. task {req.task}: "
                                f"{req.spec.nodes} nodes, {_limit(req)}; the block has {b.nodes} nodes and "
                                f"{max(0.0, b.time_left()):.0f}s left)")
        for _ in range(grow):
            self._new_block(f"{len(waiting)} task(s) wait that the running blocks cannot start")

    def _blocks_wanted(self, waiting: list[tuple[JobRequest, Future]]) -> int:
        """How many more blocks the waiting tasks need, beyond what the blocks still starting will take (each
        takes QUEUE_DEPTH times its nodes), up to max_blocks. Called with the lock held."""
        room = self.max_blocks - len(self._counted())
        if room <= 0:
            return 0
        demand = sum(req.spec.nodes if holds_nodes(req) else 1 for req, _ in waiting)
        starting = sum(QUEUE_DEPTH * b.nodes for b in self._blocks if not b.taking_jobs() and not b.ended)
        nodes = self.provider.nodes_per_block if self.provider is not None else self.nodes_per_block
        per_block = QUEUE_DEPTH * nodes
        return min(room, max(0, -(-(demand - starting) // per_block)))

    def _watch(self) -> None:
        """Looks that no event triggers: blocks idle long enough to give back, nodes lost that are back."""
        next_return_look = 0.0
        while not self._stopped.wait(IDLE_LOOK_PERIOD):
            try:
                if self.idle_release is not None:
                    self._give_back_idle()
                short = any(b.lost_hosts for b in list(self._blocks))
                if (self.lost.lost_at or short) and time.monotonic() >= next_return_look:
                    next_return_look = time.monotonic() + RETURN_LOOK_PERIOD
                    self._look_for_returns()
            except Exception as err:  # noqa: BLE001 - a failed look (sinfo, squeue) is tried again next time
                logger.warning("%s: looking at idle blocks and lost nodes failed: %s", self.label, err)

    def _look_for_returns(self) -> None:
        """Ask Slurm which lost nodes are back (fluxmpi.launch.flux.rejoin.LostNodes): new blocks may use them at
        once, without waiting rejoin_after; then give the capacity blocks lost back to them (_top_up)."""
        partition = getattr(self.provider, "partition", None)
        if not partition or self._batch is not slurm_client:
            return      # PBS: lost nodes are left out of new blocks for rejoin_after, then used again
        with self._lock:
            pending = bool(self.lost.lost_at)
        unusable = slurm_client.unusable_nodes(partition) if pending else {}
        with self._lock:
            back = self.lost.look(unusable)
        for host in back:
            logger.warning("%s: node %s is back in service (Slurm listed it unusable after Flux lost it, and now "
                           "usable)", self.label, host)
        self._top_up()

    def _top_up(self) -> None:
        """While running blocks are short of nodes Flux lost in them and tasks wait (here, or queued in those
        blocks' Flux) that fewer nodes can run: a lost node that is back and still in its block's Slurm job gets an
        instance of its own there (_rejoin_in_block); beyond that, a top-up block asks for as many free nodes as
        are still missing (leaving out every node this executor's blocks hold)."""
        with self._lock:
            live = [b for b in self._blocks if not b.ended and not b.released]
            short = [b for b in live if not b.top_up and b.lost_hosts]
            want = sum(len(b.lost_hosts) for b in short) - sum(b.nodes for b in live if b.top_up)
            if want < 1 or not self._work_for(1, live):
                return
            returned = [(b, h) for b in short for h in sorted(b.lost_hosts - b.rejoined) if self.lost.is_back(h)]
        if returned:
            held = slurm_nodes_of(sorted({b.job_id for b, _ in returned}))
            for b, host in returned:
                if host in held.get(b.job_id, ()) and want >= 1:
                    self._rejoin_in_block(b, host)
                    want -= 1
        with self._lock:
            if want < 1 or not self._work_for(want, live):
                return
        shape = self._usable_shape(want, self._hosts_of(live))
        if shape.nodes >= 1:
            self._new_block(f"its blocks lost {want} node(s) and tasks wait that {shape.nodes} node(s) can run",
                            top_up=shape)

    def _rejoin_in_block(self, parent: _Block, host: str) -> None:
        """Start a one-node Flux instance on `host`, which Flux dropped from `parent`'s instance and which is back,
        as a step of parent's Slurm job (the node is still allocated to it, paid for, and idle otherwise)."""
        info = parent.instance or {}
        block_id = f"{parent.block_id}-{host}"
        info_file = self._info_file(block_id)
        os.makedirs(os.path.dirname(info_file), exist_ok=True)
        try:
            os.unlink(info_file)
        except FileNotFoundError:
            pass
        # Its instance shuts down when parent's does: what parent has left, plus the margin the program takes off.
        walltime = (int(parent.time_left()) if parent.ends is not None else self.walltime) + WALLTIME_MARGIN
        program = [info.get("python") or self.python or "python3", "-m", "fluxmpi.launch.flux.block", info_file,
                   self.flux_path, str(walltime)]
        argv = rejoin_step(broker_step(self.flux_path, 1, self.cores_per_node, link_timeout=self.link_timeout),
                           parent.job_id, host) + program
        env = {**os.environ, **(info.get("env") or {})}       # the block's set-up; Slurm's SLURM_CONF is kept
        log_path = os.path.join(os.path.dirname(info_file), "step.log")
        with self._lock:
            if self._stopped.is_set() or parent.ended or host in parent.rejoined:
                return
            parent.rejoined = parent.rejoined | {host}
            with open(log_path, "ab") as log:
                step = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
            b = _Block(block_id, 1, job_id=parent.job_id, top_up=True, parent=parent, step=step)
            self._blocks.append(b)
        logger.warning("%s: node %s is back and still in block %s (%s job %s): a Flux instance of its own runs "
                       "there now, as a step of that job (%s)", self.label, host, parent.block_id,
                       self._batch.BATCH_SYSTEM, parent.job_id, shlex.join(argv[:6]) + " ...")
        threading.Thread(target=self._connect, args=(b,), daemon=True, name=f"{self.label}-connect").start()

    def _note_back(self, b: _Block) -> None:
        """Say, for the run's report, which lost nodes take jobs again in top-up block `b` and how soon."""
        hosts = [b.block_id.split("-", 1)[1]] if b.parent is not None else sorted(self._hosts_of([b]))
        for host in hosts:
            seen = self.lost.returned.get(host)
            if seen is None:
                continue        # a free node that was never lost: a top-up may get any
            where = (f"a Flux instance of its own inside block {b.parent.block_id} ({self._batch.BATCH_SYSTEM} job "
                     f"{b.job_id})" if b.parent is not None else
                     f"top-up block {b.block_id} ({self._batch.BATCH_SYSTEM} job {b.job_id})")
            self.nodes_back[host] = (f"back {self.lost.away.get(host, 0):.0f}s after Flux lost it; taking tasks "
                                     f"again {(b.connected_at or time.time()) - seen:.1f}s later in {where}")
            logger.warning("%s: node %s is %s", self.label, host, self.nodes_back[host])

    def _work_for(self, nodes: int, blocks: list[_Block]) -> bool:
        """Whether a task of at most `nodes` nodes waits here, or queues in the Flux of a block that has more
        node-holding jobs than usable nodes. Called with the lock held."""
        if any(req.spec.nodes <= nodes for req, fut in self._waiting if not fut.done()):
            return True
        for b in blocks:
            if b.held_nodes() > b.usable_nodes() and any(size <= nodes for size in b.held):
                return True
        return False

    def _hosts_of(self, blocks: list[_Block]) -> dict[str, str]:
        """{host: "held by block N"} of the nodes the blocks' jobs hold (Slurm's view; none asked on PBS)."""
        ids = sorted({b.job_id for b in blocks if b.job_id})
        held = slurm_nodes_of(ids) if self._batch is slurm_client else {}
        return {host: f"held by block {b.block_id} of this run" for b in blocks for host in held.get(b.job_id, ())}

    def _move_queued_to(self, top_up: _Block) -> None:
        """Take back the jobs the other blocks' Flux has not started (they wait for nodes there), so that the
        dispatch spreads them over every block, the top-up included."""
        with self._lock:
            others = [b for b in self._blocks if b is not top_up and b.taking_jobs()
                      and b.held_nodes() > b.usable_nodes()]
        for b in others:
            logger.info("%s: taking back the jobs queued in block %s for the top-up block %s", self.label,
                        b.block_id, top_up.block_id)
            b.client.withdraw_unstarted(f"fluxmpi: moved from block {b.block_id} to top-up block "
                                        f"{top_up.block_id}")

    def _give_back_idle(self) -> None:
        """Give back blocks that ran nothing for idle_release seconds while no waiting task could use them."""
        with self._lock:
            waiting = [req for req, fut in self._waiting if not fut.done()]
            # A block still starting counts too (its last_busy is its submission): if nothing waits for it,
            # cancelling it now saves the idle time it would pay once it starts.
            idle = [b for b in self._blocks if not b.ended and not b.sent
                    and time.time() - b.last_busy >= self.idle_release
                    and not any(b.fits_time(r) and r.spec.nodes <= b.usable_nodes() for r in waiting)]
            # Blocks still starting go first, then those with the least time left; min_blocks stay.
            idle.sort(key=lambda b: (b.client is not None, b.time_left()))
            idle = idle[:max(0, len(self._blocks) - self.min_blocks)]
            for b in idle:
                b.released = True
        for b in idle:
            what = "ran nothing" if b.client is not None else "was still starting with nothing to run"
            self._block_over(b, f"it {what} for {time.time() - b.last_busy:.0f}s (idle_release "
                                f"{self.idle_release:g}s): given back")

    def _send(self, b: _Block, req: JobRequest, fut: Future) -> None:
        info = b.instance or {}
        if req.kind == "python" and not self.python and info.get("python"):
            req.command[0] = info["python"]
        env = info.get("env") or {}

        def hold_back() -> str | None:
            if b.fits_time(req):
                return None
            return (f"fluxmpi: {_limit(req)} (+{START_SLACK}s to start) no longer fits the "
                    f"{max(0.0, b.time_left()):.0f}s its block has left")
        b.client.submit(jobspec(req, env, self.working_dir, avoid=b.lost_hosts),
                        lambda end: self._ended(b, req, fut, end, env.get("FLUXMPI_ENV_FILE")),
                        hold_back=hold_back if req.walltime else None)

    def _instance_lost(self, b: _Block, why: str, connection_lost: bool) -> str:
        """What a task still out is told once its block's instance is gone."""
        if not connection_lost:
            return (f"its block ({self._batch.BATCH_SYSTEM} job {b.job_id}) ended before the task did ({why}); "
                    f"the task's run there is lost")
        info = b.instance or {}
        return (f"the Flux instance stopped answering: the connection to its leader broker on the first node "
                f"{info.get('host', '?')} of {self._batch.BATCH_SYSTEM} job {b.job_id} was lost ({why}); that node "
                f"died or cannot be reached, and the task's run there is lost")

    def _ended(self, b: _Block, req: JobRequest, fut: Future, end: JobEnd, env_file: str | None) -> None:
        with self._lock:
            b.unsend(fut)
            b.last_busy = time.time()
        if fut.done():
            return
        if end.held_back:
            # Cancelled by fluxmpi itself before it started (too little time left): back to the queue, not a failure.
            logger.info("%s: task %s held back for another block: %s", self.label, req.task, end.held_back)
            with self._lock:      # in submission order again, so the next block runs them in that order
                self._waiting.append((req, fut))
                self._waiting.sort(key=lambda item: item[1].parsl_executor_task_id)
            self._dispatch()
            return
        ok = not end.error and not end.exception and end.status == 0
        if not ok and not b.ended and self._unpublished(b):
            # Its block is ending (Slurm's SIGTERM at the walltime or a scancel reached the ranks): take no retry there.
            self._block_over(b, "its block is ending: the block program withdrew its instance")
        connection_lost = b.client.lost if b.client is not None else None
        if end.error and (connection_lost or b.ended):
            end.error = self._instance_lost(b, connection_lost or b.ended, bool(connection_lost))
        if end.exception:
            dead = flux_lost_nodes([end.exception[1]])
            if dead:       # before the future fails: Parsl may submit the retry from inside set_exception
                with self._lock:
                    b.lost_hosts = b.lost_hosts | set(dead)
                    self.lost.lose(dead)
                logger.warning("%s: Flux lost node(s) %s; later jobs avoid them", self.label, ", ".join(sorted(dead)))
        if not ok:
            failure = task_failure(req, end)
            logger.info("%s: %s", self.label, str(failure).splitlines()[0])
            fut.set_exception(failure)
        elif req.kind == "python":
            from parsl.serialize import deserialize
            try:
                with open(req.result_file, "rb") as f:
                    fut.set_result(deserialize(f.read()))
            except Exception as err:  # noqa: BLE001
                fut.set_exception(FluxJobsError(f"task {req.task}: its result {req.result_file} is unreadable: {err}"))
        else:
            fut.set_result(task_result(req, end, env_file))
        if ok:
            with self._lock:
                b.finished += 1
                self._failed_in_a_row = 0
        self._dispatch()      # a block left idle with only tasks it cannot take is ended here


def _stop_step(step: subprocess.Popen, grace: float = 10.0) -> None:
    """End an srun step started here: SIGTERM (srun passes it to the block program, which shuts its instance
    down), SIGKILL after `grace` seconds, in the background."""
    def stop() -> None:
        if step.poll() is not None:
            return
        step.terminate()
        try:
            step.wait(grace)
        except subprocess.TimeoutExpired:
            step.kill()
            step.wait(5)
    threading.Thread(target=stop, daemon=True, name="fluxmpi-stop-step").start()


def _limit(req: JobRequest) -> str:
    return "no walltime" if req.walltime is None else f"a walltime of {req.walltime}s"


def check_walltime(req: JobRequest, usable: int) -> None:
    """Refuse a task whose declared walltime exceeds what any block's instance runs jobs for."""
    if req.walltime is not None and req.walltime + START_SLACK > usable:
        raise FluxJobsError(
            f"task {req.task} has {_limit(req)} but a block's Flux instance runs jobs for at most {usable}s (its "
            f"walltime less {WALLTIME_MARGIN}s to shut down, and {START_SLACK}s to start): it could never run; give "
            f"the blocks a longer walltime (at least {req.walltime + START_SLACK + WALLTIME_MARGIN}s) or the task a "
            f"shorter one")


def _job_state(job_id: str, client=slurm_client) -> dict:
    """The block's state, reason and nodes from its batch system (`client`, fluxmpi.schedulers); {} when squeue
    (qstat) does not answer (asked again later)."""
    try:
        return client.job_states([job_id]).get(job_id, {})
    except ERRORS as err:
        logger.info("the batch system about the Flux block %s: %s", job_id, err)
        return {}


def flux_jobs_config(site: Site, *, nodes_per_block: int | None = None, walltime: int | str = 1800,
                     worker_init: str = "", run_dir: str = "runinfo", label: str = "flux_jobs",
                     install: FluxInstall | None = None, uri_timeout: float = URI_TIMEOUT,
                     status_period: int = 60, link_timeout: int | None = None, apply_env: bool = True,
                     max_block_failures: int = 3, rejoin_after: float = REJOIN_AFTER,
                     admission: str = "largest-first", max_blocks: int = 1, min_blocks: int = 0,
                     idle_release: float | None = None) -> Config:
    """A Parsl Config with one FluxJobsExecutor: Slurm blocks of `nodes_per_block` nodes running Flux, one at a
    time by default, replaced when one ends while tasks are left (max_block_failures, rejoin_after:
    FluxJobsExecutor's). Elastic: up to `max_blocks` at once while tasks wait, each given back after
    `idle_release` seconds of running nothing, down to `min_blocks`.

    worker_init: shell lines for the block before the brokers start; the jobs get the resulting environment.
    link_timeout: seconds before a broker whose link is down is dropped (as on the flux path: the run's
    heartbeat threshold). apply_env: export FLUX_SSH / FLUX_SSH_RCMD into this process (flux's ssh connector
    reads them from it). admission: the node gate's policy (FluxJobsExecutor).
    """
    Scaling(max_blocks, min_blocks, idle_release)
    install = install or check_flux()
    shape = BlockShape.build(site, nodes_per_block, 1, walltime)
    client_env = flux_client_env(site, install)
    if apply_env:
        os.environ.update(client_env)
    if site.scheduler == "pbs":       # Flux inside a PBS job: brokers by the site's mpiexec over $PBS_NODEFILE
        from ..pbs_blocks import check_pbs_path, pbs_provider, rank_launcher
        check_pbs_path(site, "flux-jobs")
        provider, brokers_by = pbs_provider(site, shape, worker_init, status_period=status_period), rank_launcher(site)
    else:
        provider = slurm_provider(site, shape, worker_init, status_period=status_period,
                                  sbatch_options=(SURVIVE_NODE_LOSS,))
        brokers_by = "srun"
    provider.max_blocks = max_blocks
    executor = FluxJobsExecutor(
        provider, brokers_by=brokers_by,
        label=label, nodes_per_block=shape.nodes_per_block, cores_per_node=site.cores_per_node,
        gpus_per_node=site.gpus_per_node, flux_path=install.flux,
        working_dir=str(Path(run_dir).resolve() / label), walltime=shape.walltime, uri_timeout=uri_timeout,
        link_timeout=link_timeout, max_block_failures=max_block_failures, rejoin_after=rejoin_after,
        admission=admission, max_blocks=max_blocks, min_blocks=min_blocks, idle_release=idle_release)
    return Config(executors=[executor], run_dir=run_dir, strategy="none", initialize_logging=True)
