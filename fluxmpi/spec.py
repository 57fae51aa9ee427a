"""What one MPI task needs (nodes, ranks, cores, GPUs, time) and how each launch path spells it.

One `MPITaskSpec` is the single source of truth; every launcher-specific form (Parsl MPIExecutor
resource_specification, srun, Open MPI / MPICH mpiexec, Parsl FluxExecutor, flux run, Flux jobspec)
is derived from it, always with whole numbers. That matters because Parsl's MPIExecutor derives
missing keys with `/` and then hands `-ppn 4.0` or `--ntasks-per-node 1.333` to the launcher.
"""

from __future__ import annotations

import logging
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from .container import Container, ContainerError
from .errors import FluxmpiError

logger = logging.getLogger(__name__)


class SpecError(FluxmpiError, ValueError):
    """A task spec that cannot be built or cannot run where it was asked to; says what to change."""


WALLTIME_FORMS = (
    "seconds as an int (600)",
    '"MM"',
    '"MM:SS"',
    '"HH:MM:SS"',
    '"D-HH"',
    '"D-HH:MM"',
    '"D-HH:MM:SS"',
    '"90s" / "10m" / "2h" / "1d"',
)

MPI_FLAVORS = ("openmpi", "mpich")

# What `flux_jobspec()` puts in tasks[0].command when the caller gives no command; callers replace it.
FLUX_COMMAND_PLACEHOLDER = "<command>"

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def _whole(name: str, value: Any, minimum: int) -> int:
    """An int >= minimum from an int or a CLI string of digits; anything else is a SpecError."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text) is None:
            raise SpecError(f"{name}={value!r} is not a whole number: give a whole number >= {minimum}")
        number = int(text)
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # bool is an int subclass and 2.0 looks whole, but both are almost always a caller's mistake.
        raise SpecError(
            f"{name}={value!r} ({type(value).__name__}) is not a whole number: give a whole number >= {minimum}"
        )
    else:
        number = int(value)
    if number < minimum:
        raise SpecError(f"{name}={value!r} is too small: give a whole number >= {minimum}")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise SpecError(f"{name}={value!r} is not a yes/no value: give True or False (or 'true'/'false')")


def _bad_walltime(value: Any, why: str) -> SpecError:
    return SpecError(f"walltime={value!r} {why}: give one of {', '.join(WALLTIME_FORMS)}, or None for no limit")


def parse_walltime(value: Any) -> int | None:
    """Seconds from an int (seconds) or a Slurm/Flux-style string; None stays None (no limit).

    A bare string of digits is minutes, as in Slurm's --time ("10" = 600 s); a bare int is seconds.
    """
    if value is None:
        return None
    if isinstance(value, str):
        seconds = _walltime_string_seconds(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad_walltime(value, f"({type(value).__name__}) is not a time")
    else:
        seconds = int(value)
    if seconds <= 0:
        raise _bad_walltime(value, "is not a positive duration")
    return seconds


def _walltime_string_seconds(value: str) -> int:
    text = value.strip().lower()
    suffixed = re.fullmatch(r"(\d+)([smhd])", text)
    if suffixed:
        return int(suffixed.group(1)) * _UNIT_SECONDS[suffixed.group(2)]
    slurm = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if slurm is None:
        raise _bad_walltime(value, "is not a time")
    days, first, second, third = slurm.groups()
    fields = [int(f) for f in (first, second, third) if f is not None]
    # Fields after the leading one are minutes/seconds (or hours after a day count): catch typos like 1:75:00.
    for field in fields[1:]:
        if field > 59:
            raise _bad_walltime(value, f"has a minutes/seconds field of {field} (at most 59)")
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (fields + [0, 0])[:3]
        if hours > 23:
            raise _bad_walltime(value, f"has {hours} hours after the day count (at most 23)")
        return int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    if len(fields) == 1:  # MM
        return fields[0] * 60
    if len(fields) == 2:  # MM:SS
        return fields[0] * 60 + fields[1]
    return fields[0] * 3600 + fields[1] * 60 + fields[2]  # HH:MM:SS


def _container(value: Any) -> Container | None:
    """A Container from a Container, 'RUNTIME:IMAGE' or a dict (task files); paths are checked when given as text."""
    try:
        if value is None or isinstance(value, Container):
            return value
        if isinstance(value, str):
            return Container.parse(value)
        if isinstance(value, Mapping):
            return Container.from_dict(value, check_paths=True)
    except ContainerError as err:
        raise SpecError(str(err)) from err
    raise SpecError(f"container={value!r} is not a container: give 'RUNTIME:IMAGE', a dict with runtime and image, "
                    "or a fluxmpi.Container")


def format_clock(seconds: int) -> str:
    """[D-]HH:MM:SS, the form Slurm's --time accepts for any length."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def _short_clock(seconds: int) -> str:
    """Human form for __str__: M:SS under an hour, H:MM:SS under a day, else D-HH:MM:SS."""
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    if seconds < 86400:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return format_clock(seconds)


def _host_list(name: str, hosts: str | Sequence[str], nodes: int) -> list[str]:
    """Host names from "a,b" or ["a", "b"]; exactly one per node so launcher and spec agree."""
    items = hosts.split(",") if isinstance(hosts, str) else list(hosts)
    if not all(isinstance(h, str) and h.strip() and "," not in h for h in items):
        raise SpecError(f"{name}={hosts!r} has an empty or malformed host name: give host names like ['node1', 'node2']")
    items = [h.strip() for h in items]
    if len(set(items)) != len(items):
        raise SpecError(f"{name}={hosts!r} names a host twice: give {nodes} distinct hosts")
    if len(items) != nodes:
        raise SpecError(f"{name}={hosts!r} has {len(items)} host(s) but the spec asks for nodes={nodes}: give exactly {nodes}")
    return items


@dataclass(frozen=True)
class MPITaskSpec:
    """One MPI task: `nodes` x `ranks_per_node` ranks, each with cores/GPUs; `walltime` in seconds.

    `exclusive` means the task's nodes run nothing else while it runs. Build from loose input
    (CLI strings, any two of nodes/ranks_per_node/ranks) with `MPITaskSpec.build`.
    """

    nodes: int
    ranks_per_node: int
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    exclusive: bool = True
    walltime: int | None = None
    container: Container | None = None   # the image each rank runs in (fluxmpi.container)

    def __post_init__(self) -> None:
        # Strict: the constructor takes typed values only; strings go through build().
        for name, minimum in (("nodes", 1), ("ranks_per_node", 1), ("cores_per_rank", 1), ("gpus_per_rank", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(
                    f"{name}={value!r} ({type(value).__name__}) is not a whole number: "
                    f"give a whole number >= {minimum} (MPITaskSpec.build also takes strings)"
                )
            if value < minimum:
                raise SpecError(f"{name}={value!r} is too small: give a whole number >= {minimum}")
        if not isinstance(self.exclusive, bool):
            raise SpecError(f"exclusive={self.exclusive!r} is not a bool: give True or False")
        if self.walltime is not None:
            if isinstance(self.walltime, bool) or not isinstance(self.walltime, int):
                raise _bad_walltime(self.walltime, "is not whole seconds here (MPITaskSpec.build parses strings)")
            if self.walltime <= 0:
                raise _bad_walltime(self.walltime, "is not a positive duration")
        if self.container is not None and not isinstance(self.container, Container):
            raise SpecError(f"container={self.container!r} is not a fluxmpi.Container: build one with "
                            "Container.build(runtime, image) (MPITaskSpec.build also takes 'RUNTIME:IMAGE')")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def cores_per_node(self) -> int:
        return self.ranks_per_node * self.cores_per_rank

    @property
    def gpus_per_node(self) -> int:
        return self.ranks_per_node * self.gpus_per_rank

    # ---- construction from loose input ---------------------------------------------------
    @classmethod
    def build(
        cls,
        nodes: Any = None,
        ranks_per_node: Any = None,
        ranks: Any = None,
        cores_per_rank: Any = 1,
        gpus_per_rank: Any = 0,
        exclusive: Any = True,
        walltime: Any = None,
        container: Any = None,
    ) -> "MPITaskSpec":
        """Infer the missing one of nodes / ranks_per_node / ranks and validate everything.

        Any two of the three decide the third; nodes alone means one rank per node. Numbers may be
        ints or CLI strings ("4"); walltime takes any of WALLTIME_FORMS.
        """
        n = None if nodes is None else _whole("nodes", nodes, 1)
        rpn = None if ranks_per_node is None else _whole("ranks_per_node", ranks_per_node, 1)
        total = None if ranks is None else _whole("ranks", ranks, 1)

        if n is None and rpn is None:
            if total is None:
                raise SpecError("no size given: give nodes (and ranks_per_node or ranks), e.g. nodes=2, ranks_per_node=4")
            raise SpecError(f"ranks={total} alone does not say how to spread the ranks: also give nodes or ranks_per_node")
        if n is None:
            if total is None:
                raise SpecError(f"ranks_per_node={rpn} alone does not say how many nodes: also give nodes or ranks")
            if total % rpn:
                raise SpecError(
                    f"ranks={total} does not split into whole nodes of ranks_per_node={rpn}: "
                    f"make ranks a multiple of {rpn}"
                )
            n = total // rpn
        elif rpn is None:
            if total is None:
                rpn = 1
            elif total % n:
                raise SpecError(
                    f"ranks={total} does not split evenly over nodes={n}: "
                    f"make ranks a multiple of {n} (e.g. {max(n, total - total % n)}) or change nodes"
                )
            else:
                rpn = total // n
        elif total is not None and n * rpn != total:
            raise SpecError(
                f"nodes={n} x ranks_per_node={rpn} = {n * rpn}, not ranks={total}: "
                "drop one of the three or make them agree"
            )

        return cls(
            nodes=n,
            ranks_per_node=rpn,
            cores_per_rank=_whole("cores_per_rank", cores_per_rank, 1),
            gpus_per_rank=_whole("gpus_per_rank", gpus_per_rank, 0),
            exclusive=_flag("exclusive", exclusive),
            walltime=parse_walltime(walltime),
            container=_container(container),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `ranks` is included for readers and checked on the way back in."""
        data = asdict(self)
        data["ranks"] = self.ranks
        if self.container is None:
            del data["container"]       # absent rather than null: specs without one read as before
        else:
            data["container"] = self.container.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MPITaskSpec":
        """Inverse of to_dict; also takes hand-written dicts (strings, any two sizes). Unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise SpecError(f"task spec {data!r} is not a mapping: give a dict like {{'nodes': 2, 'ranks_per_node': 4}}")
        known = ("nodes", "ranks_per_node", "ranks", "cores_per_rank", "gpus_per_rank", "exclusive", "walltime",
                 "container")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"task spec has unknown key(s) {unknown}: use only {list(known)}")
        return cls.build(**dict(data))

    def __str__(self) -> str:
        parts = [
            f"{self.ranks} rank{'s' if self.ranks != 1 else ''}",
            f"{self.cores_per_rank} core{'s' if self.cores_per_rank != 1 else ''}/rank",
        ]
        if self.gpus_per_rank:
            parts.append(f"{self.gpus_per_rank} gpu{'s' if self.gpus_per_rank != 1 else ''}/rank")
        parts.append("exclusive" if self.exclusive else "shared")
        if self.walltime is not None:
            parts.append(_short_clock(self.walltime))
        if self.container is not None:
            parts.append(f"in {self.container}")
        return f"{self.nodes}x{self.ranks_per_node} ({', '.join(parts)})"

    # ---- does it fit where it will run ---------------------------------------------------
    def check_fits(self, nodes_available: Any, cores_per_node: Any, gpus_per_node: Any = 0, where: str = "block") -> None:
        """Raise SpecError (listing every shortfall) if this task can never run in `where`.

        Parsl's MPIExecutor queues a too-large task forever instead of failing, so callers check first.
        """
        have_nodes = _whole(f"{where} nodes_available", nodes_available, 1)
        have_cores = _whole(f"{where} cores_per_node", cores_per_node, 1)
        have_gpus = _whole(f"{where} gpus_per_node", gpus_per_node, 0)
        problems = []
        if self.nodes > have_nodes:
            problems.append(
                f"needs {self.nodes} nodes but the {where} has {have_nodes}: use at most nodes={have_nodes}, "
                f"or make the {where} bigger (nodes_per_block={self.nodes})"
            )
        if self.cores_per_node > have_cores:
            fit = have_cores // self.cores_per_rank
            problems.append(
                f"needs {self.ranks_per_node} ranks x {self.cores_per_rank} cores = {self.cores_per_node} cores per node "
                f"but a {where} node has {have_cores}: use ranks_per_node <= {fit} "
                + ("with more nodes" if fit else f"and cores_per_rank <= {have_cores}")
                + " or nodes with more cores"
            )
        if self.gpus_per_node > have_gpus:
            fit = have_gpus // self.gpus_per_rank
            problems.append(
                f"needs {self.ranks_per_node} ranks x {self.gpus_per_rank} GPUs = {self.gpus_per_node} GPUs per node "
                f"but a {where} node has {have_gpus}: "
                + (f"use ranks_per_node <= {fit} with more nodes" if fit else "use gpus_per_rank=0")
                + " or nodes with more GPUs"
            )
        if problems:
            raise SpecError(f"task {self} does not fit the {where}: " + "; ".join(problems))

    # ---- translations --------------------------------------------------------------------
    def parsl_resource_spec(self) -> dict[str, int]:
        """resource_specification for Parsl's MPIExecutor: all three size keys, as ints.

        Giving all three keeps Parsl from deriving one with `/` (floats in the prefix). Its legal keys
        are num_nodes, num_ranks, ranks_per_node, launcher_options; cores/GPUs per rank have no key
        there (the launch path adds them), and nodes are always whole-node by its design. Per-task
        time limits are Parsl's app `walltime`, not part of this dict.
        """
        return {"num_nodes": self.nodes, "num_ranks": self.ranks, "ranks_per_node": self.ranks_per_node}

    def srun_args(self, mpi: str | None = "pmix", nodelist: str | Sequence[str] | None = None) -> list[str]:
        """argv prefix for a job step inside an allocation: see fluxmpi.launchers.srun.srun_args."""
        from .launchers.srun import srun_args
        return srun_args(self, mpi, nodelist)


    def mpiexec_args(self, flavor: str, hosts: str | Sequence[str] | None = None, program: str | None = None) -> list[str]:
        """argv prefix for Open MPI's `mpirun` or MPICH's `mpiexec`: see fluxmpi.launchers.mpiexec."""
        from .launchers.mpiexec import mpiexec_args
        return mpiexec_args(self, flavor, hosts, program)

    def flux_executor_spec(self) -> dict[str, int]:
        """resource_specification for Parsl's FluxExecutor (it reads only these four keys).

        It has no exclusive or time key: exclusivity exists only in the Flux jobspec (node
        `exclusive: true`, see flux_jobspec / `flux run -x`), and it drops any other key silently.
        """
        return {
            "num_tasks": self.ranks,
            "num_nodes": self.nodes,
            "cores_per_task": self.cores_per_rank,
            "gpus_per_task": self.gpus_per_rank,
        }

    def flux_run_args(self) -> list[str]:
        """argv for `flux run`: see fluxmpi.launchers.flux.flux_run_args."""
        from .launchers.flux import flux_run_args
        return flux_run_args(self)

    def flux_jobspec(self, command: Sequence[str] | None = None) -> dict[str, Any]:
        """A Flux jobspec v1 (RFC 25) dict: see fluxmpi.launchers.flux.flux_jobspec."""
        from .launchers.flux import flux_jobspec
        return flux_jobspec(self, command)
