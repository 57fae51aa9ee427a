"""Node-seconds a run paid for against node-seconds its tasks used: the cost of idle blocks on a cloud bill.

Paid is what the batch system says each of the run's blocks held: nodes x (end - start), from Slurm's squeue
(%S, %e, %D; it lists an ended job for MinJobAge, so a run asks while it goes: BlockSpans) or PBS's qstat -x
(stime, obittime, exec_host). A block still running when this is asked counts up to now; a block the batch
system never listed is missing from `paid` and named in `unaccounted`. Used is what the finished tasks held:
nodes x (t_done - t_launch) per task, from the tasks' own results (the last attempt's; a failed attempt's time
counts as idle; tasks sharing nodes count their nodes whole). Idle is paid - used: blocks starting up, waiting
for work, and nodes left free by the packing. Nothing here touches the system but the batch system's queries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Iterable

from .schedulers import ERRORS

logger = logging.getLogger(__name__)

LOOK_PERIOD = 10.0     # seconds between a run's looks at its blocks' spans (well inside Slurm's MinJobAge)


@dataclass(frozen=True)
class Usage:
    paid: float                          # node-seconds the blocks held
    used: float                          # node-seconds the finished tasks held
    blocks: dict = field(default_factory=dict)   # job id -> {"start", "end", "nodes"}
    unaccounted: tuple[str, ...] = ()    # blocks the batch system no longer lists

    @property
    def idle(self) -> float:
        return max(0.0, self.paid - self.used)

    @property
    def idle_fraction(self) -> float | None:
        return self.idle / self.paid if self.paid > 0 else None

    def render(self) -> str:
        if self.paid <= 0:
            return "node-seconds: no block ran"
        ran = sum(1 for s in self.blocks.values() if s["start"] is not None)
        line = (f"node-seconds: paid {self.paid:.0f} in {ran} block(s), used by tasks {self.used:.0f}, "
                f"idle {self.idle:.0f} ({100 * self.idle_fraction:.0f}%)")
        if self.unaccounted:
            line += f"; not counted (no longer listed): {', '.join(self.unaccounted)}"
        return line

    @classmethod
    def from_json(cls, data: dict) -> "Usage":
        return cls(paid=data["paid"], used=data["used"], blocks=data.get("blocks") or {},
                   unaccounted=tuple(data.get("unaccounted") or ()))

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(idle=self.idle, idle_fraction=self.idle_fraction, unaccounted=list(self.unaccounted))
        return data


def outcome_spans(outcomes: Iterable) -> list[tuple[int, float, float]]:
    """(nodes, t_launch, t_done) of each finished task of a run (fluxmpi.runner's TaskOutcome: its last
    attempt's result; tasks skipped on resume ran in an earlier run and are left out)."""
    spans = []
    for o in outcomes:
        result = o.result or {}
        began, done = result.get("t_launch"), result.get("t_done")
        if o.ok and not o.skipped and began is not None and done is not None:
            spans.append((o.spec.get("nodes", 1), began, done))
    return spans


def task_node_seconds(spans: Iterable[tuple[int, float, float]]) -> float:
    """Node-seconds the tasks (nodes, t_launch, t_done) held."""
    return sum(nodes * max(0.0, done - began) for nodes, began, done in spans)


def paid_node_seconds(spans: dict[str, dict], now: float | None = None) -> float:
    """Node-seconds of blocks {job: {"start", "end", "nodes"}}: one that never ran counts 0, one still running
    counts up to now."""
    now = time.time() if now is None else now
    return sum(s["nodes"] * max(0.0, (s["end"] or now) - s["start"]) for s in spans.values()
               if s["start"] is not None)


class BlockSpans:
    """The run's blocks as the batch system reported them, kept across looks: Slurm forgets a job MinJobAge
    (120 s on the local cluster) after it ends, so a run longer than that is asked while it goes (look(), at most
    every LOOK_PERIOD seconds) and once at its end (usage()). A block forgotten while it was last seen running
    is counted up to that last look (a lower bound, never more than it held)."""

    def __init__(self, client: ModuleType):
        self.client = client
        self.spans: dict[str, dict] = {}
        self._seen: dict[str, float] = {}          # job -> when the batch system last listed it
        self._last_look = 0.0

    def look(self, job_ids: list[str], force: bool = False) -> None:
        now = time.time()
        if not job_ids or (not force and now - self._last_look < LOOK_PERIOD):
            return
        self._last_look = now
        try:
            found = self.client.job_spans(list(job_ids))
        except ERRORS as err:    # one slow query: the next look, or the end, asks again
            logger.info("node-seconds of the run's blocks: %s", err)
            return
        for job, span in found.items():
            self.spans[job], self._seen[job] = dict(span), now

    def usage(self, job_ids: list[str], task_spans: Iterable[tuple[int, float, float]]) -> Usage:
        """The run's Usage, asking once more first; task_spans: the finished tasks' (nodes, t_launch, t_done)."""
        self.look(job_ids, force=True)
        spans = {}
        for job in job_ids:
            span = self.spans.get(job)
            if span is None:
                continue
            if span["end"] is None and span["start"] is not None and self._seen[job] < self._last_look:
                span = {**span, "end": self._seen[job]}      # forgotten since: it ended after that look
            spans[job] = span
        missing = tuple(j for j in job_ids if j not in spans)
        return Usage(paid=paid_node_seconds(spans), used=task_node_seconds(task_spans), blocks=spans,
                     unaccounted=missing)


def measure(client: ModuleType, job_ids: list[str], task_spans: Iterable[tuple[int, float, float]]) -> Usage:
    """The Usage of blocks `job_ids`, asked of the batch system `client` (fluxmpi.schedulers) once, now."""
    return BlockSpans(client).usage(list(job_ids), task_spans)
