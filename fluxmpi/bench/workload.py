"""What a benchmark runs: a workload is K MPI tasks (uniform or mixed sizes) that each sleep or spin in the app.

A workload comes from the flags (`uniform`, `mixed`), from a preset (`quick`, `full`), or from a YAML/JSON file
holding one workload or a list of them. Every value is checked here, before any cluster or job exists.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import FluxmpiError
from ..spec import MPITaskSpec

logger = logging.getLogger(__name__)

KINDS = ("uniform", "mixed")
WORK = ("sleep", "busy")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_FILE_KEYS = ("name", "kind", "tasks", "nodes", "ranks_per_node", "sleep", "busy", "seed")


class WorkloadError(FluxmpiError, ValueError):
    """A workload that cannot run; the message names the bad value and the fix."""


@dataclass(frozen=True)
class Workload:
    """K tasks; `nodes` is the size of every task (uniform) or the largest size (mixed: sizes 1..nodes)."""
    name: str
    kind: str
    tasks: int
    nodes: int
    ranks_per_node: int = 1
    work: str = "sleep"
    seconds: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise WorkloadError(f"workload name {self.name!r} is not usable: give 1-32 lowercase letters, digits, "
                                "'-' or '_' (it names output files)")
        if self.kind not in KINDS:
            raise WorkloadError(f"workload {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for key, low in (("tasks", 1), ("nodes", 1), ("ranks_per_node", 1), ("seed", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise WorkloadError(f"workload {self.name}: {key}={value!r} is not a whole number >= {low}")
        if self.work not in WORK:
            raise WorkloadError(f"workload {self.name}: work {self.work!r} is not one of {', '.join(WORK)}")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) \
                or not 0 <= self.seconds <= 3600:
            raise WorkloadError(f"workload {self.name}: --{self.work} {self.seconds!r} is not a number of seconds "
                                "from 0 to 3600")

    def specs(self) -> list[MPITaskSpec]:
        """The tasks in submission order. Mixed sizes are balanced (each size 1..nodes about equally often)
        and shuffled with the seed, so a run's total node-seconds do not depend on luck."""
        if self.kind == "uniform":
            sizes = [self.nodes] * self.tasks
        else:
            sizes = [1 + i % self.nodes for i in range(self.tasks)]
            random.Random(self.seed).shuffle(sizes)
        return [MPITaskSpec(nodes=n, ranks_per_node=self.ranks_per_node) for n in sizes]

    @property
    def mixed_sizes(self) -> bool:
        return len({s.nodes for s in self.specs()}) > 1

    def check_fits(self, nodes: int, cores_per_node: int) -> None:
        """Refuse a workload whose tasks cannot fit `nodes` nodes of `cores_per_node` cores."""
        if self.nodes > nodes:
            raise WorkloadError(f"workload {self.name}: tasks of {self.nodes} nodes cannot run on the {nodes} nodes "
                                f"the benchmark uses: give --nodes {nodes} or less, or --cluster-nodes {self.nodes}")
        if self.ranks_per_node > cores_per_node:
            raise WorkloadError(f"workload {self.name}: {self.ranks_per_node} ranks per node need "
                                f"{self.ranks_per_node} cores but a node has {cores_per_node}: "
                                f"give --ranks-per-node {cores_per_node} or less")

    def app_work(self) -> dict[str, float]:
        """Keyword for the app command: sleep=... or busy=..."""
        return {self.work: float(self.seconds)}

    def describe(self) -> str:
        size = (f"{self.nodes} nodes x {self.ranks_per_node} ranks" if self.kind == "uniform"
                else f"1..{self.nodes} nodes x {self.ranks_per_node} ranks")
        return (f"{self.name}: {self.kind}, {self.tasks} tasks of {size}, {self.work} {self.seconds:g} s, "
                f"seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes"] = [s.nodes for s in self.specs()]
        return data


def builtin(kind: str, *, tasks: int, nodes: int, ranks_per_node: int = 1, work: str = "sleep",
            seconds: float = 1.0, seed: int = 0) -> Workload:
    if kind not in KINDS:
        raise WorkloadError(f"--workload {kind!r} is not one of {', '.join(KINDS)}, a preset or a file")
    return Workload(name=kind, kind=kind, tasks=tasks, nodes=nodes, ranks_per_node=ranks_per_node, work=work,
                    seconds=seconds, seed=seed)


# Presets take the benchmark's node count (the mixed workloads span 1..all nodes). Sizes are chosen to fit the
# time boxes on a 2-core machine with a 4-node local cluster: quick ~2-3 min, full ~15 min over all paths.
def preset(name: str, nodes: int) -> list[Workload]:
    if name == "quick":
        return [Workload("uniform", "uniform", tasks=4, nodes=min(2, nodes), ranks_per_node=1, seconds=0.2)]
    if name == "full":
        return [
            Workload("small-200", "uniform", tasks=200, nodes=min(2, nodes), ranks_per_node=1, seconds=0.1),
            Workload("mixed", "mixed", tasks=3 * nodes, nodes=nodes, ranks_per_node=1, seconds=4.0, seed=1),
        ]
    raise WorkloadError(f"preset {name!r} does not exist: use one of {', '.join(PRESETS)}")


PRESETS = ("quick", "full")


def load_file(path: str | Path) -> list[Workload]:
    """Workloads from a YAML or JSON file: one mapping, a list of them, or {"workloads": [...]}.

    Keys: name, kind (uniform|mixed), tasks, nodes, ranks_per_node, sleep or busy (seconds), seed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise WorkloadError(f"cannot read workload file {str(path)!r}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise WorkloadError(f"workload file {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}:"
                            f" {err}") from None
    if isinstance(data, dict) and "workloads" in data:
        data = data["workloads"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise WorkloadError(f"workload file {str(path)!r} lists no workloads")
    workloads = [_from_mapping(item, f"{path}[{i}]") for i, item in enumerate(items)]
    _check_unique(workloads)
    return workloads


def _from_mapping(item: Any, where: str) -> Workload:
    if not isinstance(item, dict):
        raise WorkloadError(f"{where}: a workload must be a mapping with keys {', '.join(_FILE_KEYS)}")
    unknown = sorted(set(item) - set(_FILE_KEYS))
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {unknown}: use only {', '.join(_FILE_KEYS)}")
    for key in ("kind", "tasks", "nodes"):
        if key not in item:
            raise WorkloadError(f"{where}: missing {key!r} (e.g. kind: mixed, tasks: 20, nodes: 4)")
    if "sleep" in item and "busy" in item:
        raise WorkloadError(f"{where}: give sleep or busy, not both")
    work = "busy" if "busy" in item else "sleep"
    return Workload(name=str(item.get("name", item["kind"])), kind=item["kind"], tasks=item["tasks"],
                    nodes=item["nodes"], ranks_per_node=item.get("ranks_per_node", 1), work=work,
                    seconds=item.get(work, 1.0), seed=item.get("seed", 0))


def _check_unique(workloads: list[Workload]) -> None:
    names = [w.name for w in workloads]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WorkloadError(f"workload names must differ (they name output files); repeated: {', '.join(dupes)}")


def resolve(choices: list[str], *, nodes: int, tasks: int | None = None, task_nodes: int | None = None,
            ranks_per_node: int | None = None, sleep: float | None = None, busy: float | None = None,
            seed: int | None = None, quick: bool = False) -> list[Workload]:
    """The workloads of a bench invocation. `choices` are uniform, mixed, preset names or files; the size flags
    apply to uniform and mixed only. `nodes` is how many nodes the benchmark uses."""
    if sleep is not None and busy is not None:
        raise WorkloadError("--sleep and --busy exclude each other: give at most one")
    flags = {"--tasks": tasks, "--nodes": task_nodes, "--ranks-per-node": ranks_per_node, "--sleep": sleep,
             "--busy": busy, "--seed": seed}
    given = [k for k, v in flags.items() if v is not None]
    if not choices:
        choices = ["quick"] if quick and not given else ["uniform"]
    work, seconds = ("busy", busy) if busy is not None else ("sleep", sleep)
    small = quick  # --quick shrinks the defaults of uniform and mixed, flags still win
    out: list[Workload] = []
    for choice in choices:
        if choice in KINDS:
            default_nodes = min(2, nodes) if choice == "uniform" else nodes
            wl = builtin(choice, tasks=tasks if tasks is not None else (4 if small else 20),
                         nodes=task_nodes if task_nodes is not None else default_nodes,
                         ranks_per_node=ranks_per_node if ranks_per_node is not None else 1, work=work,
                         seconds=seconds if seconds is not None else (0.2 if small else 1.0),
                         seed=seed if seed is not None else 0)
            out.append(wl)
            continue
        if given:
            raise WorkloadError(f"{', '.join(given)} set the sizes of uniform and mixed only; the workload "
                                f"{choice!r} fixes its own: edit the file, or use --workload uniform|mixed")
        if choice in PRESETS:
            out += preset(choice, nodes)
        elif Path(choice).is_file():
            out += load_file(choice)
        else:
            raise WorkloadError(f"--workload {choice!r} is neither uniform, mixed, a preset "
                                f"({', '.join(PRESETS)}) nor an existing file")
    names = [w.name for w in out]
    for i, wl in enumerate(out):   # the same kind twice (uniform, file with uniform): keep file names apart
        if names.count(wl.name) > 1:
            out[i] = replace(wl, name=f"{wl.name}-{i + 1}")
    _check_unique(out)
    return out
