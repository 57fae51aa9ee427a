"""A run's watch on its blocks' batch jobs (Slurm or PBS), so a run never waits on blocks that are gone (and says
why)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

from .. import slurm
from ..schedulers import ERRORS

logger = logging.getLogger(__name__)

# Slurm job states in which a block may still run tasks (or will, once it starts).
ACTIVE_STATES = slurm.ACTIVE_STATES
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING"})
# While tasks wait with no block running, say so (with Slurm's reason) after this long, then every NOTICE_EVERY s:
# a replacement block that pends for nodes that are down otherwise looks like a hung run.
NOTICE_AFTER = 60.0
NOTICE_EVERY = 300.0


@dataclass
class BlockWatch:
    """Watches a run's blocks through Slurm itself, so a run never waits on blocks that are gone.

    Each check() notes the jobs' states, the nodes they ran on, and which of those nodes Slurm now marks
    unusable (the run's lost nodes). It returns why waiting should stop, or None: when the path does not
    replace blocks (`replaces_blocks` False) and every block has ended, or when no block has been running
    for `block_timeout` seconds. `client` is the batch system's (fluxmpi.schedulers), Slurm's by default.
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
    client: ModuleType = slurm
    _idle_since: float | None = None
    _noticed_at: float | None = None
    _expanded: dict[str, list[str]] = field(default_factory=dict)

    def check(self, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        ids = [str(j) for j in self.job_ids()]
        try:
            states = self.client.job_states(ids)
        except ERRORS as err:   # one slow or failed squeue must not end the run: decide nothing now
            logger.info("block watch: %s", err)
            return None
        self.jobs.update(states)
        for job, info in states.items():
            if info["state"] == "COMPLETING" or info["state"] not in ACTIVE_STATES:
                self.ended.setdefault(job, time.time())
        for job, info in states.items():
            if info["nodes"] and info["nodes"] not in self._expanded:
                try:
                    self._expanded[info["nodes"]] = self.client.expand_hostlist(info["nodes"])
                except ERRORS as err:
                    logger.info("block watch: %s", err)
            hosts = self._expanded.get(info["nodes"], [])
            self.nodes_used.update(hosts)
            if hosts:   # as first seen: Slurm drops a failed node from a --no-kill job's list later
                self.first_nodes.setdefault(job, hosts[0])
        try:
            bad = self.client.unusable_nodes(self.partition)
        except ERRORS as err:
            logger.info("block watch: %s", err)
            bad = {}
        for node in self.nodes_used & set(bad):
            self.lost_nodes[node] = bad[node]   # stays listed if the node comes back later
        if any(info["state"] in RUNNING_STATES for info in states.values()):
            self._idle_since = self._noticed_at = None
            return None
        self._idle_since = self._idle_since or now
        if ids and not self.replaces_blocks and all(i["state"] not in ACTIVE_STATES for i in states.values()):
            return f"every block of the run has ended ({self.describe()}) and this launch path starts no new one"
        if self.block_timeout and now - self._idle_since >= self.block_timeout:
            return (f"no block has been running for {self.block_timeout:.0f}s "
                    f"({self.describe() or 'no block submitted'})")
        return None

    def waiting_notice(self, now: float | None = None) -> str | None:
        """Why tasks wait, once no block has been running for NOTICE_AFTER s (then every NOTICE_EVERY s), else None."""
        now = time.monotonic() if now is None else now
        if self._idle_since is None or now - self._idle_since < NOTICE_AFTER:
            return None
        if self._noticed_at is not None and now - self._noticed_at < NOTICE_EVERY:
            return None
        self._noticed_at = now
        bound = f"--block-timeout {self.block_timeout:.0f}s" if self.block_timeout else "the run's time limit"
        return (f"no block of the run has been running for {now - self._idle_since:.0f}s "
                f"({self.describe() or 'no block submitted yet'}); tasks wait until one runs or {bound} ends the wait")

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
