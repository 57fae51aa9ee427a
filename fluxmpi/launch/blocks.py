"""What every Slurm-block launch path shares: the block shape, the SlurmProvider built from it, how a run rides
out failures (Resilience), and a watch on the blocks' Slurm jobs that keeps a run from waiting on dead blocks."""

from __future__ import annotations

import functools
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from parsl.jobs.error_handlers import windowed_error_handler
from parsl.launchers import SimpleLauncher
from parsl.launchers.base import Launcher
from parsl.providers import SlurmProvider

from .. import slurm
from ..site import Site
from ..spec import SpecError, format_clock, parse_walltime


# SlurmProvider writes `--ntasks-per-node=1` into every block, which leaves SLURM_NTASKS* saying one task per
# node: Open MPI's mpirun counts slots from them and refuses more ranks, and srun steps inherit them. The
# blocks are exclusive, so widen the counts to every core Slurm gave the job.
SLURM_TASKS_FIX = "\n".join([
    "# fluxmpi: let srun/mpirun inside this block use every core of every node",
    'export SLURM_NTASKS_PER_NODE="${SLURM_CPUS_ON_NODE}"',
    'export SLURM_TASKS_PER_NODE="${SLURM_CPUS_ON_NODE}(x${SLURM_JOB_NUM_NODES})"',
    'export SLURM_NTASKS="$((SLURM_CPUS_ON_NODE * SLURM_JOB_NUM_NODES))"',
    'export SLURM_NPROCS="${SLURM_NTASKS}"',
])


@dataclass(frozen=True)
class Resilience:
    """How a run rides out failures; docs/reliability.md has what each fault did with these settings.

    retries: times Parsl reruns a failed task (Config.retries), on whichever block can take it.
    heartbeat_period, heartbeat_threshold: a worker pool (HTEX paths; it runs on its block's first node)
        heartbeats every period; after threshold seconds of silence the interchange declares it lost and fails
        its tasks (then retried). A link outage shorter than the threshold is ridden out. On the Flux path the
        threshold is the brokers' link timeout (tbon.tcp_user_timeout, see fluxmpi.launch.flux.executor).
    status_period: seconds between Parsl's polls of the blocks' Slurm jobs: how soon a dead block is noticed
        and replaced (SlurmProvider's own fixed value is 60).
    max_block_failures: consecutive failed blocks (e.g. NODE_FAIL) after which Parsl stops replacing them and
        fails the tasks; Parsl's default gives up after the first when a run holds one block.
    block_timeout: seconds in which no block runs while tasks wait, after which fluxmpi fails those tasks
        with the blocks' Slurm states (None: only the run's time limit bounds it).
    """
    retries: int = 0
    heartbeat_period: int = 30
    heartbeat_threshold: int = 120
    status_period: int = 60
    max_block_failures: int = 3
    block_timeout: float | None = None

    def __post_init__(self) -> None:
        def whole(name: str, value, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"{name}={value!r} must be a whole number of at least {low}")
        whole("retries", self.retries, 0)
        whole("heartbeat_period", self.heartbeat_period, 1)
        whole("heartbeat_threshold", self.heartbeat_threshold, 2)
        whole("status_period", self.status_period, 1)
        whole("max_block_failures", self.max_block_failures, 1)
        if self.heartbeat_threshold <= self.heartbeat_period:
            raise SpecError(f"heartbeat_threshold={self.heartbeat_threshold} must exceed heartbeat_period="
                            f"{self.heartbeat_period}: a pool would be declared lost between two heartbeats")
        t = self.block_timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
            raise SpecError(f"block_timeout={t!r} must be positive seconds (or None for no limit)")

    def block_error_handler(self):
        """Parsl's block error handler: give up after max_block_failures failed blocks in a row."""
        return functools.partial(windowed_error_handler, threshold=self.max_block_failures)


@dataclass(frozen=True)
class BlockShape:
    """How many nodes a block has, how many blocks run at once, and for how long."""
    nodes_per_block: int
    blocks: int = 1
    walltime: int = 1800          # seconds

    @classmethod
    def build(cls, site: Site, nodes_per_block: int | None = None, blocks: int = 1,
              walltime: int | str = 1800) -> "BlockShape":
        npb = site.nodes if nodes_per_block is None else nodes_per_block
        if isinstance(npb, bool) or not isinstance(npb, int) or npb < 1:
            raise SpecError(f"nodes_per_block={npb!r} is not a positive whole number")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise SpecError(f"blocks={blocks!r} is not a positive whole number")
        if npb * blocks > site.nodes:
            raise SpecError(
                f"{blocks} block(s) of {npb} nodes need {npb * blocks} nodes but partition {site.partition!r} "
                f"of {site.name} has {site.nodes}: use fewer blocks or smaller ones")
        seconds = parse_walltime(walltime)
        return cls(nodes_per_block=npb, blocks=blocks, walltime=seconds or 1800)


class PolledSlurmProvider(SlurmProvider):
    """A SlurmProvider whose blocks' states Parsl polls every `status_period` seconds (SlurmProvider: 60)."""

    def __init__(self, status_period: int = 60, **kwargs):
        super().__init__(**kwargs)
        self.status_period = status_period

    @property
    def status_polling_interval(self) -> int:
        return self.status_period


def slurm_provider(site: Site, shape: BlockShape, worker_init: str = "",
                   launcher: Launcher | None = None, status_period: int = 60,
                   sbatch_options: tuple[str, ...] = ()) -> SlurmProvider:
    """A SlurmProvider holding exactly `shape.blocks` exclusive blocks for the whole run.

    exclusive=True matters: without it a block gets one CPU per node and MPI steps inside it fail.
    init = min = max keeps the blocks for the run (no scaling in while tasks wait in fluxmpi's queue); a block
    that ends (node failure, walltime) is replaced by Parsl's strategy, noticed within `status_period` seconds.
    --no-requeue: Slurm would requeue a block that lost a node under the same job id, eligible again only after
    a delay (seen here: ~3 min), and Parsl, seeing it pending, would start no other block meanwhile.
    sbatch_options: more `#SBATCH` options a path needs (the Flux path's --no-kill).
    """
    init = "\n".join(line for line in (site.worker_init, worker_init, SLURM_TASKS_FIX) if line)
    return PolledSlurmProvider(
        status_period=status_period,
        partition=site.partition,
        nodes_per_block=shape.nodes_per_block,
        init_blocks=shape.blocks,
        min_blocks=shape.blocks,
        max_blocks=shape.blocks,
        walltime=format_clock(shape.walltime),
        exclusive=True,
        scheduler_options="\n".join(f"#SBATCH {opt}" for opt in ("--no-requeue", *sbatch_options)),
        worker_init=init,
        launcher=launcher or SimpleLauncher(),
        cmd_timeout=30,
    )


# --- watching the blocks' Slurm jobs ----------------------------------------------------------------------

# Slurm job states in which a block may still run tasks (or will, once it starts): fluxmpi.slurm's.
ACTIVE_STATES = slurm.ACTIVE_STATES
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING"})
# Node states (sinfo -t) in which a node cannot run a block.
UNUSABLE_NODE_STATES = "down,drain,fail,no_respond"


def job_states(job_ids: list[str], timeout: float = 20) -> dict[str, dict] | None:
    """{job id: {"state", "reason", "nodes"}} from squeue (jobs it no longer lists: state "GONE");
    None if squeue did not answer. Unlike fluxmpi.slurm.jobs it keeps Slurm's reason (TimeLimit, NodeDown),
    which the run reports, and never raises: a run's watch must not die of one slow squeue."""
    if not job_ids:
        return {}
    try:
        proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%N"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] in job_ids:
            found[parts[0]] = {"state": parts[1], "reason": parts[2], "nodes": parts[3]}
    if proc.returncode != 0 and not found and len(job_ids) > 1:
        return None
    return {j: found.get(j, {"state": "GONE", "reason": "no longer listed by squeue", "nodes": ""})
            for j in job_ids}


def unusable_nodes(partition: str, timeout: float = 20) -> dict[str, str] | None:
    """{node: "state (reason)"} of the partition's nodes Slurm will not run jobs on; None if sinfo failed."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-t", UNUSABLE_NODE_STATES,
                               "-o", "%N|%T|%E"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    found = {}
    for line in proc.stdout.splitlines():
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if node:
            found[node] = f"Slurm lists it {state}" + (f" ({reason})" if reason and reason != "none" else "")
    return found


def any_unresponsive(hostlist: str) -> bool:
    """Whether Slurm marks any node of `hostlist` not responding (its state ends in `*`)."""
    if not hostlist or hostlist in ("(null)", "n/a"):
        return False
    try:
        states = slurm.node_states(hostlist)
    except slurm.SlurmError:
        return False
    return any(state.strip().endswith("*") for state in states.values())


def expand_hostlist(hostlist: str, timeout: float = 20) -> list[str]:
    """["n1", "n2"] from "n[1-2]" (scontrol show hostnames); [] for an empty list."""
    if not hostlist or hostlist in ("(null)", "n/a"):
        return []
    try:
        proc = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.split() if proc.returncode == 0 else []


@dataclass
class BlockWatch:
    """Watches a run's blocks through Slurm itself, so a run never waits on blocks that are gone.

    Each check() notes the jobs' states, the nodes they ran on, and which of those nodes Slurm now marks
    unusable (the run's lost nodes). It returns why waiting should stop, or None: when the path does not
    replace blocks (`replaces_blocks` False) and every block has ended, or when no block has been running
    for `block_timeout` seconds.
    """
    job_ids: Callable[[], list[str]]
    partition: str
    replaces_blocks: bool = True
    block_timeout: float | None = None
    jobs: dict[str, dict] = field(default_factory=dict)
    nodes_used: set[str] = field(default_factory=set)
    lost_nodes: dict[str, str] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)    # job id -> when (epoch) it was first seen ending
    first_nodes: dict[str, str] = field(default_factory=dict)   # job id -> its first node (runs the batch script)
    _idle_since: float | None = None
    _expanded: dict[str, list[str]] = field(default_factory=dict)

    def check(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        ids = [str(j) for j in self.job_ids()]
        states = job_states(ids)
        if states is None:   # squeue did not answer: decide nothing this time
            return None
        self.jobs.update(states)
        for job, info in states.items():
            if info["state"] == "COMPLETING" or info["state"] not in ACTIVE_STATES:
                self.ended.setdefault(job, time.time())
        for job, info in states.items():
            if info["nodes"] and info["nodes"] not in self._expanded:
                self._expanded[info["nodes"]] = expand_hostlist(info["nodes"])
            hosts = self._expanded.get(info["nodes"], [])
            self.nodes_used.update(hosts)
            if hosts:   # as first seen: Slurm drops a failed node from a --no-kill job's list later
                self.first_nodes.setdefault(job, hosts[0])
        bad = unusable_nodes(self.partition) or {}
        for node in self.nodes_used & set(bad):
            self.lost_nodes[node] = bad[node]   # stays listed if the node comes back later
        if any(info["state"] in RUNNING_STATES for info in states.values()):
            self._idle_since = None
            return None
        self._idle_since = self._idle_since or now
        if ids and not self.replaces_blocks and all(i["state"] not in ACTIVE_STATES for i in states.values()):
            return f"every block of the run has ended ({self.describe()}) and this launch path starts no new one"
        if self.block_timeout and now - self._idle_since >= self.block_timeout:
            return (f"no block has been running for {self.block_timeout:.0f}s "
                    f"({self.describe() or 'no block submitted'})")
        return None

    def ending_near(self, when: float, slack: float) -> str | None:
        """"job 12 TIMEOUT (TimeLimit)" if one of the blocks was seen ending within `slack` s of `when`."""
        for job, seen in self.ended.items():
            if abs(when - seen) <= slack:
                info = self.jobs[job]
                reason = info.get("reason", "")
                return f"job {job} {info['state']}" + (f" ({reason})" if reason not in ("", "None") else "")
        return None

    def describe(self) -> str:
        """"job 12 TIMEOUT, job 13 PENDING (Resources)": the blocks' last known states."""
        parts = []
        for job, info in self.jobs.items():
            reason = info.get("reason", "")
            shown = f" ({reason})" if reason and reason not in ("None", "none") else ""
            parts.append(f"job {job} {info['state']}{shown}")
        return ", ".join(parts)
