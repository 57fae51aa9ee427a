"""The raw record of one run (one path or baseline on one workload) and how rank records complete its tasks.

Launch paths and baselines fill `submitted`, `admitted`, `launched`, `done`, `returned` from their side; the
MPI ranks' own records give every task its nodes, `rank_started`, `started` and `ended` (see metrics.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import placement
from ..spec import MPITaskSpec

logger = logging.getLogger(__name__)

STATUSES = ("ok", "failed", "unavailable", "not applicable")


@dataclass
class RawRun:
    name: str                       # launch path ("htex", ...) or baseline ("bare-srun", "bare-flux")
    kind: str                       # "path" or "baseline"
    status: str                     # one of STATUSES
    reason: str = ""                # why unavailable / not applicable / failed
    baseline: str | None = None     # the baseline a path is compared with
    workdir: str | None = None
    t_start: float | None = None    # the path began: parsl.load / salloc
    t_ready: float | None = None    # config loaded / allocation granted (and Flux instance up)
    t_first_result: float | None = None
    t_end: float | None = None
    tasks: list[dict] = field(default_factory=list)
    placement_ok: bool | None = None
    placement_report: str = ""
    summary: dict = field(default_factory=dict)
    warm: dict | None = None        # with --warm / --compare-warm: the run's warm hold (bench/warmth.py describe)
    startup: dict = field(default_factory=dict)   # start-up stamps (epoch s): metrics.STARTUP_MARKS, None if unknown
    cpu: dict = field(default_factory=dict)       # CPU s the driver used: "self" (this process), "children" (reaped)

    @property
    def ran(self) -> bool:
        return self.status in ("ok", "failed")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RawRun":
        return cls(**data)


def new_task(index: int, task: str, spec: MPITaskSpec, submitted: float) -> dict:
    """A task row with the launch side's timestamps still unknown (metrics.TIME_KEYS)."""
    return {"task": task, "index": index, "nodes_req": spec.nodes, "ranks_per_node": spec.ranks_per_node,
            "submitted": submitted, "admitted": None, "launched": None, "done": None, "returned": None,
            "ok": False, "error": None, "nodes": [], "rank_started": None, "started": None, "ended": None}


def fill_from_records(tasks: list[dict], records_dir: str | Path) -> placement.Records:
    """Give every task the hosts and times its ranks reported; returns the records read."""
    records = placement.read_records(records_dir) if Path(records_dir).is_dir() else placement.Records()
    by_task = records.placements()
    for t in tasks:
        p = by_task.get(t["task"])
        if p is None:
            continue
        starts = [r.t_start for r in p.records if r.t_start is not None]
        t["nodes"] = list(p.nodes)
        t["rank_started"] = min(starts) if starts else None
        t["started"], t["ended"] = p.start, p.end
    return records


def check_placement(tasks: list[dict], records: placement.Records) -> placement.Report:
    """The runner's placement check for the tasks that finished ok (a failed task may have no records)."""
    expected = {t["task"]: MPITaskSpec(nodes=t["nodes_req"], ranks_per_node=t["ranks_per_node"])
                for t in tasks if t["ok"]}
    return placement.check_run(records, expected)
