"""Parse the MPI apps' rank records and check that tasks were placed as asked.

A record is one JSON object per MPI rank (see mpi_apps/README.md). Records are
grouped per task into a :class:`TaskPlacement`; the checks return lists of
:class:`Problem` and :func:`check_run` folds them into a :class:`Report`.

Expectations are duck-typed: any object with integer ``.nodes`` and
``.ranks_per_node`` attributes (such as the task spec) will do; one with ``.gpus_per_rank`` >= 1 also has its
GPUs checked: each rank saw exactly that many devices, and no device of a node was seen by two ranks running at
the same time (of one task or of two). A rank's devices are what its launcher made visible (the first of
GPU_VARIABLES it has), so the check compares node-wide indices: right where devices are not confined per job
(this project's local cluster, Flux, PBS/PALS with per-rank masks); where a cgroup renumbers each job's devices
from 0, concurrent jobs on one node look as if they shared.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

# The variables through which launchers tell a rank its GPUs, in the order they are read.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")

REQUIRED_KEYS = ("app", "task", "host", "rank", "size", "pid", "cpus")
TIME_KEYS = ("t_start", "t_init", "t_end")


class PlacementInputError(FluxmpiError, ValueError):
    """Bad arguments to a placement check (not bad records: those become Problems)."""


class RecordError(FluxmpiError, ValueError):
    """One record that is not a valid rank record."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run; ``where`` is "file:line" for unreadable records."""

    message: str
    task: str | None = None
    rank: int | None = None
    host: str | None = None
    other_task: str | None = None
    where: str | None = None

    def __str__(self) -> str:
        about = []
        if self.where:
            about.append(self.where)
        if self.task is not None:
            about.append(f"task {self.task}" + (f" rank {self.rank}" if self.rank is not None else ""))
        if self.host is not None:
            about.append(f"host {self.host}")
        return (", ".join(about) + ": " if about else "") + self.message


@dataclass(frozen=True)
class RankRecord:
    """What one MPI rank reported about itself."""

    app: str
    task: str
    host: str
    rank: int
    size: int
    pid: int
    cpus: frozenset[int]
    gpus: Mapping[str, str] = field(default_factory=dict)
    mpi_library: str | None = None
    t_start: float | None = None
    t_init: float | None = None
    t_end: float | None = None
    work: Mapping[str, Any] | None = None
    source: str = ""  # where it was read, "file:line"

    @property
    def devices(self) -> frozenset[str] | None:
        """The GPUs this rank was given (GPU_VARIABLES), or None when no such variable was set. A negative id is
        none: Flux sets CUDA_VISIBLE_DEVICES=-1 for a job without GPUs (and CUDA shows nothing from it on)."""
        for name in GPU_VARIABLES:
            value = self.gpus.get(name)
            if value is not None:
                ids = [d.strip() for d in str(value).split(",") if d.strip()]
                first_bad = next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))
                return frozenset(ids[:first_bad])
        return None

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> "RankRecord":
        if not isinstance(data, dict):
            raise RecordError(f"a record must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise RecordError(f"record lacks {', '.join(missing)}")
        for key in ("app", "task", "host"):
            if not isinstance(data[key], str) or not data[key]:
                raise RecordError(f"{key} must be a non-empty string, got {data[key]!r}")
        for key, low in (("rank", 0), ("size", 1), ("pid", 1)):
            if not _is_int(data[key]) or data[key] < low:
                raise RecordError(f"{key} must be an integer >= {low}, got {data[key]!r}")
        cpus = data["cpus"]
        if not isinstance(cpus, list) or not all(_is_int(c) and c >= 0 for c in cpus):
            raise RecordError(f"cpus must be a list of CPU ids, got {cpus!r}")
        times = {}
        for key in TIME_KEYS:
            value = data.get(key)
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise RecordError(f"{key} must be epoch seconds, got {value!r}")
            times[key] = None if value is None else float(value)
        gpus = data.get("gpus", {})
        if not isinstance(gpus, dict):
            raise RecordError(f"gpus must be an object, got {gpus!r}")
        work = data.get("work")
        if work is not None and not isinstance(work, dict):
            raise RecordError(f"work must be an object, got {work!r}")
        return cls(
            app=data["app"],
            task=data["task"],
            host=data["host"],
            rank=data["rank"],
            size=data["size"],
            pid=data["pid"],
            cpus=frozenset(cpus),
            gpus=dict(gpus),
            mpi_library=data.get("mpi_library"),
            work=work,
            source=source,
            **times,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- reading records -------------------------------------------------------


@dataclass
class Records:
    """Records read so far, plus a Problem for every line that was not a valid record."""

    records: list[RankRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: "Records") -> None:
        self.records.extend(other.records)
        self.problems.extend(other.problems)

    def placements(self) -> dict[str, "TaskPlacement"]:
        return group_by_task(self.records)


def parse_lines(lines: Iterable[str], source: str = "<lines>", *, ignore_non_json: bool = False) -> Records:
    """Parse one record per line. Blank lines are skipped; with ``ignore_non_json`` so
    are lines not starting with "{" (launcher chatter mixed into captured stdout)."""
    out = Records()
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or (ignore_non_json and not text.startswith("{")):
            continue
        where = f"{source}:{number}"
        try:
            out.records.append(RankRecord.from_dict(json.loads(text), source=where))
        except json.JSONDecodeError as err:
            out.problems.append(Problem(f"not JSON ({err.msg} at column {err.colno}): {_clip(text)}", where=where))
        except RecordError as err:
            out.problems.append(Problem(f"not a rank record ({err}): {_clip(text)}", where=where))
    return out


def parse_file(path: str | Path, *, ignore_non_json: bool = False) -> Records:
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_lines(f, source=str(path), ignore_non_json=ignore_non_json)


def parse_dir(path: str | Path) -> Records:
    """All ``*.json`` files of a directory (``--out`` output); hidden files are
    the apps' half-written temporaries and are skipped."""
    path = Path(path)
    out = Records()
    for file in sorted(path.glob("*.json")):
        if not file.name.startswith("."):
            out.extend(parse_file(file))
    return out


def record_path(records_dir: str | Path, task: str, rank: int) -> Path:
    """Where rank `rank` of `task` writes its record (the apps and the rank wrapper write it when the rank ends)."""
    return Path(records_dir) / f"{task}.{rank}.json"


def clear_task_records(records_dir: str | Path, task: str, ranks: int) -> None:
    """Remove an earlier attempt's records of `task`, so a record found after a launch proves that launch's rank
    ended. Only the exact names of ranks 0..ranks-1: task ids may contain dots (t1 and t1.x are two tasks)."""
    for rank in range(ranks):
        record_path(records_dir, task, rank).unlink(missing_ok=True)


def unreported_ranks(records_dir: str | Path, task: str, ranks: int) -> list[int]:
    """The ranks of `task` (0..ranks-1) that have no record in records_dir."""
    return [rank for rank in range(ranks) if not record_path(records_dir, task, rank).is_file()]


def read_records(path: str | Path, *, ignore_non_json: bool = False) -> Records:
    """Records from a directory of ``*.json`` files or from one file of lines."""
    path = Path(path)
    if path.is_dir():
        return parse_dir(path)
    if path.is_file():
        return parse_file(path, ignore_non_json=ignore_non_json)
    raise PlacementInputError(f"no records at {str(path)!r}: give a record file or a --out directory")


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ---- placements ------------------------------------------------------------


@dataclass(frozen=True)
class TaskPlacement:
    """Where the ranks of one task ran. ``start`` is the earliest ``t_init``,
    ``end`` the latest ``t_end``; either is None when no record has times."""

    task: str
    records: tuple[RankRecord, ...]
    nodes: tuple[str, ...] = field(init=False)
    ranks_per_node: dict[str, int] = field(init=False)
    start: float | None = field(init=False)
    end: float | None = field(init=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.records, key=lambda r: (r.rank, r.host, r.pid)))
        starts = [r.t_init for r in ordered if r.t_init is not None]
        ends = [r.t_end for r in ordered if r.t_end is not None]
        object.__setattr__(self, "records", ordered)
        object.__setattr__(self, "nodes", tuple(sorted({r.host for r in ordered})))
        object.__setattr__(self, "ranks_per_node", dict(sorted(Counter(r.host for r in ordered).items())))
        object.__setattr__(self, "start", min(starts) if starts else None)
        object.__setattr__(self, "end", max(ends) if ends else None)

    @property
    def elapsed(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    def cpus_on(self, host: str) -> frozenset[int]:
        return frozenset().union(*(r.cpus for r in self.records if r.host == host))

    def gpus_on(self, host: str) -> frozenset[str]:
        return frozenset().union(*(r.devices or () for r in self.records if r.host == host))


def group_by_task(records: Iterable[RankRecord]) -> dict[str, TaskPlacement]:
    by_task: dict[str, list[RankRecord]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    return {task: TaskPlacement(task, tuple(by_task[task])) for task in sorted(by_task, key=_natural)}


def _natural(text: str) -> list:
    """Sort key so that t2 comes before t10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _as_placements(placements: Mapping[str, TaskPlacement] | Iterable[TaskPlacement]) -> list[TaskPlacement]:
    items = list(placements.values()) if isinstance(placements, Mapping) else list(placements)
    for item in items:
        if not isinstance(item, TaskPlacement):
            raise PlacementInputError(f"expected TaskPlacement objects, got {type(item).__name__}")
    return items


# ---- checks ----------------------------------------------------------------


def _positive_int(name: str, value: Any, task: str) -> int:
    if not _is_int(value) or value < 1:
        raise PlacementInputError(f"task {task}: expected {name} must be an integer >= 1, got {value!r}")
    return value


def check_task(placement: TaskPlacement, nodes: int, ranks_per_node: int, gpus_per_rank: int = 0) -> list[Problem]:
    """Every rank 0..size-1 reported once, sizes agree and equal nodes*ranks_per_node,
    exactly ``nodes`` hosts with exactly ``ranks_per_node`` ranks on each; with ``gpus_per_rank``, each rank saw
    that many GPUs and no two of its ranks on a node saw the same one."""
    task = placement.task
    nodes = _positive_int("nodes", nodes, task)
    ranks_per_node = _positive_int("ranks_per_node", ranks_per_node, task)
    expected_size = nodes * ranks_per_node
    problems: list[Problem] = []
    records = placement.records
    if not records:
        return [Problem("no records", task=task)]

    ranks_by_size: dict[int, list[int]] = defaultdict(list)
    for r in records:
        ranks_by_size[r.size].append(r.rank)
    if len(ranks_by_size) > 1:
        detail = "; ".join(f"size {s} from ranks {_ranges(rs)}" for s, rs in sorted(ranks_by_size.items()))
        problems.append(Problem(f"ranks disagree on the MPI size: {detail}", task=task))
    for size in sorted(ranks_by_size):
        if size != expected_size:
            problems.append(
                Problem(
                    f"MPI size {size}, expected {expected_size} ({nodes} nodes x {ranks_per_node} ranks per node)",
                    task=task,
                )
            )

    size = max(ranks_by_size)
    by_rank: dict[int, list[RankRecord]] = defaultdict(list)
    for r in records:
        by_rank[r.rank].append(r)
    for rank, recs in sorted(by_rank.items()):
        if rank >= size:
            problems.append(Problem(f"rank outside 0..{size - 1}", task=task, rank=rank, host=recs[0].host))
        if len(recs) > 1:
            seen = ", ".join(f"{r.host} pid {r.pid}" for r in recs)
            problems.append(Problem(f"reported {len(recs)} times ({seen})", task=task, rank=rank))
    for rank in range(size):
        if rank not in by_rank:
            problems.append(Problem("no record for this rank", task=task, rank=rank))

    if len(placement.nodes) != nodes:
        problems.append(
            Problem(f"spanned {len(placement.nodes)} nodes ({', '.join(placement.nodes)}), expected {nodes}", task=task)
        )
    for host, count in placement.ranks_per_node.items():
        if count != ranks_per_node:
            ranks = sorted(r.rank for r in records if r.host == host)
            problems.append(
                Problem(
                    f"{count} rank{'s' if count != 1 else ''} ({_ranges(ranks)}) on this node, expected {ranks_per_node} per node",
                    task=task,
                    host=host,
                )
            )
    if gpus_per_rank:
        problems += check_task_gpus(placement, gpus_per_rank)
    return problems


def check_task_gpus(placement: TaskPlacement, gpus_per_rank: int) -> list[Problem]:
    problems: list[Problem] = []
    for r in placement.records:
        seen = r.devices
        if seen is None:
            problems.append(Problem(f"saw no GPU (none of {', '.join(GPU_VARIABLES)} set), expected {gpus_per_rank}",
                                    task=placement.task, rank=r.rank, host=r.host))
        elif len(seen) != gpus_per_rank:
            problems.append(Problem(f"saw {len(seen)} GPU(s) ({','.join(sorted(seen)) or 'none'}), expected "
                                    f"{gpus_per_rank}", task=placement.task, rank=r.rank, host=r.host))
    for host in placement.nodes:
        owner: dict[str, int] = {}
        for r in placement.records:
            for d in sorted(r.devices or ()) if r.host == host else ():
                if d in owner:
                    problems.append(Problem(f"GPU {d} was given to ranks {owner[d]} and {r.rank} at once",
                                            task=placement.task, rank=r.rank, host=host))
                owner.setdefault(d, r.rank)
    return problems


def check_no_shared_cores(placements: Mapping[str, TaskPlacement] | Iterable[TaskPlacement]) -> list[Problem]:
    """Tasks whose [start, end] intervals overlap must not share a CPU on any host.

    A task without times cannot be placed in time, so it counts as overlapping
    every other task (the check errs towards reporting)."""
    items = _as_placements(placements)

    def interval(p: TaskPlacement) -> tuple[float, float]:
        if p.start is None or p.end is None:
            return (-math.inf, math.inf)
        return (p.start, p.end)

    problems: list[Problem] = []
    # Sweep in start order and compare each task only with those still running.
    active: list[tuple[float, TaskPlacement]] = []
    for p in sorted(items, key=lambda p: (interval(p)[0], _natural(p.task))):
        start, end = interval(p)
        active = [(e, q) for e, q in active if e >= start]
        for _, q in active:
            for host in sorted(set(p.nodes) & set(q.nodes)):
                shared = p.cpus_on(host) & q.cpus_on(host)
                if shared:
                    problems.append(_shared_problem(q, p, host, shared))
                devices = p.gpus_on(host) & q.gpus_on(host)
                if devices:
                    problems.append(_shared_problem(q, p, host, devices, "GPUs"))
        active.append((end, p))
    return problems


def _shared_problem(a: TaskPlacement, b: TaskPlacement, host: str, shared: frozenset, what: str = "cpus") -> Problem:
    first, second = sorted((a, b), key=lambda p: _natural(p.task))

    def ranks(p: TaskPlacement) -> str:
        mine = (lambda r: r.cpus) if what == "cpus" else (lambda r: r.devices or frozenset())
        return _ranges(sorted(r.rank for r in p.records if r.host == host and mine(r) & shared))

    untimed = [p.task for p in (first, second) if p.start is None or p.end is None]
    note = f" (task {', '.join(untimed)} has no times: assumed concurrent)" if untimed else ""
    return Problem(
        f"tasks {first.task} and {second.task} ran at the same time and shared {what} "
        f"{_ranges(sorted(shared)) if what == 'cpus' else ','.join(sorted(shared))}: "
        f"ranks {ranks(first)} of {first.task}, ranks {ranks(second)} of {second.task}{note}",
        task=first.task,
        other_task=second.task,
        host=host,
    )


@dataclass
class Report:
    """Outcome of :func:`check_run`; ``str(report)`` renders the table and the problems."""

    placements: dict[str, TaskPlacement]
    expected: tuple[str, ...]
    problems: list[Problem]
    with_gpus: bool = False      # some task asked for GPUs: the report lists every rank's CPUs and GPUs

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [render_table(self.placements), ""]
        if self.with_gpus:
            lines += [render_affinity(self.placements), ""]
        if self.ok:
            shared = "CPU or GPU" if self.with_gpus else "CPU"
            lines.append(f"OK: {len(self.expected)} tasks placed as expected, no {shared} shared between concurrent "
                         "tasks")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    __str__ = render


def check_run(
    placements: Mapping[str, TaskPlacement] | Iterable[TaskPlacement] | Records,
    expected: Mapping[Any, Any],
    *,
    parse_problems: Iterable[Problem] = (),
) -> Report:
    """Check every expected task (``expected[task].nodes`` and ``.ranks_per_node``),
    flag expected tasks without records, records of unexpected tasks, and CPUs
    shared between concurrent tasks. Given :class:`Records`, its unreadable lines
    are reported as well."""
    problems = list(parse_problems)
    if isinstance(placements, Records):
        problems = list(placements.problems) + problems
        placements = placements.placements()
    by_task = {p.task: p for p in _as_placements(placements)}

    wanted: dict[str, tuple[int, int, int]] = {}
    for key, spec in expected.items():
        task = str(key)
        try:
            nodes, rpn = spec.nodes, spec.ranks_per_node
        except AttributeError:
            raise PlacementInputError(
                f"expected[{key!r}] must have .nodes and .ranks_per_node, got {type(spec).__name__}"
            ) from None
        wanted[task] = (_positive_int("nodes", nodes, task), _positive_int("ranks_per_node", rpn, task),
                        int(getattr(spec, "gpus_per_rank", 0) or 0))

    for task in sorted(wanted, key=_natural):
        if task not in by_task:
            problems.append(Problem("expected task has no records at all", task=task))
        else:
            problems += check_task(by_task[task], *wanted[task])
    for task in sorted(set(by_task) - set(wanted), key=_natural):
        problems.append(Problem("records of a task that was not expected", task=task))
    problems += check_no_shared_cores(by_task.values())
    return Report(
        placements={t: by_task[t] for t in sorted(by_task, key=_natural)},
        expected=tuple(sorted(wanted, key=_natural)),
        problems=problems,
        with_gpus=any(g for _, _, g in wanted.values()),
    )


# ---- rendering -------------------------------------------------------------


def _ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    nums = sorted(set(numbers))
    parts = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


def compress_hosts(hosts: Iterable[str]) -> str:
    """Slurm-style host list: node1,node2,node3,login -> login,node[1-3]."""
    plain: set[str] = set()
    numbered: dict[str, set[str]] = defaultdict(set)
    for host in hosts:
        m = re.fullmatch(r"(.*?)(\d+)", host)
        if m:
            numbered[m.group(1)].add(m.group(2))
        else:
            plain.add(host)
    parts = [(h, h) for h in plain]
    for prefix, digits in numbered.items():
        nums = sorted(digits, key=lambda d: (int(d), d))
        runs: list[list[str]] = []
        for d in nums:
            if runs and int(d) == int(runs[-1][-1]) + 1:
                runs[-1].append(d)
            else:
                runs.append([d])
        if len(nums) == 1:
            parts.append((prefix, prefix + nums[0]))
        else:
            inner = ",".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
            parts.append((prefix, f"{prefix}[{inner}]"))
    return ",".join(text for _, text in sorted(parts))


def render_affinity(placements: Mapping[str, TaskPlacement] | Iterable[TaskPlacement]) -> str:
    """One row per rank: where it ran, its CPUs and the GPUs it was given (as the users' affinity apps print)."""
    header = ("TASK", "RANK", "HOST", "CPUS", "GPUS")
    rows = [(p.task, str(r.rank), r.host, _ranges(sorted(r.cpus)),
             "-" if r.devices is None else ",".join(sorted(r.devices, key=_natural)) or "none")
            for p in sorted(_as_placements(placements), key=lambda p: _natural(p.task)) for r in p.records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def render_table(placements: Mapping[str, TaskPlacement] | Iterable[TaskPlacement]) -> str:
    """One row per task, plain columns like squeue; START/END/ELAPSED in seconds,
    relative to the earliest start in the table ("-" where times are missing)."""
    items = sorted(_as_placements(placements), key=lambda p: (p.start is None, p.start or 0.0, _natural(p.task)))
    starts = [p.start for p in items if p.start is not None]
    origin = min(starts) if starts else 0.0

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value - origin:.3f}"

    header = ("TASK", "NODES", "NODELIST", "RANKS", "START", "END", "ELAPSED")
    rows = [
        (
            p.task,
            str(len(p.nodes)),
            compress_hosts(p.nodes),
            str(len(p.records)),
            secs(p.start),
            secs(p.end),
            "-" if p.elapsed is None else f"{p.elapsed:.3f}",
        )
        for p in items
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])
