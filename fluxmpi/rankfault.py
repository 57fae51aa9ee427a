"""A rank that fails on purpose: the `--fail-rank` run option of the bundled apps (`fluxmpi run`, `run_tasks`).

Real failures for trying out a path's failure handling: the chosen rank exits with FAIL_EXIT_CODE or really
segfaults right after MPI_Init. Node, link and walltime faults on the local cluster are test tooling
(tests/faults.py), not part of the package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .mpi_apps import FAIL_MODES
from .spec import SpecError

logger = logging.getLogger(__name__)

# Exit code of a rank failed with mode "exit" (the apps use the same number).
FAIL_EXIT_CODE = 3


@dataclass(frozen=True)
class RankFault:
    """Rank `rank` of the chosen tasks fails right after MPI_Init: exits with FAIL_EXIT_CODE, or segfaults.

    tasks: ids of the tasks that fail (None: every task). once: only a task's first attempt fails (the app
    leaves a marker file in the run's workdir), so a retry succeeds.
    """
    rank: int
    mode: str = "exit"
    tasks: tuple[str, ...] | None = None
    once: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise SpecError(f"--fail-rank {self.rank!r} is not a rank: give a whole number from 0")
        if self.mode not in FAIL_MODES:
            raise SpecError(f"--fail-mode {self.mode!r} is not one of {', '.join(FAIL_MODES)}")

    def check(self, ranks: int) -> None:
        """Refuse a rank the task does not have (it would silently never fail)."""
        if self.rank >= ranks:
            raise SpecError(f"--fail-rank {self.rank} is not a rank of a task with {ranks} ranks: "
                            f"give 0 to {ranks - 1}")

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def app_options(self, task: str, marker_dir: Path) -> dict:
        """Keyword arguments of mpi_apps.app_command that make `task` fail (empty if it should not)."""
        if not self.applies_to(task):
            return {}
        options = {"fail_rank": self.rank, "fail_mode": self.mode}
        if self.once:
            options["fail_once_marker"] = str(Path(marker_dir) / f"{task}.failed-once")
        return options


def as_faults(fault: "RankFault | Sequence[RankFault] | None") -> list[RankFault]:
    """One fault, several (the first that applies to a task is used), or none, as a list."""
    if fault is None:
        return []
    faults = [fault] if isinstance(fault, RankFault) else list(fault)
    for f in faults:
        if not isinstance(f, RankFault):
            raise SpecError(f"fault {f!r} is not a RankFault")
    return faults


def task_fault_options(faults: list[RankFault], task: str, marker_dir: Path) -> dict:
    """app_command options for `task`: those of the first fault that applies to it (empty if none does)."""
    for f in faults:
        if f.applies_to(task):
            return f.app_options(task, marker_dir)
    return {}
